"""Several coordinator workers on one store, in-process: the uploads split between them, one
leads and closes, and the round's model is exactly the one a lone coordinator votes.

Fast tier: the workers' handlers over one real SQLite file, each ticked by hand on one
manual clock; tests/test_workers.py runs worker processes on PostgreSQL and Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

from bitfleet.frames import decode_frame
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.scheduler import WorkerRole
from bitfleet.server.service import Coordinator, CoordinatorSettings
from bitfleet.server.state.sqlite import SqliteStore
from tests.inprocess import ManualClock
from tests.manual import JOB, echo_update

AGENTS = [f"e{index}" for index in range(5)]
# A majority vote: three agents vote the inverse of the model, two echo it, so the model
# flips only if every upload counts once (one lost or one counted twice is a tie, which
# keeps the model).
FLIPS = {"e2", "e3", "e4"}
LEASE_S = 5.0


def _worker(path: Path, clock: ManualClock, worker_id: str) -> Coordinator:
    role = WorkerRole(worker_id=worker_id, lease_s=LEASE_S)
    return Coordinator(SqliteStore(path, clock), CoordinatorSettings(role=role), clock)


def _open_job(leader: Coordinator) -> str:
    for agent_id in AGENTS:
        leader.registry.enroll(agent_id, f"secret-{agent_id}")
        leader.registry.presence(agent_id, True, "mqtt", {"samples": 10})
    spec = JobSpec.model_validate(
        {
            **JOB,
            "agents_per_round": len(AGENTS),
            "min_agents": len(AGENTS),
            "rounds": 2,
            "hyperparameters": {"aggregation": "majority"},
        }
    )
    job_id = leader.jobs.create(spec).job_id
    leader.scheduler.tick()
    assert leader.scheduler.leading
    return job_id


def _workers(tmp_path: Path) -> tuple[ManualClock, Coordinator, Coordinator, str]:
    """Two workers on one store: w1 leads, with the job's round 0 open; w2 follows it."""
    clock = ManualClock()
    leader = _worker(tmp_path / "state.db", clock, "w1")
    job_id = _open_job(leader)
    follower = _worker(tmp_path / "state.db", clock, "w2")
    follower.scheduler.tick()
    return clock, leader, follower, job_id


def _upload(worker: Coordinator, job_id: str, agent_id: str) -> str:
    model = worker.jobs.model(job_id, 0)
    frame = echo_update(model, job_id, 0, agent_id, f"secret-{agent_id}", agent_id in FLIPS, 10)
    receipt = worker.uploads.handle(job_id, 0, agent_id, frame, "mqtt")
    return receipt.reason or "accepted"


def _lone_model(tmp_path: Path) -> bytes:
    """Round 1's model when one coordinator takes every upload."""
    lone = _worker(tmp_path / "lone.db", ManualClock(), "coordinator")
    job_id = _open_job(lone)
    assert [_upload(lone, job_id, a) for a in AGENTS] == ["accepted"] * len(AGENTS)
    lone.scheduler.tick()
    voted = _voted(lone, job_id)
    before = decode_frame(lone.jobs.model(job_id, 0)).tensors["dense_0"].data.tobytes()
    assert voted != before  # the inverse votes carried it: a lost one would show
    return voted


def _voted(worker: Coordinator, job_id: str) -> bytes:
    return decode_frame(worker.jobs.model(job_id, 1)).tensors["dense_0"].data.tobytes()


def _counted_once(worker: Coordinator, job_id: str) -> None:
    metrics = worker.jobs.metrics(job_id)
    assert [m.uploads for m in metrics] == [len(AGENTS)]
    assert all(worker.store.counted(job_id, 0, a) for a in AGENTS)
    assert all(agent.rounds_contributed == 1 for agent in worker.store.list_agents())


def test_split_uploads_merge_into_the_model_a_lone_coordinator_votes(tmp_path: Path) -> None:
    clock, leader, follower, job_id = _workers(tmp_path)
    assert not follower.scheduler.leading

    assert [_upload(leader, job_id, a) for a in ("e0", "e1")] == ["accepted"] * 2
    assert _upload(follower, job_id, "e3") == "accepted"
    clock.advance(1.0)
    follower.scheduler.tick()  # checkpoints its tally of e3
    assert [c.agents for c in follower.store.list_tallies(job_id, 0)] == [["e3"]]
    assert [_upload(follower, job_id, a) for a in ("e2", "e4")] == ["accepted"] * 2
    assert _upload(leader, job_id, "e4") == "resent"  # stored once, whoever took it
    leader.scheduler.tick()  # merges e3's checkpoint, reads e2 and e4 from the store

    assert leader.jobs.get(job_id).round == 1
    _counted_once(leader, job_id)
    assert leader.store.list_tallies(job_id, 0) == []
    assert _voted(leader, job_id) == _lone_model(tmp_path)
    follower.scheduler.tick()  # follows into round 1
    assert follower.tasks.task_for("e0") is not None


def test_a_follower_that_dies_before_its_checkpoint_loses_no_upload(tmp_path: Path) -> None:
    _clock, leader, follower, job_id = _workers(tmp_path)
    assert [_upload(follower, job_id, a) for a in ("e3", "e4")] == ["accepted"] * 2
    follower.store.close()  # killed: its tally is gone, its uploads are stored
    assert [_upload(leader, job_id, a) for a in ("e0", "e1", "e2")] == ["accepted"] * 3
    leader.scheduler.tick()
    _counted_once(leader, job_id)
    assert _voted(leader, job_id) == _lone_model(tmp_path)


def test_when_the_leader_dies_a_follower_takes_over_once_the_lease_runs_out(
    tmp_path: Path,
) -> None:
    clock, leader, follower, job_id = _workers(tmp_path)
    assert [_upload(leader, job_id, a) for a in ("e0", "e3")] == ["accepted"] * 2
    leader.store.close()  # killed mid-round, holding the only tally of e0 and e3
    assert [_upload(follower, job_id, a) for a in ("e1", "e2", "e4")] == ["accepted"] * 3
    clock.advance(LEASE_S - 1)
    follower.scheduler.tick()
    assert not follower.scheduler.leading and follower.jobs.get(job_id).round == 0
    clock.advance(1.0)
    follower.scheduler.tick()
    assert follower.scheduler.leading
    assert follower.metrics.lead_changes.value() == 1
    _counted_once(follower, job_id)
    assert _voted(follower, job_id) == _lone_model(tmp_path)


def test_a_damaged_checkpoint_is_skipped_for_the_stored_uploads(tmp_path: Path) -> None:
    _clock, leader, follower, job_id = _workers(tmp_path)
    assert [_upload(follower, job_id, a) for a in ("e3", "e4")] == ["accepted"] * 2
    checkpoint = follower.rounds.by_job[job_id].checkpoint("w2")
    damaged = checkpoint.tally[:-9] + bytes(9)
    follower.store.save_tally(job_id, 0, type(checkpoint)("w2", 0, ["e3", "e4"], 1, damaged))
    assert [_upload(leader, job_id, a) for a in ("e0", "e1", "e2")] == ["accepted"] * 3
    leader.scheduler.tick()
    _counted_once(leader, job_id)
    assert _voted(leader, job_id) == _lone_model(tmp_path)
