"""The coordinator in-process (tests/inprocess.py): round scheduling, upload checking and the
REST contract, with time moved by hand. tests/test_coordinator.py runs the same engine as a
real process; these run in milliseconds each, so they test the edges it has no time for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bitfleet.bitpack import pack_binary
from bitfleet.counterlink import SCALES
from bitfleet.federated import update_frame
from bitfleet.frames import decode_frame
from bitfleet.modelfile import COORDINATOR_COUNTERS, tensor_values
from bitfleet.protocol import OUTLIER, RESENT
from bitfleet.server import scheduler
from bitfleet.server.closing import close_round
from bitfleet.server.state.base import RoundMetrics
from tests.inprocess import ADMIN_TOKEN, InProcessAgent, InProcessCoordinator, in_process
from tests.manual import JOB


# Tests that need the store to stamp times with the injected clock (tests/inprocess.py).
@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[InProcessCoordinator]:
    with in_process(tmp_path) as built:
        yield built


def _open_round(
    coordinator: InProcessCoordinator, count: int, **changes: object
) -> tuple[str, list[InProcessAgent], bytes]:
    """``count`` agents online and a job whose round 0 is open: (job id, agents, model)."""
    agents = coordinator.online(count)
    job_id = coordinator.submit(**changes)
    coordinator.tick()
    assert coordinator.job(job_id)["status"] == "running"
    return job_id, agents, coordinator.model(job_id, 0)


def _selected(agents: list[InProcessAgent]) -> list[str]:
    return [agent.agent_id for agent in agents if agent.task() is not None]


# Round scheduling


def test_a_round_opens_once_min_agents_are_online(coordinator: InProcessCoordinator) -> None:
    first = coordinator.enroll("a0")
    first.declare()
    job_id = coordinator.submit(agents_per_round=2, min_agents=2)
    coordinator.tick()
    job = coordinator.job(job_id)
    assert (job["status"], job["reason"]) == ("pending", "waiting for 2 agents, 1 online")
    assert coordinator.publisher.rounds == [] and first.task() is None
    coordinator.enroll("a1").declare()
    coordinator.tick()
    job = coordinator.job(job_id)
    assert (job["status"], job["round_agents"]) == ("running", 2)
    (published,) = coordinator.publisher.rounds
    assert (published.job_id, published.round, sorted(published.tasks)) == (job_id, 0, ["a0", "a1"])
    task = first.task()
    assert task is not None and (task["job_id"], task["round"], task["attempt"]) == (job_id, 0, 0)


def test_the_quorum_closes_a_round_early(coordinator: InProcessCoordinator) -> None:
    job_id, agents, model = _open_round(
        coordinator, 3, agents_per_round=3, min_agents=2, quorum=2, rounds=2
    )
    first, second, third = agents
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    assert coordinator.job(job_id)["round"] == 0
    assert second.upload(job_id, 0, second.update(model, job_id, 0)).json()["accepted"]
    assert coordinator.job(job_id)["round"] == 0  # the engine's thread closes it, not the upload
    coordinator.tick()
    job = coordinator.job(job_id)
    assert (job["round"], job["metrics"][0]["uploads"]) == (1, 2)
    assert ["a2"] in coordinator.publisher.withdrawn  # the third is told the round is over
    assert [r.round for r in coordinator.publisher.rounds] == [0, 1]
    assert third.upload(job_id, 0, third.update(model, job_id, 0)).json()["reason"] == "late"


def test_a_closed_rounds_stored_model_keeps_no_coordinator_counters(
    coordinator: InProcessCoordinator,
) -> None:
    """Only the latest model's counters are ever read again: closing a round slims the model
    it opened with to what agents were given (bounded storage per round)."""
    job_id, agents, model = _open_round(coordinator, 2, agents_per_round=2, min_agents=2)
    for agent in agents:
        assert agent.upload(job_id, 0, agent.update(model, job_id, 0)).json()["accepted"]
    coordinator.tick()
    store = coordinator.coordinator.store
    closed, latest = (decode_frame(store.get_model(job_id, r) or b"") for r in (0, 1))
    assert not any(name.startswith(COORDINATOR_COUNTERS) for name in closed.tensors)
    assert any(name.startswith(COORDINATOR_COUNTERS) for name in latest.tensors)
    assert store.get_model(job_id, 0) == coordinator.coordinator.jobs.model(job_id, 0)


def test_at_its_deadline_a_round_closes_with_the_uploads_it_has(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, *_), model = _open_round(
        coordinator, 3, agents_per_round=3, min_agents=1, round_deadline_s=60, rounds=2
    )
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    coordinator.advance(59)
    assert coordinator.job(job_id)["round"] == 0
    coordinator.advance(1)
    job = coordinator.job(job_id)
    assert (job["status"], job["round"], job["metrics"][0]["uploads"]) == ("running", 1, 1)


def test_an_upload_completing_a_round_wakes_the_engine_thread_which_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uvicorn worker that takes the last upload only rings the engine: the vote, the
    evaluation and the next round's publishing run on the engine's own thread."""
    closed_on: list[str] = []

    def recording_close(*args: Any, **kwargs: Any) -> RoundMetrics:
        closed_on.append(threading.current_thread().name)
        return close_round(*args, **kwargs)

    monkeypatch.setattr(scheduler, "close_round", recording_close)
    with in_process(tmp_path, background=True, tick_s=3600) as coordinator:
        (agent,) = coordinator.online(1)
        job_id = coordinator.submit(agents_per_round=1, min_agents=1, rounds=2)
        coordinator.coordinator.engine.wake()  # no tick for an hour otherwise
        deadline = time.monotonic() + 30
        while agent.task() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        model = coordinator.model(job_id, 0)
        assert agent.upload(job_id, 0, agent.update(model, job_id, 0)).json()["accepted"]
        while coordinator.job(job_id)["round"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert closed_on == ["round-engine"]


def test_a_rounds_seconds_are_measured_on_the_injected_clock(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (agent,), model = _open_round(coordinator, 1, agents_per_round=1, min_agents=1)
    coordinator.clock.advance(45)
    assert agent.upload(job_id, 0, agent.update(model, job_id, 0)).json()["accepted"]
    coordinator.tick()
    assert coordinator.job(job_id)["metrics"][0]["seconds"] == 45.0


def test_a_round_short_of_min_agents_fails_at_its_deadline(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, _), model = _open_round(
        coordinator,
        2,
        agents_per_round=2,
        min_agents=2,
        round_deadline_s=30,
        on_insufficient="fail",
    )
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    coordinator.advance(30)
    job = coordinator.job(job_id)
    assert job["status"] == "failed"
    assert job["reason"] == (
        "round 0 received 1 uploads by its deadline, fewer than min_agents=2, after 1 attempts"
    )
    assert ["a0", "a1"] in coordinator.publisher.withdrawn
    assert coordinator.coordinator.metrics.jobs_failed.value() == 1


def test_a_short_round_is_retried_max_retries_times_then_fails(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, second), model = _open_round(
        coordinator, 2, agents_per_round=2, min_agents=2, round_deadline_s=30, max_retries=2
    )
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    for attempt in (1, 2):
        coordinator.advance(30)
        job = coordinator.job(job_id)
        assert (job["status"], job["round"], job["round_uploads"]) == ("running", 0, 1)
        # The upload an earlier attempt accepted still counts: only a1 is asked again.
        assert first.task() is None
        task = second.task()
        assert task is not None and task["attempt"] == attempt
        assert list(coordinator.publisher.rounds[-1].tasks) == ["a1"]
    assert coordinator.coordinator.metrics.rounds_retried.value() == 2
    coordinator.advance(30)
    job = coordinator.job(job_id)
    assert job["status"] == "failed" and job["reason"].endswith("after 3 attempts")


def test_a_retry_with_too_few_agents_online_waits_for_them(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, second), _ = _open_round(
        coordinator, 2, agents_per_round=2, min_agents=2, round_deadline_s=30
    )
    second.post("/status", json={"agent_id": "a1", "state": "offline", "capabilities": {}})
    coordinator.advance(30)
    job = coordinator.job(job_id)
    assert (job["status"], job["reason"]) == ("running", "waiting for 2 agents, 1 online")
    second.declare()
    coordinator.tick()
    task = first.task()
    assert task is not None and task["attempt"] == 1


def test_a_silent_http_agent_stops_counting_as_online(coordinator: InProcessCoordinator) -> None:
    first, second = coordinator.online(2)
    coordinator.clock.advance(coordinator.coordinator.settings.presence_timeout_s - 1)
    first.declare()
    coordinator.clock.advance(2)  # a1 has been silent for longer than the timeout
    listed = {a["agent_id"]: a["online"] for a in coordinator.admin("GET", "/agents").json()}
    assert listed == {"a0": True, "a1": False}
    job_id = coordinator.submit(agents_per_round=2, min_agents=2)
    coordinator.tick()
    assert coordinator.job(job_id)["reason"] == "waiting for 2 agents, 1 online"
    assert second.task() is None  # polling is a heartbeat
    coordinator.tick()
    assert coordinator.job(job_id)["round_agents"] == 2


# Upload checking


def test_a_valid_signed_upload_is_accepted_and_its_receipt_published(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, _), model = _open_round(coordinator, 2, agents_per_round=2, min_agents=2)
    reply = first.upload(job_id, 0, first.update(model, job_id, 0))
    assert reply.status_code == 200
    assert reply.json() == {
        "job_id": job_id,
        "round": 0,
        "agent_id": "a0",
        "accepted": True,
        "reason": "",
    }
    (receipt,) = coordinator.publisher.receipts
    assert (receipt.agent_id, receipt.accepted) == ("a0", True)
    assert coordinator.job(job_id)["round_uploads"] == 1


def test_uploads_are_refused_with_the_right_reason(coordinator: InProcessCoordinator) -> None:
    job_id, agents, model = _open_round(coordinator, 3, agents_per_round=2, min_agents=2)
    chosen = _selected(agents)
    first, second = (agent for agent in agents if agent.agent_id in chosen)
    (outsider,) = (agent for agent in agents if agent.agent_id not in chosen)
    good = first.update(model, job_id, 0)
    decoded = decode_frame(good)
    tensors = list(decoded.tensors.values())
    cases = {
        "forged": (0, update_frame(tensors, decoded.meta, "a0", b"not-the-secret")),
        "mismatch": (0, first.update(model, job_id, 1)),  # signed for round 1, sent to 0
        "wrong_round": (1, first.update(model, job_id, 1)),
        "not_selected": (0, outsider.update(model, job_id, 0)),
    }
    status = {"forged": 403, "mismatch": 403, "wrong_round": 409, "not_selected": 409}
    for reason, (round_index, frame) in cases.items():
        sender = outsider if reason == "not_selected" else first
        reply = sender.upload(job_id, round_index, frame)
        assert (reply.status_code, reply.json()["reason"]) == (status[reason], reason)
        assert reply.json()["accepted"] is False
    assert first.upload(job_id, 0, good).json()["accepted"] is True
    resent = first.upload(job_id, 0, good)  # a resend after a lost receipt: idempotent
    assert (resent.status_code, resent.json()["accepted"], resent.json()["reason"]) == (
        200,
        True,
        RESENT,
    )
    assert coordinator.job(job_id)["round_uploads"] == 1
    assert second.upload(job_id, 0, second.update(model, job_id, 0)).json()["accepted"]
    coordinator.tick()  # the quorum is in: the round closes
    assert first.upload(job_id, 0, good).json()["reason"] == RESENT  # counted before the close
    assert outsider.upload(job_id, 0, outsider.update(model, job_id, 0)).json()["reason"] == "late"
    refused = [r.reason for r in coordinator.publisher.receipts if not r.accepted]
    assert refused == [*cases, "late"]


def test_a_counter_move_claiming_a_scale_beyond_the_counters_is_refused_and_counted(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, second), model = _open_round(coordinator, 2, agents_per_round=2, min_agents=2)
    assert decode_frame(model).meta["aggregation"] == "counters"
    decoded = decode_frame(first.update(model, job_id, 0))
    for scales in ([1 << 9, 1], [1], "huge"):
        meta = {**decoded.meta, SCALES: scales}
        hostile = update_frame(list(decoded.tensors.values()), meta, "a0", first.secret.encode())
        reply = first.upload(job_id, 0, hostile)
        assert (reply.status_code, reply.json()["reason"]) == (400, "meta"), reply.text
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    assert second.upload(job_id, 0, second.update(model, job_id, 0)).json()["accepted"]
    assert (
        'bitfleet_uploads_refused_total{reason="meta"} 3' in coordinator.client.get("/metrics").text
    )


def test_a_screening_job_refuses_an_inverted_layer_as_an_outlier(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, second), model = _open_round(
        coordinator,
        2,
        agents_per_round=2,
        min_agents=2,
        screen_updates=True,
        hyperparameters={"aggregation": "majority"},
    )
    decoded = decode_frame(first.update(model, job_id, 0))
    flipped = [  # the last layer inverted, the rest honest
        replace(t, data=pack_binary(-tensor_values(t))[None]) if t.name == "dense_1" else t
        for t in decoded.tensors.values()
    ]
    inverted = update_frame(flipped, decoded.meta, "a0", first.secret.encode())
    reply = first.upload(job_id, 0, inverted)
    assert (reply.status_code, reply.json()["reason"]) == (409, OUTLIER)
    assert second.upload(job_id, 0, second.update(model, job_id, 0)).json()["accepted"]
    assert (
        'bitfleet_uploads_refused_total{reason="outlier"} 1'
        in coordinator.client.get("/metrics").text
    )


def test_screening_a_job_whose_updates_are_counter_moves_is_refused_with_the_fix(
    coordinator: InProcessCoordinator,
) -> None:
    for hyperparameters in ({}, {"aggregation": "counters"}):
        reply = coordinator.admin(
            "POST",
            "/jobs",
            json={**JOB, "screen_updates": True, "hyperparameters": hyperparameters},
        )
        assert reply.status_code == 422, reply.text
        assert '"aggregation": "majority"' in reply.json()["detail"]
    assert coordinator.admin("GET", "/jobs").json() == []


def test_an_upload_for_a_round_its_deadline_closed_is_late(
    coordinator: InProcessCoordinator,
) -> None:
    job_id, (first, second), model = _open_round(
        coordinator, 2, agents_per_round=2, min_agents=1, round_deadline_s=30, rounds=2
    )
    assert first.upload(job_id, 0, first.update(model, job_id, 0)).json()["accepted"]
    coordinator.advance(30)
    assert coordinator.job(job_id)["round"] == 1
    reply = second.upload(job_id, 0, second.update(model, job_id, 0))
    assert (reply.status_code, reply.json()["reason"]) == (409, "late")


def test_an_oversized_upload_is_refused(tmp_path: Path) -> None:
    with in_process(tmp_path, max_frame_bytes=2048) as coordinator:
        job_id, (first, _), model = _open_round(
            coordinator,
            2,
            agents_per_round=2,
            min_agents=2,
            model={"layers": [64, 512, 10], "weights": "binary"},
        )
        frame = first.update(model, job_id, 0)
        assert len(frame) > 2048
        # Over HTTP the body limit refuses it unread; over MQTT the engine sees the bytes.
        reply = first.upload(job_id, 0, frame)
        assert reply.status_code == 413 and "2048 bytes" in reply.json()["detail"]
        receipt = coordinator.coordinator.uploads.handle(job_id, 0, "a0", frame, "mqtt")
        assert (receipt.accepted, receipt.reason) == (False, "oversized")
        assert coordinator.job(job_id)["round_uploads"] == 0


# The REST contract


def test_jobs_are_submitted_listed_shown_and_cancelled(coordinator: InProcessCoordinator) -> None:
    spec = {"name": "x", "model": {"layers": [64, 10]}, "dataset": "digits"}
    created = coordinator.admin("POST", "/jobs", json=spec)
    assert created.status_code == 201 and created.json()["status"] == "pending"
    job_id = created.json()["id"]
    listed = coordinator.admin("GET", "/jobs").json()
    assert [job["id"] for job in listed] == [job_id]
    shown = coordinator.job(job_id)
    assert (shown["name"], shown["round"], shown["rounds"]) == ("x", 0, 10)
    cancelled = coordinator.admin("POST", f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == (
        "cancelled",
        "cancelled by the operator",
    )
    again = coordinator.admin("POST", f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert coordinator.admin("GET", "/jobs/job-nothere").status_code == 404
    assert coordinator.admin("POST", "/jobs/job-nothere/cancel").status_code == 404


def test_cancelling_a_running_job_withdraws_its_tasks(coordinator: InProcessCoordinator) -> None:
    job_id, (first, _), _ = _open_round(coordinator, 2, agents_per_round=2, min_agents=2)
    assert first.task() is not None
    coordinator.admin("POST", f"/jobs/{job_id}/cancel")
    assert coordinator.publisher.withdrawn[-1] == ["a0", "a1"] and first.task() is None
    coordinator.tick()
    assert len(coordinator.publisher.rounds) == 1


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"min_agents": 9}, "min_agents"),
        ({"model": {"layers": [784, 10]}}, "64 features"),
        ({"algorithm": "sgd"}, "algorithm"),
        ({"rounds": 0}, "rounds"),
        ({"max_vote_ratio": 0.5}, "max_vote_ratio"),
        ({"max_vote_ratio": -3}, "max_vote_ratio"),
        ({"max_vote_ratio": 1e300}, "max_vote_ratio"),
        ({"max_vote_ratio": "twice"}, "max_vote_ratio"),
        ({"max_vote_ratio": [2]}, "max_vote_ratio"),
    ],
)
def test_an_invalid_job_is_refused_with_what_to_change(
    coordinator: InProcessCoordinator, changes: dict[str, object], detail: str
) -> None:
    reply = coordinator.admin("POST", "/jobs", json={**JOB, **changes})
    assert reply.status_code == 422 and detail in reply.json()["detail"]
    assert coordinator.admin("GET", "/jobs").json() == []


