"""The contract of :class:`StateStore` (its docstrings' MUSTs), run against every backend.

Each test gets a fresh store of each backend in ``BACKENDS`` on a real database (SQLite in
the test's directory, a database of its own on a PostgreSQL server that tests/postgres.py
starts), stamping time with a :class:`ManualClock`; a new backend is one more entry there,
with a function that opens it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from bitfleet.jobstatus import COMPLETED, RUNNING
from bitfleet.server.state import PostgresStore, SqliteStore
from bitfleet.server.state.base import (
    AlreadyExists,
    Presence,
    RoundMetrics,
    StateStore,
    UnknownRecord,
    UploadRecord,
)
from tests.inprocess import EPOCH, ManualClock

# A backend opens a store on a fresh database, taking the fixtures it needs from the test's
# request (so that only the PostgreSQL tests start a PostgreSQL server).
Backend = Callable[[pytest.FixtureRequest, ManualClock], StateStore]


def _sqlite(request: pytest.FixtureRequest, clock: ManualClock) -> StateStore:
    return SqliteStore(request.getfixturevalue("tmp_path") / "bitfleet.db", clock)


def _postgresql(request: pytest.FixtureRequest, clock: ManualClock) -> StateStore:
    return PostgresStore(request.getfixturevalue("postgres_url"), clock)


BACKENDS = [pytest.param(_sqlite, id="sqlite"), pytest.param(_postgresql, id="postgresql")]

METRICS = RoundMetrics(0, 0.5, 1.0, 2, 7, 9, 0.1, extra={"votes": [1, 2]})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[StateStore]:
    backend: Backend = request.param
    created = backend(request, clock)
    yield created
    created.close()


@pytest.fixture
def running(store: StateStore) -> StateStore:
    """A store with agents a1 and a2 and job-1's round 0 open for both."""
    store.create_agent("a1", "s1")
    store.create_agent("a2", "s2")
    store.create_job("job-1", {"name": "x", "rounds": 2}, b"model-0")
    store.open_round("job-1", 0, 0, EPOCH + 60, ["a1", "a2"], RUNNING)
    return store


# agents


def test_an_agent_is_created_unseen_and_a_second_enrollment_fails(store: StateStore) -> None:
    agent = store.create_agent("a1", "s1")
    assert (agent.agent_id, agent.revoked, agent.online, agent.last_seen) == (
        "a1",
        False,
        False,
        None,
    )
    assert (agent.rounds_contributed, agent.capabilities, agent.created_at) == (0, {}, EPOCH)
    with pytest.raises(AlreadyExists):
        store.create_agent("a1", "other")
    assert store.agent_secret("a1") == "s1"
    assert store.get_agent("a1") == agent


def test_agents_are_listed_in_id_order_revoked_ones_included(store: StateStore) -> None:
    for agent_id in ("c", "a", "b"):
        store.create_agent(agent_id, "s")
    store.revoke_agent("b")
    assert [agent.agent_id for agent in store.list_agents()] == ["a", "b", "c"]


def test_revoking_is_idempotent_and_takes_the_secret(store: StateStore, clock: ManualClock) -> None:
    store.create_agent("a1", "s1")
    store.record_presence([Presence("a1", True, "mqtt", clock(), None)])
    assert store.revoke_agent("a1") is True
    assert store.revoke_agent("a1") is False
    assert store.agent_secret("a1") is None
    agent = store.get_agent("a1")
    assert agent is not None and (agent.revoked, agent.online) == (True, False)
    with pytest.raises(AlreadyExists):
        store.create_agent("a1", "again")


def test_presence_keeps_capabilities_unless_given_and_ignores_unknown_or_revoked(
    store: StateStore, clock: ManualClock
) -> None:
    store.create_agent("a1", "s1")
    store.record_presence([Presence("a1", True, "http", clock(), {"memory": 4})])
    clock.advance(5)
    store.record_presence([Presence("a1", False, "mqtt", clock(), None)])
    agent = store.get_agent("a1")
    assert agent is not None
    assert (agent.online, agent.transport, agent.capabilities) == (False, "mqtt", {"memory": 4})
    assert agent.last_seen == EPOCH + 5
    store.record_presence([Presence("ghost", True, "http", clock(), {})])
    assert store.get_agent("ghost") is None
    store.revoke_agent("a1")
    store.record_presence([Presence("a1", True, "http", clock(), {"memory": 8})])
    assert store.get_agent("a1") == replace(agent, revoked=True)


