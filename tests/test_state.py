"""What only the SQLite store does: one WAL file, SQLite's own refusals (a constraint, a full
disk) losing nothing, and a schema version that upgrades older files and refuses newer ones.
The behaviour every store shares is in test_store_contract.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bitfleet.jobstatus import RUNNING
from bitfleet.server.state import SqliteStore, StateVersionError, StoreError
from bitfleet.server.state.base import RoundMetrics
from bitfleet.server.state.sqlite import SCHEMA_VERSION
from tests.cluster import free_port


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    created = SqliteStore(tmp_path / "state" / "bitfleet.db")
    created.create_agent("a1", "s1")
    created.create_job("job-1", {"name": "x", "rounds": 2}, b"model-0")
    created.open_round("job-1", 0, 0, 1e12, ["a1"], RUNNING)
    return created


def test_the_database_is_in_wal_mode(store: SqliteStore) -> None:
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_constraint_failing_at_the_last_step_of_a_close_writes_nothing(
    store: SqliteStore,
) -> None:
    store.add_upload("job-1", 0, "a1", 5, b"payload")
    # A real refusal by SQLite at the close's last statement, after everything else is written.
    store._db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF round ON jobs "
        "BEGIN SELECT RAISE(ABORT, 'injected refusal'); END"
    )
    before = _dump(store.path)
    with pytest.raises(StoreError, match="injected refusal"):
        store.close_round("job-1", 0, b"model-1", RoundMetrics(0, 0.5, 1.0, 1, 7, 9, 0.1), RUNNING)
    assert _dump(store.path) == before


def test_a_full_disk_is_a_clear_error_and_writes_nothing(store: SqliteStore) -> None:
    pages = store._query("PRAGMA page_count")[0][0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError, match="disk is full"):
        store.add_upload("job-1", 0, "a1", 5, b"x" * 1_000_000)
    assert list(store.iter_uploads("job-1", 0)) == []
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert store.add_upload("job-1", 0, "a1", 5, b"small") is True


def test_an_unwritable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="data directory"):
        SqliteStore(blocker / "bitfleet.db")


# The rounds table as bitfleet made it before vote caps (and before schema versions).
ROUNDS_BEFORE_VOTE_CAPS = """
CREATE TABLE rounds (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    deadline REAL NOT NULL,
    selected TEXT NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, round)
)
"""


def _raw(path: Path, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements on the file with plain sqlite3, as another program would; the rows of
    the last one."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            rows = db.execute(statement).fetchall()
        return rows
    finally:
        db.close()


def _dump(path: Path) -> tuple[int, list[str]]:
    """Everything a database holds: its version, schema and rows."""
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], list(db.iterdump())
    finally:
        db.close()


def _version(path: Path) -> int:
    return int(_raw(path, "PRAGMA user_version")[0][0])


def test_a_fresh_database_gets_the_current_schema_version(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "bitfleet.db").close()
    assert SCHEMA_VERSION == 2
    assert _version(tmp_path / "bitfleet.db") == SCHEMA_VERSION


def test_a_version_1_database_gains_the_worker_tables(store: SqliteStore) -> None:
    store.add_upload("job-1", 0, "a1", 5, b"payload")
    store.close()
    _raw(store.path, "DROP TABLE leases", "DROP TABLE tallies", "PRAGMA user_version = 1")

    upgraded = SqliteStore(store.path)
    assert _version(store.path) == SCHEMA_VERSION
    assert upgraded.hold_lease("round-engine", "w1", 5.0)
    assert upgraded.list_tallies("job-1", 0) == []
    assert [u.payload for u in upgraded.iter_uploads("job-1", 0)] == [b"payload"]
    upgraded.close()


@pytest.mark.parametrize("before_vote_caps", [False, True])
def test_a_database_from_before_schema_versions_is_upgraded_and_keeps_its_rows(
    store: SqliteStore, before_vote_caps: bool
) -> None:
    store.add_upload("job-1", 0, "a1", 5, b"payload")
    store.close()
    old = ["PRAGMA user_version = 0"]
    if before_vote_caps:
        old += [
            "DROP TABLE rounds",
            ROUNDS_BEFORE_VOTE_CAPS,
            "INSERT INTO rounds VALUES ('job-1', 0, 0, 1.0, 1e12, '[\"a1\"]', 0)",
        ]
    _raw(store.path, *old)
    assert _version(store.path) == 0

    upgraded = SqliteStore(store.path)
    assert _version(store.path) == SCHEMA_VERSION
    assert upgraded.agent_secret("a1") == "s1"
    assert upgraded.get_model("job-1") == b"model-0"
    assert [u.payload for u in upgraded.iter_uploads("job-1", 0)] == [b"payload"]
    round_ = upgraded.get_open_round("job-1")
    assert round_ is not None and (round_.selected, round_.vote_caps) == (["a1"], {})
    upgraded.open_round("job-1", 0, 1, 1e12, ["a1"], RUNNING, {"a1": 3})
    assert upgraded.get_open_round("job-1").vote_caps == {"a1": 3}  # type: ignore[union-attr]
    upgraded.close()


def test_a_failed_upgrade_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "bitfleet.db"
    # A version-0 file whose rounds is a view: the step creates the missing tables, then
    # fails to add vote_caps to it, after it has written.
    _raw(
        path,
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY)",
        "INSERT INTO jobs VALUES ('job-1')",
        "CREATE VIEW rounds AS SELECT job_id FROM jobs",
    )
    before = _dump(path)
    with pytest.raises(StoreError, match="Cannot add a column to a view"):
        SqliteStore(path)
    assert _dump(path) == before


def test_a_database_from_a_newer_bitfleet_is_refused_and_left_alone(store: SqliteStore) -> None:
    store.close()
    newer = SCHEMA_VERSION + 1
    _raw(store.path, f"PRAGMA user_version = {newer}")
    before = _dump(store.path)
    with pytest.raises(StateVersionError) as refused:
        SqliteStore(store.path)
    message = str(refused.value)
    assert f"{store.path} has schema version {newer}, from a newer bitfleet" in message
    assert f"reads schema versions up to {SCHEMA_VERSION}" in message
    assert "run the newer bitfleet that wrote it" in message
    assert _dump(store.path) == before


def test_a_negative_schema_version_is_refused(store: SqliteStore) -> None:
    store.close()
    _raw(store.path, "PRAGMA user_version = -1")
    with pytest.raises(StoreError, match="schema version -1, which no bitfleet writes"):
        SqliteStore(store.path)
    assert _version(store.path) == -1


def test_the_coordinator_on_a_newer_database_exits_2_saying_so(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "bitfleet.db").close()
    _raw(tmp_path / "bitfleet.db", f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateVersionError) as refused:
        SqliteStore(tmp_path / "bitfleet.db")
    argv = ["coordinator", "--data-dir", str(tmp_path), "--admin-token", "t"]
    result = subprocess.run(
        [sys.executable, "-m", "bitfleet.server.cli", *argv, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"bitfleet: error: {refused.value}\n"
