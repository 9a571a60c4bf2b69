"""The coordinator's handlers in-process over a real SQLite file: a full disk, a crash between an
upload and its round's close, and a retried round that keeps the votes it had.

Fast tier: no processes, a real store; the process-level fault tests are test_faults.py.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bitfleet.server.jobspec import JobSpec
from bitfleet.server.service import Coordinator, CoordinatorSettings
from bitfleet.server.state.sqlite import SqliteStore
from tests.manual import JOB, echo_update


def _coordinator(path: Path, clock: Callable[[], float] = time.time) -> Coordinator:
    """The handlers as ``bitfleet coordinator`` wires them, without transports or the engine
    thread: each test ticks the scheduler itself."""
    return Coordinator(SqliteStore(path, clock), CoordinatorSettings(), clock)


def _open_round(coordinator: Coordinator, agents: int, **changes: object) -> tuple[str, list[str]]:
    secrets = {}
    for index in range(agents):
        agent_id = f"e{index}"
        secrets[agent_id] = f"secret-{index}"
        coordinator.registry.enroll(agent_id, secrets[agent_id])
        coordinator.registry.presence(agent_id, True, "http", {"samples": 10})
    spec = JobSpec.model_validate({**JOB, "agents_per_round": agents, **changes})
    job_id = coordinator.jobs.create(spec).job_id
    coordinator.scheduler.tick()
    return job_id, list(secrets)


def _fill_disk(store: SqliteStore) -> None:
    """Make the database as full as a full disk would: no page left to write."""
    store._db.execute("CREATE TABLE filler (data BLOB)")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        while True:
            store._db.execute("INSERT INTO filler VALUES (?)", (b"x" * 512,))


def _upload(coordinator: Coordinator, job_id: str, agent_id: str, samples: int = 10) -> str:
    """Upload ``agent_id``'s echo of its model, then tick (as the engine's thread would)."""
    round_index = coordinator.jobs.get(job_id).round
    model = coordinator.tasks.model(job_id, round_index, agent_id)
    secret = f"secret-{agent_id[1:]}"
    frame = echo_update(model, job_id, round_index, agent_id, secret, False, samples)
    receipt = coordinator.uploads.handle(job_id, round_index, agent_id, frame, "http")
    coordinator.scheduler.tick()
    return "accepted" if receipt.accepted else receipt.reason


def test_a_full_disk_refuses_with_storage_logs_once_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    wide = {"layers": [64, 1024, 10], "weights": "binary"}  # an upload spans several pages
    job_id, (a, b) = _open_round(coordinator, 2, min_agents=2, rounds=1, model=wide)
    store = coordinator.store
    assert isinstance(store, SqliteStore)
    _fill_disk(store)
    with caplog.at_level(logging.ERROR, logger="bitfleet.engine"):
        assert [_upload(coordinator, job_id, a) for _ in range(20)] == ["storage"] * 20
    assert len([r for r in caplog.records if "uploads refused" in r.getMessage()]) == 1
    assert coordinator.rounds.progress(job_id) == (0, 2)  # nothing half-written, nothing tallied
    assert store.upload_agents(job_id, 0) == []
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert _upload(coordinator, job_id, a) == "accepted"  # the agent's resend, once space is back
    assert _upload(coordinator, job_id, b) == "accepted"
    assert coordinator.jobs.get(job_id).status == "completed"
    assert coordinator.metrics.uploads_refused.value(reason="storage") == 20


def test_a_restored_round_whose_uploads_are_all_in_closes_at_once(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    job_id, (a, b) = _open_round(coordinator, 2, min_agents=2, rounds=2)
    assert _upload(coordinator, job_id, a) == "accepted"
    # The coordinator dies after storing b's upload, before the round closed: simulate the
    # store state a crash leaves by storing it behind the engine's back.
    model = coordinator.tasks.model(job_id, 0, b)
    frame = echo_update(model, job_id, 0, b, "secret-1", False, 10)
    coordinator.store.add_upload(job_id, 0, b, 10, frame)
    restarted = _coordinator(tmp_path / "state.db")
    restarted.scheduler.recover()
    restarted.scheduler.tick()
    assert restarted.jobs.get(job_id).round == 1  # closed at once, no deadline waited


def test_a_retried_round_keeps_the_uploads_an_earlier_attempt_accepted(tmp_path: Path) -> None:
    now = [1000.0]
    coordinator = _coordinator(tmp_path / "state.db", clock=lambda: now[0])
    job_id, (a, b, c) = _open_round(
        coordinator, 3, min_agents=2, rounds=1, round_deadline_s=10, on_insufficient="retry"
    )
    assert _upload(coordinator, job_id, a) == "accepted"
    now[0] += 11  # the deadline passes with one upload of the two needed
    for agent in (a, b, c):
        coordinator.registry.presence(agent, True, "http", {"samples": 10})
    coordinator.scheduler.tick()
    record = coordinator.store.get_open_round(job_id)
    assert record is not None and record.attempt == 1 and a in record.selected
    assert coordinator.rounds.progress(job_id)[0] == 1  # a's vote survived the retry
    assert _upload(coordinator, job_id, a) == "accepted"  # a resend: answered, counted once
    assert coordinator.metrics.uploads_resent.value(transport="http") == 1
    assert _upload(coordinator, job_id, b) == "accepted"
    assert _upload(coordinator, job_id, c) == "accepted"
    assert coordinator.jobs.get(job_id).status == "completed"
    assert coordinator.store.list_metrics(job_id)[0].uploads == 3


def test_a_stored_job_this_version_refuses_fails_alone(tmp_path: Path) -> None:
    """A job an older, laxer coordinator stored (batch_size 2.5) fails with the reason on
    start; the other jobs run on."""
    coordinator = _coordinator(tmp_path / "state.db")
    job_id, (a, b) = _open_round(coordinator, 2, min_agents=2, rounds=1)
    spec = JobSpec.model_validate({**JOB, "name": "old"}).model_dump()
    spec["hyperparameters"] = {"batch_size": 2.5}
    model = coordinator.store.get_model(job_id, 0)
    assert model is not None
    coordinator.store.create_job("job-legacy", spec, model)
    restarted = _coordinator(tmp_path / "state.db")
    restarted.scheduler.recover()
    restarted.scheduler.tick()
    legacy = restarted.jobs.record("job-legacy")
    assert legacy.status == "failed" and "batch_size" in (legacy.reason or "")
    assert _upload(restarted, job_id, a) == "accepted"
    assert _upload(restarted, job_id, b) == "accepted"
    assert restarted.jobs.get(job_id).status == "completed"


def test_a_resend_after_its_round_closed_is_answered_accepted_not_late(tmp_path: Path) -> None:
    """The receipt of a counted upload was lost (a broker restart) and the round closed
    meanwhile: the resend must say accepted, so the agent's journal matches the count."""
    coordinator = _coordinator(tmp_path / "state.db")
    job_id, (a, b) = _open_round(coordinator, 2, min_agents=2, rounds=2)
    model = coordinator.tasks.model(job_id, 0, a)
    frame = echo_update(model, job_id, 0, a, "secret-0", False, 10)
    assert coordinator.uploads.handle(job_id, 0, a, frame, "http").accepted
    assert _upload(coordinator, job_id, b) == "accepted"
    assert coordinator.jobs.get(job_id).round == 1  # round 0 closed
    receipt = coordinator.uploads.handle(job_id, 0, a, frame, "http")
    assert (receipt.accepted, receipt.reason) == (True, "resent")
    outsider = echo_update(model, job_id, 0, b, "secret-1", False, 10)
    assert coordinator.uploads.handle(job_id, 0, b, outsider, "http").accepted  # b was counted too
    assert coordinator.store.list_metrics(job_id)[0].uploads == 2


def test_presence_the_store_refused_is_kept_and_written_once_it_takes_writes_again(
    tmp_path: Path,
) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    coordinator.registry.enroll("e0", "secret-0")
    store = coordinator.store
    assert isinstance(store, SqliteStore)
    coordinator.registry.presence("e0", True, "mqtt", {"samples": 10})
    assert store.get_agent("e0").online is False  # type: ignore[union-attr]  # noted, not written
    store._db.execute("PRAGMA query_only = 1")  # every write refused, as by a failing disk
    coordinator.scheduler.tick()  # the flush is refused: the report stays in memory
    assert store.get_agent("e0").online is False  # type: ignore[union-attr]
    coordinator.registry.presence("e0", True, "mqtt", None)  # a later report keeps capabilities
    store._db.execute("PRAGMA query_only = 0")
    coordinator.scheduler.tick()
    agent = store.get_agent("e0")
    assert agent is not None and (agent.online, agent.capabilities) == (True, {"samples": 10})
    assert coordinator.registry.online() == ["e0"]
