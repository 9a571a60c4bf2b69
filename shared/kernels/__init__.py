"""Hot kernels (packed-bit and fixed-point dense layers, training updates): numba or numpy.

Set ``BITFLEET_NO_NUMBA=1`` to force the numpy path (what a board without numba wheels
runs). Both paths give identical integer results, on every numpy from 1.24 (numpy < 2 counts
bits by table lookup); ``tests/test_kernels.py`` proves it, ``make numpy-floor`` on the floor.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from types import ModuleType

from bitfleet.kernels import reference


def _writable(directory: Path) -> bool:
    while not directory.exists():
        directory = directory.parent
    return os.access(directory, os.W_OK | os.X_OK)


def _ensure_numba_cache_dir() -> None:
    """Give numba a cache directory when it would find none.

    numba caches compiled kernels beside their sources or under ``~/.cache``, and refuses to
    compile a ``cache=True`` function when neither is writable — a service user with a
    root-owned virtualenv and no home. Then a directory of this user's own under the system
    temp dir serves; one that someone else made (cache files are loaded as code) is refused,
    and numba's own error says so. ``NUMBA_CACHE_DIR`` set by the user always wins.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    beside_sources = Path(__file__).parent / "__pycache__"
    home = os.path.expanduser("~")
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path(home, ".cache"))
    if _writable(beside_sources) or (home != "~" and _writable(user_cache)):
        return
    private = Path(tempfile.gettempdir()) / f"bitfleet-numba-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    info = private.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        os.environ["NUMBA_CACHE_DIR"] = str(private)


def _load_fast() -> ModuleType | None:
    if os.environ.get("BITFLEET_NO_NUMBA", "") not in ("", "0"):
        return None
    _ensure_numba_cache_dir()
    try:
        from bitfleet.kernels import fast
    except ImportError:
        return None
    return fast


fast = _load_fast()
HAVE_NUMBA = fast is not None
_active: ModuleType = fast if fast is not None else reference

binary_dense = _active.binary_dense
ternary_dense = _active.ternary_dense
counter_step = _active.counter_step
error_votes = _active.error_votes
masked_sums = _active.masked_sums
carry_save_add = _active.carry_save_add
bitsliced_add = _active.bitsliced_add
fixed_dense = _active.fixed_dense
add_perturbations = _active.add_perturbations

__all__ = [
    "HAVE_NUMBA",
    "add_perturbations",
    "binary_dense",
    "bitsliced_add",
    "carry_save_add",
    "counter_step",
    "error_votes",
    "fast",
    "fixed_dense",
    "masked_sums",
    "reference",
    "ternary_dense",
]
