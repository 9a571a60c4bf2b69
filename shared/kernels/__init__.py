"""Hot kernels (packed-bit and fixed-point dense layers, training updates): numba or numpy.

Set ``BITFLEET_NO_NUMBA=1`` to force the numpy path (what a board without numba wheels
runs). Both paths give identical integer results, on every numpy from 1.24 (numpy < 2 counts
bits by table lookup); ``tests/test_kernels.py`` proves it, ``make numpy-floor`` on the floor.
"""

from __future__ import annotations

import os
from types import ModuleType

from bitfleet.kernels import reference


def _load_fast() -> ModuleType | None:
    if os.environ.get("BITFLEET_NO_NUMBA", "") not in ("", "0"):
        return None
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
uint8_binary_dense = _active.uint8_binary_dense
uint8_ternary_dense = _active.uint8_ternary_dense
counter_step = _active.counter_step
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
    "fast",
    "fixed_dense",
    "reference",
    "ternary_dense",
    "uint8_binary_dense",
    "uint8_ternary_dense",
]
