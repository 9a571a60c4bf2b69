"""Two coordinator workers on PostgreSQL and Mosquitto, as real processes: the broker splits
the uploads between them (an MQTT 5 shared subscription), one leads the rounds, and killing
the leader mid-round loses no acknowledged upload and counts none twice.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitfleet.server.cli.local.bench_fleet import metric_total
from bitfleet.server.tlsca import ThrowawayCa
from tests.agents import AgentProcess
from tests.cluster import Broker, Coordinator
from tests.manual import partition_files
from tests.test_faults import assert_counted_once, wait_mid_round

AGENTS = 4
ROUNDS = 6
LEASE_S = 3
JOB = {
    "name": "workers",
    "algorithm": "bitflip",
    "model": {"layers": [64, 32, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": ROUNDS,
    "agents_per_round": AGENTS,
    "min_agents": AGENTS - 1,
    "round_deadline_s": 300,
    "local_epochs": 1,
    "seed": 3,
}


@pytest.fixture
def broker(tmp_path: Path, tls_ca: ThrowawayCa) -> Iterator[Broker]:
    """A broker with a login for each worker (client ids are bound to user names)."""
    broker = Broker(tmp_path / "broker", tls=tls_ca, worker_users=["worker-w1", "worker-w2"])
    yield broker.start()
    broker.stop()


def _worker(tmp_path: Path, broker: Broker, tls: ThrowawayCa, url: str, name: str) -> Coordinator:
    options = ["--store", url, "--worker-id", name, "--leader-lease", str(LEASE_S)]
    options += ["--shared-subscription", "workers"]
    return Coordinator(
        tmp_path / name, broker, tls=tls, extra_args=options, broker_user=f"worker-{name}"
    )


def _wait_leading(worker: Coordinator, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric_total(worker, "bitfleet_leading") != 1:
        assert time.monotonic() < deadline, "the worker never took the lead"
        time.sleep(0.1)


def test_two_workers_split_uploads_and_a_killed_leader_loses_none(
    tmp_path: Path, broker: Broker, tls_ca: ThrowawayCa, postgres_url: str
) -> None:
    leader = _worker(tmp_path, broker, tls_ca, postgres_url, "w1").start()
    _wait_leading(leader)
    follower = _worker(tmp_path, broker, tls_ca, postgres_url, "w2").start()
    partitions = partition_files(tmp_path / "partitions", AGENTS)
    agents = [
        follower.start_agent(
            f"edge-{index}",
            data,
            tmp_path / "agents" / f"edge-{index}",
            mqtt_url=broker.agent_url,
            transport="mqtt",
            kind=AgentProcess,
        )
        for index, data in enumerate(partitions)
    ]
    try:
        follower.wait_online(AGENTS, agents=agents)
        job_id = follower.api.request("POST", "/api/v1/jobs", json_body=JOB).json()["id"]
        follower.wait_for(job_id, round_index=2, timeout=300)
        split = [metric_total(w, "bitfleet_uploads_accepted_total") for w in (leader, follower)]
        assert min(split) > 0, f"the broker gave every upload to one worker: {split}"
        wait_mid_round(follower, job_id, 3)
        leader.kill(signal.SIGKILL)
        job = follower.wait_for(job_id, timeout=300)
        assert job["status"] == "completed", job
        assert metric_total(follower, "bitfleet_leading") == 1
        assert_counted_once(follower, agents, job)
        assert len(job["metrics"]) == ROUNDS
        print("round seconds:", [m["seconds"] for m in job["metrics"]], "uploads split", split)
    finally:
        for agent in agents:
            agent.stop()
        follower.kill()
        leader.kill()