def test_agents_are_enrolled_listed_and_revoked(coordinator: InProcessCoordinator) -> None:
    generated = coordinator.admin("POST", "/agents")
    assert generated.status_code == 201 and generated.json()["agent_id"].startswith("agent-")
    named = coordinator.enroll("pi-1")
    assert coordinator.admin("POST", "/agents", json={"agent_id": "pi-1"}).status_code == 409
    assert coordinator.admin("POST", "/agents", json={"agent_id": "Bad Id"}).status_code == 422
    named.declare(samples=5)
    listed = {a["agent_id"]: a for a in coordinator.admin("GET", "/agents").json()}
    assert listed["pi-1"]["online"] is True and listed["pi-1"]["capabilities"] == {"samples": 5}
    assert listed[generated.json()["agent_id"]]["online"] is False
    revoked = coordinator.admin("POST", "/agents/pi-1/revoke")
    assert revoked.status_code == 200
    assert (revoked.json()["revoked"], revoked.json()["online"]) == (True, False)
    assert named.get("/whoami").status_code == 403
    assert coordinator.admin("POST", "/agents/nobody/revoke").status_code == 404


def test_a_revoked_agent_leaves_its_open_round(coordinator: InProcessCoordinator) -> None:
    job_id, (first, _), model = _open_round(coordinator, 2, agents_per_round=2, min_agents=1)
    coordinator.admin("POST", "/agents/a0/revoke")
    assert ["a0"] in coordinator.publisher.withdrawn
    reply = first.upload(job_id, 0, first.update(model, job_id, 0))
    assert reply.status_code == 401  # refused before its body is read


def test_the_apis_refuse_missing_and_wrong_credentials(coordinator: InProcessCoordinator) -> None:
    client = coordinator.client
    assert client.get("/api/v1/jobs").status_code == 401
    wrong = client.get("/api/v1/jobs", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    unread = client.post("/api/v1/jobs", json=JOB)  # refused before its body is read
    assert unread.status_code == 401
    agent = coordinator.enroll("a0")
    assert agent.get("/whoami").json() == {"agent_id": "a0"}
    guessed = InProcessAgent(client, "a0", "guess").get("/task")
    assert guessed.status_code == 403 and "enroll" in guessed.json()["detail"]
    admin_on_fleet = client.get(
        "/api/v1/fleet/task", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert admin_on_fleet.status_code == 403
    as_admin = client.get("/api/v1/jobs", headers=agent.headers)
    assert as_admin.status_code == 403
    metrics = client.get("/metrics").text
    assert 'bitfleet_http_refused_total{reason="unauthorized"} 2' in metrics
