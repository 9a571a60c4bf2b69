"""Fault tests with real processes: no accepted upload is lost or counted twice.

A 20-round job with five agents (four over MQTT, one over HTTP) rides through three
coordinator SIGKILLs (mid-round, when the round holds uploads) and two broker restarts.
Every upload an agent holds an ``accepted`` receipt for must be counted exactly once: the
coordinator's per-agent ``rounds_contributed`` equals the rounds each agent's journal saw
accepted, and no round stalls to its deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitfleet.server.tlsca import ThrowawayCa
from tests.agents import AgentProcess
from tests.cluster import Broker, Coordinator
from tests.manual import manual_round, partition_files

ROUNDS = int(os.environ.get("BITFLEET_FAULT_ROUNDS", "20"))
AGENTS = 5
JOB = {
    "name": "faults",
    "algorithm": "bitflip",
    "model": {"layers": [64, 32, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": ROUNDS,
    "agents_per_round": AGENTS,
    "min_agents": 3,
    "round_deadline_s": 300,
    "local_epochs": 1,
    "seed": 5,
}


@pytest.fixture
def partitions(tmp_path: Path) -> list[Path]:
    return partition_files(tmp_path / "partitions", AGENTS)


def _acknowledged(agent: AgentProcess, job_id: str) -> set[int]:
    """Rounds for which this agent holds an accepted receipt."""
    return {
        entry["round"]
        for entry in agent.journal()
        if entry["job_id"] == job_id
        and entry["event"] in ("uploaded", "receipt")
        and entry.get("outcome") == "accepted"
    }


def assert_counted_once(
    coordinator: Coordinator, agents: list[AgentProcess], job: dict[str, Any]
) -> None:
    """Every upload an agent holds an accepted receipt for counted, and none twice."""
    contributed = {
        entry["agent_id"]: entry["rounds_contributed"]
        for entry in coordinator.api.request("GET", "/api/v1/agents").json()
    }
    # The last round closes on its last upload, before that agent journals the receipt.
    settle = time.monotonic() + 30
    while time.monotonic() < settle and any(
        contributed[a.agent_id] != len(_acknowledged(a, job["id"])) for a in agents
    ):
        time.sleep(0.1)
    for agent in agents:
        # Lost: acknowledged but not counted; twice: counted more often than acknowledged.
        assert contributed[agent.agent_id] == len(_acknowledged(agent, job["id"])), agent.agent_id
    assert sum(contributed.values()) == sum(m["uploads"] for m in job["metrics"])


def wait_mid_round(coordinator: Coordinator, job_id: str, round_index: int) -> None:
    """Until the job is in ``round_index`` (or later) and its open round holds an upload."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = coordinator.job(job_id)
        if job["round"] > round_index or (job["round"] == round_index and job["round_uploads"]):
            return
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} never reached round {round_index}")


def test_a_job_rides_out_coordinator_kills_and_broker_restarts(
    tmp_path: Path, broker: Broker, partitions: list[Path], tls_ca: ThrowawayCa
) -> None:
    # A loaded machine (CI) can leave an HTTP agent silent past the harness' 5 s presence
    # timeout, and out of a round's selection: 30 s keeps every agent in every round.
    patient = ["--presence-timeout", "30"]
    coordinator = Coordinator(tmp_path / "coordinator", broker, tls=tls_ca, extra_args=patient)
    coordinator.start()
    transports = ["mqtt"] * (AGENTS - 1) + ["http"]
    agents = [
        coordinator.start_agent(
            f"field-{index}",
            data,
            tmp_path / "agents" / f"field-{index}",
            mqtt_url=broker.agent_url,
            transport=transport,
            kind=AgentProcess,
        )
        for index, (data, transport) in enumerate(zip(partitions, transports, strict=True))
    ]
    try:
        coordinator.wait_online(AGENTS, agents=agents)
        job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=JOB).json()["id"]
        faults = {2: "coordinator", 5: "broker", 8: "coordinator", 11: "broker", 14: "coordinator"}
        for round_index, part in sorted(faults.items()):
            if round_index >= ROUNDS:
                continue
            wait_mid_round(coordinator, job_id, round_index)
            if part == "coordinator":
                coordinator.kill(signal.SIGKILL)
                coordinator.start()
            else:
                broker.stop()
                broker.start()
        job = coordinator.wait_for(job_id, timeout=600)
        assert job["status"] == "completed", job
        # No round waited out its deadline: each closed at quorum, however it was hit.
        assert all(m["seconds"] < JOB["round_deadline_s"] for m in job["metrics"]), job
        assert_counted_once(coordinator, agents, job)
        # An agent a loaded machine left out of a round's selection (an HTTP agent silent for
        # the presence timeout) may make a round smaller, never an upload disappear.
        assert sum(m["uploads"] for m in job["metrics"]) >= AGENTS * ROUNDS - ROUNDS // 4
        print("round seconds:", [m["seconds"] for m in job["metrics"]], "faults at", sorted(faults))
    finally:
        for agent in agents:
            agent.stop()
        coordinator.kill()