def test_presence_of_many_agents_is_one_write_that_skips_the_unknown(
    store: StateStore, clock: ManualClock
) -> None:
    for agent_id in ("a1", "a2"):
        store.create_agent(agent_id, "s")
    clock.advance(3)
    heard = clock()
    clock.advance(1)  # written a moment after it was heard: last_seen says when it was heard
    reports = [
        Presence("a1", True, "mqtt", heard, {"samples": 5}),
        Presence("ghost", True, "http", heard),
    ]
    store.record_presence([*reports, Presence("a2", True, "http", heard)])
    seen = {
        a.agent_id: (a.online, a.transport, a.capabilities, a.last_seen)
        for a in store.list_agents()
    }
    assert seen == {
        "a1": (True, "mqtt", {"samples": 5}, EPOCH + 3),
        "a2": (True, "http", {}, EPOCH + 3),
    }
    store.record_presence([])  # nothing to write


# jobs


def test_a_job_starts_pending_with_its_model_and_a_second_one_fails(store: StateStore) -> None:
    job = store.create_job("job-1", {"name": "x"}, b"model-0")
    assert (job.status, job.round, job.spec, job.reason) == ("pending", 0, {"name": "x"}, None)
    assert store.get_model("job-1") == store.get_model("job-1", 0) == b"model-0"
    with pytest.raises(AlreadyExists):
        store.create_job("job-1", {"name": "y"}, b"other")
    assert store.get_job("job-1") == job and store.get_model("job-1") == b"model-0"


def test_jobs_are_listed_in_creation_order_and_filtered_by_status(
    store: StateStore, clock: ManualClock
) -> None:
    for job_id in ("job-c", "job-a"):
        store.create_job(job_id, {}, b"m")
        clock.advance(1)
    store.create_job("job-b", {}, b"m")  # the same stamp as job-0: the id breaks the tie
    store.create_job("job-0", {}, b"m")
    store.set_job_status("job-a", "failed", "broken")
    assert [job.job_id for job in store.list_jobs()] == ["job-c", "job-a", "job-0", "job-b"]
    assert [job.job_id for job in store.list_jobs(())] == ["job-c", "job-a", "job-0", "job-b"]
    assert [job.job_id for job in store.list_jobs(("failed",))] == ["job-a"]
    assert [job.job_id for job in store.list_jobs(("pending", "x"))] == ["job-c", "job-0", "job-b"]


def test_a_status_change_is_stamped_and_fails_on_an_unknown_job(
    store: StateStore, clock: ManualClock
) -> None:
    store.create_job("job-1", {}, b"m")
    clock.advance(3)
    store.set_job_status("job-1", "cancelled", "by the operator")
    job = store.get_job("job-1")
    assert job is not None
    assert (job.status, job.reason, job.created_at, job.updated_at) == (
        "cancelled",
        "by the operator",
        EPOCH,
        EPOCH + 3,
    )
    with pytest.raises(UnknownRecord):
        store.set_job_status("job-nope", "failed")
    assert store.get_job("job-nope") is None


# rounds and uploads


def test_a_round_opens_on_the_clock_and_runs_the_job(store: StateStore, clock: ManualClock) -> None:
    store.create_job("job-1", {}, b"m")
    store.set_job_status("job-1", "running", "waiting for agents")
    clock.advance(2)
    record = store.open_round("job-1", 0, 0, EPOCH + 60, ["a1"], RUNNING, {"a1": 3})
    assert (record.opened_at, record.deadline, record.selected, record.vote_caps) == (
        EPOCH + 2,
        EPOCH + 60,
        ["a1"],
        {"a1": 3},
    )
    assert store.get_open_round("job-1") == record
    job = store.get_job("job-1")
    assert job is not None and (job.status, job.reason, job.updated_at) == (
        "running",
        None,
        EPOCH + 2,
    )


