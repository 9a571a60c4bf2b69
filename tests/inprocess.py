"""The coordinator in-process: the real app, engine and SQLite store behind a TestClient.

The fast tier beside tests/cluster.py's real processes. Two doubles, both at a boundary the
engine does not own: a :class:`FakePublisher` records what the engine would publish to MQTT,
and a :class:`ManualClock` moves only when a test says so. Nothing here starts the engine's
timer thread: :meth:`InProcessCoordinator.tick` runs what that thread runs each tick, so a
round deadline passes in a call instead of in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from bitfleet.protocol import Task, UploadReceipt
from bitfleet.server.api.app import create_app
from bitfleet.server.service import Coordinator, CoordinatorSettings
from bitfleet.server.state import open_store
from tests.manual import JOB, echo_update

ADMIN_TOKEN = "in-process-admin-token"
# A fixed start, far from today: a stamp taken from the wall clock by mistake shows up.
EPOCH = 1_000_000_000.0


class ManualClock:
    """Seconds since the epoch that pass only in :meth:`advance`."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class PublishedRound:
    job_id: str
    round: int
    model: bytes
    tasks: dict[str, Task]


@dataclass
class FakePublisher:
    """Records what the engine hands its publishers (the MQTT bridge, in a coordinator)."""

    rounds: list[PublishedRound] = field(default_factory=list)
    withdrawn: list[list[str]] = field(default_factory=list)
    receipts: list[UploadReceipt] = field(default_factory=list)

    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None:
        self.rounds.append(PublishedRound(job_id, round_index, model, dict(tasks)))

    def withdraw_tasks(self, agent_ids: list[str]) -> None:
        self.withdrawn.append(list(agent_ids))

    def publish_receipt(self, receipt: UploadReceipt) -> None:
        self.receipts.append(receipt)


class InProcessAgent:
    """Speaks the fleet HTTP API through the TestClient, uploading exactly what a test says."""

    def __init__(self, client: TestClient, agent_id: str, secret: str) -> None:
        self.agent_id, self.secret = agent_id, secret
        self.client = client
        self.headers = {"Authorization": f"Bearer {agent_id}:{secret}"}

    def get(self, path: str) -> httpx.Response:
        return self.client.get("/api/v1/fleet" + path, headers=self.headers)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post("/api/v1/fleet" + path, headers=self.headers, **kwargs)

    def declare(self, samples: int = 10) -> None:
        """Announce presence with the sample count that bounds this agent's vote weight."""
        status = {
            "agent_id": self.agent_id,
            "state": "online",
            "capabilities": {"samples": samples},
        }
        assert self.post("/status", json=status).status_code == 200

    def task(self) -> dict[str, Any] | None:
        reply = self.get("/task")
        assert reply.status_code in (200, 204), reply.text
        return reply.json() if reply.status_code == 200 else None

    def update(self, model: bytes, job_id: str, round_index: int, samples: int = 10) -> bytes:
        """A signed update voting ``model``'s own weights."""
        return echo_update(model, job_id, round_index, self.agent_id, self.secret, False, samples)

    def upload(self, job_id: str, round_index: int, frame: bytes) -> httpx.Response:
        return self.post(f"/jobs/{job_id}/rounds/{round_index}/updates", content=frame)


@dataclass
class InProcessCoordinator:
    clock: ManualClock
    publisher: FakePublisher
    coordinator: Coordinator
    client: TestClient

    def tick(self) -> None:
        """One turn of the engine's thread."""
        self.coordinator.scheduler.tick()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, then tick once."""
        self.clock.advance(seconds)
        self.tick()

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kwargs)

    def enroll(self, agent_id: str) -> InProcessAgent:
        reply = self.admin("POST", "/agents", json={"agent_id": agent_id})
        assert reply.status_code == 201, reply.text
        return InProcessAgent(self.client, agent_id, reply.json()["secret"])

    def online(self, count: int) -> list[InProcessAgent]:
        """Agents a0..a{count-1}, enrolled and announced."""
        agents = [self.enroll(f"a{index}") for index in range(count)]
        for agent in agents:
            agent.declare()
        return agents

    def submit(self, **changes: Any) -> str:
        reply = self.admin("POST", "/jobs", json={**JOB, **changes})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        reply = self.admin("GET", f"/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def model(self, job_id: str, round_index: int) -> bytes:
        return self.admin("GET", f"/jobs/{job_id}/model?round={round_index}").content


@contextmanager
def in_process(
    data_dir: Path, background: bool = False, **settings: Any
) -> Iterator[InProcessCoordinator]:
    """A coordinator built as ``bitfleet coordinator`` builds one, minus uvicorn and MQTT;
    ``settings`` are CoordinatorSettings fields. ``background``: the engine's own thread
    runs (on the manual clock) instead of the test ticking it."""
    clock = ManualClock()
    store = open_store(data_dir, clock=clock)
    coordinator = Coordinator(store, CoordinatorSettings(**settings), clock)
    publisher = FakePublisher()
    coordinator.fanout.add(publisher)
    coordinator.scheduler.recover()
    try:
        app = create_app(coordinator, ADMIN_TOKEN, background=background)
        with TestClient(app) as client:
            yield InProcessCoordinator(clock, publisher, coordinator, client)
    finally:
        store.close()