def test_an_agent_killed_before_its_receipt_resends_its_upload_after_restart(
    tmp_path: Path, partitions: list[Path], tls_ca: ThrowawayCa
) -> None:
    """The coordinator freezes while an agent uploads; the agent is SIGKILLed holding the
    upload in its outbox, the coordinator too; both restart, and the held upload (not a
    retrained one) completes the round."""
    coordinator = Coordinator(tmp_path / "coordinator", tls=tls_ca).start()
    state_dir = tmp_path / "agents" / "solo"
    agent = coordinator.start_agent(
        "solo", partitions[0], state_dir, transport="http", kind=AgentProcess
    )
    try:
        coordinator.wait_online(1, agents=[agent])
        slow = {"layers": [64, 512, 10], "weights": "binary"}  # seconds of training
        job = {**JOB, "model": slow, "local_epochs": 100, "rounds": 1}
        job.update(agents_per_round=1, min_agents=1)
        job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=job).json()["id"]
        agent.wait_for_state("training")
        time.sleep(0.3)  # the model download (loopback, milliseconds) is done
        assert coordinator.process is not None
        coordinator.process.send_signal(signal.SIGSTOP)
        outbox = state_dir / "outbox"
        deadline = time.monotonic() + 60
        while not list(outbox.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(outbox.glob("*.json")), agent.log()
        agent.signal(signal.SIGKILL)
        coordinator.kill(signal.SIGKILL)
        coordinator.start()
        agent.start()
        done = coordinator.wait_for(job_id, timeout=120)
        assert done["status"] == "completed" and done["metrics"][0]["uploads"] == 1
        events = [e["event"] for e in agent.journal() if e["job_id"] == job_id]
        assert events.count("started") == 1  # trained once: the held upload was resent
        assert _acknowledged(agent, job_id) == {0}
        assert not list(outbox.glob("*"))
    finally:
        agent.stop()
        coordinator.kill()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk the test can fill (needs root, as CI has)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    return filler


def test_a_coordinator_on_a_full_disk_stays_up_refuses_with_storage_and_loses_nothing(
    tiny_disk: Path, tmp_path: Path, tls_ca: ThrowawayCa
) -> None:
    coordinator = Coordinator(tiny_disk / "state", tls=tls_ca).start()
    try:
        job_id, (agent,) = manual_round(coordinator, 1, agents_per_round=1, min_agents=1, rounds=1)
        update = agent.update(job_id, 0, flip=False, samples=10)
        filler = _fill(tiny_disk)
        receipts = [agent.upload(job_id, 0, update) for _ in range(10)]
        assert all(
            (r["accepted"], r["reason"], r["status"]) == (False, "storage", 503) for r in receipts
        ), receipts
        assert coordinator.api.request("GET", "/healthz").json()["status"] == "ok"
        log = coordinator.log_path.read_text()
        assert log.count("uploads refused") == 1 and "Traceback" not in log
        filler.unlink()  # space is back: the agent's resend is taken
        assert agent.upload(job_id, 0, update)["accepted"]
        assert coordinator.wait_for(job_id)["status"] == "completed"
    finally:
        coordinator.kill()