def test_a_new_attempt_replaces_the_round_and_keeps_its_uploads(running: StateStore) -> None:
    assert running.add_upload("job-1", 0, "a1", 5, b"vote-a1")
    retry = running.open_round("job-1", 0, 1, EPOCH + 120, ["a1", "a2", "a3"], RUNNING)
    assert running.get_open_round("job-1") == retry
    assert [upload.payload for upload in running.iter_uploads("job-1", 0)] == [b"vote-a1"]


def test_uploads_are_idempotent_per_agent_and_kept_in_arrival_order(
    running: StateStore, clock: ManualClock
) -> None:
    assert running.add_upload("job-1", 0, "a2", 5, b"vote-a2") is True
    assert running.add_upload("job-1", 0, "a1", 7, b"vote-a1") is True  # same clock value
    assert running.add_upload("job-1", 0, "a2", 9, b"resent") is False
    assert running.upload_agents("job-1", 0) == ["a2", "a1"]
    uploads = [(u.agent_id, u.samples, u.payload) for u in running.iter_uploads("job-1", 0)]
    assert uploads == [("a2", 5, b"vote-a2"), ("a1", 7, b"vote-a1")]
    assert running.counted("job-1", 0, "a2") is False  # open rounds count nothing yet


def test_a_batch_of_uploads_is_stored_at_once_each_agent_once(running: StateStore) -> None:
    running.add_upload("job-1", 0, "a2", 5, b"first")
    batch = [UploadRecord("a1", 7, b"vote-a1"), UploadRecord("a2", 9, b"again")]
    batch.append(UploadRecord("a1", 3, b"twice in one batch"))
    assert running.add_uploads("job-1", 0, batch) == [True, False, False]
    uploads = [(u.agent_id, u.samples, u.payload) for u in running.iter_uploads("job-1", 0)]
    assert uploads == [("a2", 5, b"first"), ("a1", 7, b"vote-a1")]
    assert running.add_uploads("job-1", 0, []) == []
    with pytest.raises(UnknownRecord):  # a round that is not open stores none of them
        running.add_uploads("job-1", 1, [UploadRecord("a3", 1, b"x")])


def test_an_upload_fails_without_an_open_round(running: StateStore) -> None:
    with pytest.raises(UnknownRecord):
        running.add_upload("job-nope", 0, "a1", 5, b"x")
    with pytest.raises(UnknownRecord):
        running.add_upload("job-1", 1, "a1", 5, b"x")
    running.close_round("job-1", 0, b"model-1", METRICS, RUNNING)
    with pytest.raises(UnknownRecord):
        running.add_upload("job-1", 0, "a1", 5, b"late")
    assert running.upload_agents("job-1", 0) == [] and running.upload_agents("job-1", 1) == []


def test_declines_keep_the_latest_per_agent_in_id_order(running: StateStore) -> None:
    running.add_decline("job-1", 0, "a2", "no memory")
    running.add_decline("job-1", 0, "a1", "no data")
    running.add_decline("job-1", 1, "a2", "still no memory")
    declines = [(d.agent_id, d.round, d.reason) for d in running.list_declines("job-1")]
    assert declines == [("a1", 0, "no data"), ("a2", 1, "still no memory")]
    with pytest.raises(UnknownRecord):
        running.add_decline("job-nope", 0, "a1", "x")
    assert running.list_declines("job-nope") == []


