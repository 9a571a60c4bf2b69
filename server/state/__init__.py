"""Coordinator state: one interface (``base.StateStore``), SQLite behind it by default."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bitfleet.server.state.base import (
    AlreadyExists,
    StateStore,
    StateVersionError,
    StoreError,
    UnknownRecord,
)
from bitfleet.server.state.sqlite import SqliteStore


def open_store(data_dir: str | Path, clock: Callable[[], float] = time.time) -> StateStore:
    """The store for a data directory (SQLite in WAL mode at ``DATA_DIR/bitfleet.db``),
    stamping times with ``clock`` (the engine's)."""
    return SqliteStore(Path(data_dir) / "bitfleet.db", clock)


__all__ = [
    "AlreadyExists",
    "SqliteStore",
    "StateStore",
    "StateVersionError",
    "StoreError",
    "UnknownRecord",
    "open_store",
]
