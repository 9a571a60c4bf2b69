"""Hand-driven fleet agents and job helpers for tests that control exactly what is uploaded."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bitfleet.datasets import load_dataset
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.swarm import echo_tensors
from bitfleet.federated import update_frame
from bitfleet.frames import decode_frame
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.modelfile import bitmlp_from_frame
from bitfleet.partition import partition
from bitfleet.server.cli import main as bitfleet_main
from tests.cluster import Coordinator

JOB = {
    "name": "digits-binary",
    "algorithm": "bitflip",
    "model": {"layers": [64, 64, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": 3,
    "agents_per_round": 3,
    "min_agents": 2,
    "round_deadline_s": 60,
    "local_epochs": 2,
    "seed": 1,
}


def enroll_as(coordinator: Coordinator, agent_id: str) -> str:
    """Enroll ``agent_id`` through the API; its secret."""
    body = coordinator.api.request("POST", "/api/v1/agents", json_body={"agent_id": agent_id})
    return str(body.json()["secret"])


def enroll(coordinator: Coordinator, count: int) -> list[tuple[str, str]]:
    """Agents a0..a{count-1}, enrolled: (id, secret) pairs."""
    return [(f"a{index}", enroll_as(coordinator, f"a{index}")) for index in range(count)]


def partition_files(out: Path, count: int) -> list[Path]:
    """IID digits partitions for ``count`` agent processes, written by the real CLI."""
    argv = ["data", "partition", "--dataset", "digits", "--agents", str(count)]
    argv += ["--scheme", "iid", "--seed", "0", "--out", str(out), "--json"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert bitfleet_main(argv) == 0
    return sorted(out.glob("agent-*.npz"))


def submit(coordinator: Coordinator, **changes: object) -> str:
    return str(
        coordinator.api.request("POST", "/api/v1/jobs", json_body={**JOB, **changes}).json()["id"]
    )


def echo_update(
    model_frame: bytes,
    job_id: str,
    round_index: int,
    agent_id: str,
    secret: str,
    flip: bool,
    samples: int,
) -> bytes:
    """A signed update that votes the model's own weights (inverted if ``flip``)."""
    tensors, meta = echo_tensors(decode_frame(model_frame), flip)
    meta |= {"samples": samples, "round": round_index, "job_id": job_id}
    return update_frame(tensors, meta, agent_id, secret.encode())


class ManualAgent:
    """Speaks the fleet HTTP API by hand, so tests control exactly what is uploaded."""

    def __init__(self, coordinator: Coordinator, agent_id: str, secret: str) -> None:
        self.agent_id, self.secret = agent_id, secret
        self.api = ApiClient(coordinator.url, f"{agent_id}:{secret}")

    def task(self) -> dict | None:
        reply = self.api.request("GET", "/api/v1/fleet/task")
        return reply.json() if reply.status == 200 else None

    def declare(self, samples: int) -> None:
        """Announce presence with the sample count that bounds this agent's vote weight."""
        status = {
            "agent_id": self.agent_id,
            "state": "online",
            "capabilities": {"samples": samples},
        }
        self.api.request("POST", "/api/v1/fleet/status", json_body=status)

    def model(self, job_id: str, round_index: int) -> bytes:
        return self.api.request(
            "GET", f"/api/v1/fleet/jobs/{job_id}/rounds/{round_index}/model"
        ).body

    def update(
        self, job_id: str, round_index: int, flip: bool, samples: int, model: bytes | None = None
    ) -> bytes:
        """The round's global weights (inverted if ``flip``) as a signed update; ``model``
        for an agent that may not download it (one not selected)."""
        frame = model if model is not None else self.model(job_id, round_index)
        return echo_update(frame, job_id, round_index, self.agent_id, self.secret, flip, samples)

    def upload(self, job_id: str, round_index: int, frame: bytes) -> dict:
        try:
            reply = self.api.request(
                "POST", f"/api/v1/fleet/jobs/{job_id}/rounds/{round_index}/updates", data=frame
            )
            return reply.json()
        except ApiError as error:
            return {**error.body, "status": error.status}


def manual_round(
    coordinator: Coordinator, count: int, declared: list[int] | None = None, **changes: object
) -> tuple[str, list[ManualAgent]]:
    """Agents online (each declaring 10 samples unless ``declared`` says) and a job whose
    round 0 is open."""
    agents = [ManualAgent(coordinator, a, s) for a, s in enroll(coordinator, count)]
    for agent, samples in zip(agents, declared or [10] * count, strict=True):
        agent.declare(samples)
    job_id = submit(coordinator, **changes)
    coordinator.wait_for(job_id, round_index=0)
    for agent in agents:
        for _ in range(50):
            if agent.task() is not None:
                break
            threading.Event().wait(0.1)
    return job_id, agents


def global_values(coordinator: Coordinator, job_id: str, round_index: int) -> list[np.ndarray]:
    frame = coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model?round={round_index}").body
    return [layer.values() for layer in bitmlp_from_frame(decode_frame(frame)).layers]


def shards(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """IID shares of the digits training set, one per agent."""
    data = load_dataset("digits")
    parts = partition(data.y_train, count, "iid", seed=0)
    return [(data.x_train[p], data.y_train[p]) for p in parts]


@contextmanager
def running(runtimes: list[AgentRuntime]) -> Iterator[None]:
    """Agent runtimes serving in threads for the duration of the block."""
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in runtimes]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