def test_closing_a_round_advances_the_job_and_counts_its_uploads(
    running: StateStore, clock: ManualClock
) -> None:
    running.add_upload("job-1", 0, "a1", 5, b"vote-a1")
    clock.advance(4)
    running.close_round("job-1", 0, b"model-1", METRICS, RUNNING)
    job = running.get_job("job-1")
    assert job is not None and (job.round, job.status, job.updated_at) == (1, "running", EPOCH + 4)
    assert running.get_model("job-1") == b"model-1" and running.get_model("job-1", 0) == b"model-0"
    assert running.get_model("job-1", 2) is None
    assert list(running.iter_uploads("job-1", 0)) == []
    assert running.list_metrics("job-1") == [METRICS]
    assert running.counted("job-1", 0, "a1") is True and running.counted("job-1", 0, "a2") is False
    assert [a.rounds_contributed for a in running.list_agents()] == [1, 0]
    assert running.get_open_round("job-1") is None
    with pytest.raises(UnknownRecord):
        running.close_round("job-1", 0, b"again", METRICS, RUNNING)
    assert running.get_model("job-1") == b"model-1"


def test_a_close_may_slim_the_closed_rounds_model_and_only_that_one(running: StateStore) -> None:
    running.close_round("job-1", 0, b"model-1 with state", METRICS, RUNNING, b"model-0 slim")
    assert running.get_model("job-1", 0) == b"model-0 slim"
    assert running.get_model("job-1") == b"model-1 with state"
    running.open_round("job-1", 1, 0, EPOCH + 60, ["a1"], RUNNING)
    unwritable = RoundMetrics(1, 0.5, 1.0, 1, 7, 9, 0.1, extra={"not json": object()})
    with pytest.raises(TypeError):  # a failed close slims nothing either
        running.close_round("job-1", 1, b"model-2", unwritable, RUNNING, b"model-1 slim")
    assert running.get_model("job-1", 1) == b"model-1 with state"


def test_the_final_round_completes_the_job_and_metrics_come_in_round_order(
    running: StateStore,
) -> None:
    running.close_round("job-1", 0, b"model-1", METRICS, RUNNING)
    running.open_round("job-1", 1, 0, EPOCH + 60, ["a1"], RUNNING)
    second = RoundMetrics(1, 0.75, 0.5, 1, 3, 4, 0.2)
    running.close_round("job-1", 1, b"model-2", second, COMPLETED)
    job = running.get_job("job-1")
    assert job is not None and (job.round, job.status) == (2, "completed")
    assert running.list_metrics("job-1") == [METRICS, second]
    assert running.get_model("job-1") == b"model-2"


def test_a_failed_close_writes_nothing(running: StateStore) -> None:
    running.add_upload("job-1", 0, "a1", 5, b"vote-a1")
    before = (running.get_job("job-1"), running.get_open_round("job-1"), running.list_agents())
    unwritable = RoundMetrics(0, 0.5, 1.0, 1, 7, 9, 0.1, extra={"not json": object()})
    with pytest.raises(TypeError):  # after the counts, uploads and model are written
        running.close_round("job-1", 0, b"model-1", unwritable, RUNNING)
    assert (
        running.get_job("job-1"),
        running.get_open_round("job-1"),
        running.list_agents(),
    ) == before
    assert [upload.payload for upload in running.iter_uploads("job-1", 0)] == [b"vote-a1"]
    assert running.get_model("job-1") == b"model-0" and running.get_model("job-1", 1) is None
    assert running.list_metrics("job-1") == [] and running.counted("job-1", 0, "a1") is False
    running.close_round("job-1", 0, b"model-1", METRICS, RUNNING)  # the store still works
    assert running.counted("job-1", 0, "a1") is True


def test_changes_to_unknown_jobs_fail_and_reads_of_them_are_empty(store: StateStore) -> None:
    with pytest.raises(UnknownRecord):
        store.open_round("job-nope", 0, 0, EPOCH, [], RUNNING)
    with pytest.raises(UnknownRecord):
        store.close_round("job-nope", 0, b"m", METRICS, RUNNING)
    assert store.get_job("job-nope") is None and store.get_open_round("job-nope") is None
    assert store.get_model("job-nope") is None and store.list_metrics("job-nope") == []
    assert (
        store.upload_agents("job-nope", 0) == [] and list(store.iter_uploads("job-nope", 0)) == []
    )
    assert store.counted("job-nope", 0, "a1") is False
    assert store.get_agent("ghost") is None and store.agent_secret("ghost") is None
    assert store.revoke_agent("ghost") is False
    assert store.list_jobs() == [] and store.list_agents() == []
