"""The contract of the store methods several coordinator workers share a deployment by: the
round engine's lease, partial tally checkpoints, and reading a chosen few uploads. Run
against every backend of tests/test_store_contract.py, with its fixtures."""

from __future__ import annotations

import threading

import pytest

from bitfleet.server.state.base import RoundMetrics, StateStore, TallyCheckpoint, UnknownRecord
from tests.inprocess import ManualClock
from tests.test_store_contract import clock, running, store  # noqa: F401 (fixtures)

METRICS = RoundMetrics(0, 0.5, 1.0, 2, 7, 9, 0.1)


def test_a_lease_is_held_until_it_expires_then_taken_over(
    store: StateStore,  # noqa: F811
    clock: ManualClock,  # noqa: F811
) -> None:
    assert store.hold_lease("round-engine", "w1", 5.0)
    assert not store.hold_lease("round-engine", "w2", 5.0)
    clock.advance(4.0)
    assert store.hold_lease("round-engine", "w1", 5.0)  # renewed: good until 9 s
    clock.advance(4.0)
    assert not store.hold_lease("round-engine", "w2", 5.0)
    clock.advance(1.0)
    assert store.hold_lease("round-engine", "w2", 5.0)
    assert not store.hold_lease("round-engine", "w1", 5.0)
    assert store.hold_lease("other", "w1", 5.0)  # leases are independent


def test_of_holders_racing_for_a_free_lease_exactly_one_wins(
    store: StateStore,  # noqa: F811
) -> None:
    won: list[str] = []
    start = threading.Barrier(4)

    def race(holder: str) -> None:
        start.wait()
        if store.hold_lease("round-engine", holder, 60.0):
            won.append(holder)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_a_worker_replaces_its_checkpoint_and_the_close_drops_them(
    running: StateStore,  # noqa: F811
) -> None:
    running.save_tally("job-1", 0, TallyCheckpoint("w2", 0, ["a2"], 7, b"t2"))
    running.save_tally("job-1", 0, TallyCheckpoint("w1", 0, ["a1"], 5, b"old"))
    running.save_tally("job-1", 0, TallyCheckpoint("w1", 0, ["a1", "a3"], 9, b"new"))
    assert running.list_tallies("job-1", 0) == [
        TallyCheckpoint("w1", 0, ["a1", "a3"], 9, b"new"),
        TallyCheckpoint("w2", 0, ["a2"], 7, b"t2"),
    ]
    running.add_upload("job-1", 0, "a1", 5, b"u1")
    running.close_round("job-1", 0, b"model-1", METRICS, "running")
    assert running.list_tallies("job-1", 0) == []
    with pytest.raises(UnknownRecord):
        running.save_tally("job-1", 0, TallyCheckpoint("w1", 0, [], 0, b""))
    with pytest.raises(UnknownRecord):
        running.save_tally("job-9", 0, TallyCheckpoint("w1", 0, [], 0, b""))
    assert running.list_tallies("job-9", 0) == []


def test_chosen_uploads_come_in_arrival_order(running: StateStore) -> None:  # noqa: F811
    for agent_id in ("a2", "a1", "a3"):
        running.add_upload("job-1", 0, agent_id, 1, agent_id.encode())
    chosen = running.iter_uploads("job-1", 0, {"a3", "a2", "a9"})
    assert [upload.agent_id for upload in chosen] == ["a2", "a3"]
    assert list(running.iter_uploads("job-1", 0, [])) == []


def test_of_workers_racing_to_close_a_round_exactly_one_succeeds(
    running: StateStore,  # noqa: F811
) -> None:
    running.add_upload("job-1", 0, "a1", 5, b"u1")
    outcomes: list[str] = []
    start = threading.Barrier(3)

    def close(model: bytes) -> None:
        start.wait()
        try:
            running.close_round("job-1", 0, model, METRICS, "running")
            outcomes.append("closed")
        except UnknownRecord:
            outcomes.append("refused")

    threads = [threading.Thread(target=close, args=(f"m{i}".encode(),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["closed", "refused", "refused"]
    assert running.get_agent("a1").rounds_contributed == 1  # type: ignore[union-attr]
    assert len(running.list_metrics("job-1")) == 1
