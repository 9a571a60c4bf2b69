"""The SQLite store: WAL, idempotent uploads, atomic round close, a full disk loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitfleet.server.state import SqliteStore, StoreError
from bitfleet.server.state.base import AlreadyExists, RoundMetrics


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    created = SqliteStore(tmp_path / "state" / "bitfleet.db")
    created.create_agent("a1", "s1")
    created.create_job("job-1", {"name": "x", "rounds": 2}, b"model-0")
    created.open_round("job-1", 0, 0, 1e12, ["a1"])
    return created


def test_wal_mode_and_idempotent_uploads(store: SqliteStore) -> None:
    mode = store._query("PRAGMA journal_mode")[0][0]
    assert mode == "wal"
    assert store.add_upload("job-1", 0, "a1", 5, b"payload") is True
    assert store.add_upload("job-1", 0, "a1", 5, b"other") is False
    assert [u.payload for u in store.iter_uploads("job-1", 0)] == [b"payload"]
    with pytest.raises(AlreadyExists):
        store.create_agent("a1", "again")


def test_closing_a_round_is_one_transaction(store: SqliteStore) -> None:
    store.add_upload("job-1", 0, "a1", 5, b"payload")
    metrics = RoundMetrics(0, 0.5, 1.0, 1, 7, 9, 0.1)
    store.close_round("job-1", 0, b"model-1", metrics, final=False)
    job = store.get_job("job-1")
    assert job is not None and (job.round, job.status) == (1, "running")
    assert store.get_model("job-1") == b"model-1" and store.get_model("job-1", 0) == b"model-0"
    assert list(store.iter_uploads("job-1", 0)) == []
    assert store.list_metrics("job-1")[0].test_accuracy == 0.5
    assert store.get_agent("a1").rounds_contributed == 1  # type: ignore[union-attr]
    assert store.get_open_round("job-1") is None


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
