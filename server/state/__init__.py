"""Coordinator state: one interface (``base.StateStore``), SQLite behind it by default, or
PostgreSQL for coordinators that share a database.

``PostgresStore`` is imported on first use (so it is not in ``__all__``): its driver,
psycopg, comes with the server extra only, and this package must import without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitfleet.errors import ConfigError
from bitfleet.server.state.base import (
    AlreadyExists,
    StateStore,
    StateVersionError,
    StoreError,
    UnknownRecord,
)
from bitfleet.server.state.sqlite import SqliteStore

if TYPE_CHECKING:
    from bitfleet.server.state.postgres import PostgresStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | Path) -> bool:
    """True for a PostgreSQL URL (what libpq takes), False for a data directory."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(location: str | Path, clock: Callable[[], float] = time.time) -> StateStore:
    """The store at ``location``, stamping times with ``clock`` (the engine's): a
    ``postgresql://`` (or ``postgres://``) URL opens that database; anything else is a data
    directory, with SQLite in WAL mode at ``DATA_DIR/bitfleet.db``."""
    if is_postgres_url(location):
        return _postgres_store()(str(location), clock)
    return SqliteStore(Path(location) / "bitfleet.db", clock)


def _postgres_store() -> type[PostgresStore]:
    try:
        from bitfleet.server.state.postgres import PostgresStore
    except ImportError as error:
        raise ConfigError(
            "a PostgreSQL state database needs the server extra: pip install "
            f"'bitfleet[server]' ({error.name or error} is missing)"
        ) from None
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":  # ImportError without psycopg, as any import would
        from bitfleet.server.state.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
    "SqliteStore",
    "StateStore",
    "StateVersionError",
    "StoreError",
    "UnknownRecord",
    "is_postgres_url",
    "open_store",
]
