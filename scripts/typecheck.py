"""Type-check the code under its installed names (``bitfleet``, ``bitfleet.server``, ...).

mypy names modules by their place on disk and cannot follow setuptools' package-dir mapping,
so this builds that mapping as a tree of symlinks under ``build/import-root/`` (shared/'s
entries, server/ and edge_agent/ inside one ``bitfleet/``) and runs mypy on it. Arguments
are passed to mypy.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "import-root"
SIDES = ("server", "edge_agent")


def build_tree() -> Path:
    """The import root as symlinks; rebuilt each run so added or removed files show."""
    package = TREE / "bitfleet"
    shutil.rmtree(TREE, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (ROOT / "shared").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for side in SIDES:
        (package / side).symlink_to(ROOT / side)
    return package


def main() -> int:
    package = build_tree()
    stdout, stderr, status = api.run([*sys.argv[1:], str(package)])
    sys.stdout.write(stdout.replace(f"{TREE}/bitfleet/", "").replace("build/import-root/", ""))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
