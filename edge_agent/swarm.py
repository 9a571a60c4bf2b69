"""Many simulated agents in one process, for load tests (``bitfleet bench fleet``).

Over HTTP each is a real :class:`~bitfleet.edge_agent.runtime.AgentRuntime` on its own
session and thread (:func:`run_swarm`); over MQTT they run on one loop thread
(:mod:`bitfleet.edge_agent.loopswarm`), since a thread per agent spent the generator's CPU
on switching threads. Either way an agent announces itself, takes tasks, downloads the
round's model, uploads a signed update and waits for the receipt — all a board does but
train. Its update votes the round's own weights (:func:`echo_update`): valid, so the
coordinator tallies, votes, evaluates and stores it as any other. Each step is printed as
a JSON line (``event``, ``agent``, ``job``, ``round``, ``t``) for the bench to time rounds.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.bitflip import AGGREGATION, INPUT_MEAN
from bitfleet.algorithms.local import LocalJobs, RoundPlan
from bitfleet.bitmlp import PackedLayer
from bitfleet.bitpack import pack_ternary
from bitfleet.counterlink import CHANGE, SCALES
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports import Transport
from bitfleet.errors import ConfigError
from bitfleet.frames import Frame, Tensor
from bitfleet.modelfile import bitmlp_from_frame
from bitfleet.protocol import Decline, Task, UploadReceipt

# A swarm process holds its agents' threads and clients; more agents belong in more processes.
MAX_AGENTS_PER_SWARM = 2000
MAX_ID_BYTES = 200


def echo_tensors(frame: Frame, flip: bool = False) -> tuple[list[Tensor], dict[str, Any]]:
    """An update that votes the model's own weights (inverted if ``flip``); for a
    ``counters`` job, one that moves every counter one step towards them (away if ``flip``).
    Returns the tensors and the meta beyond samples, round and job."""
    model = bitmlp_from_frame(frame)
    counters = frame.meta.get(AGGREGATION) == "counters"
    tensors = []
    for index, layer in enumerate(model.layers):
        values = layer.values() * (-1 if flip else 1)
        shape = (layer.outputs, layer.inputs)
        if counters:
            planes = np.stack(pack_ternary(values))
            tensors.append(Tensor(f"{CHANGE}_{index}", "ternary", shape, planes))
        else:
            packed = PackedLayer.from_values(values, "binary")
            tensors.append(Tensor(f"dense_{index}", "binary", shape, packed.positive[None]))
    features = model.layer_sizes[0]
    tensors.append(Tensor(INPUT_MEAN, "uint8", (features,), np.full(features, 3, np.uint8)))
    meta: dict[str, Any] = {SCALES: [1] * len(model.layers)} if counters else {}
    return tensors, meta


class EchoJobs(LocalJobs):
    """An agent's jobs that train nothing: every round's update is :func:`echo_tensors`,
    computed once per round for all the swarm's agents (each still signs its own), so the
    load generator spends its CPU on the protocol, as the coordinator sees it."""

    _shared: dict[tuple[str, int], tuple[list[Tensor], dict[str, Any]]] = {}  # noqa: RUF012
    _lock = threading.Lock()

    def train(
        self,
        task: Task,
        global_frame: Frame,
        plan: RoundPlan,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> tuple[list[Tensor], dict[str, Any]]:
        return self.echo(task, global_frame, len(y))

    def echo(
        self, task: Task, global_frame: Frame, samples: int
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """The round's echo update (computed once per round) and its meta."""
        key = (task.job_id, task.round)
        with self._lock:
            if key not in self._shared:
                self._shared.clear()  # only the current round's is ever asked for
                self._shared[key] = echo_tensors(global_frame)
            tensors, meta = self._shared[key]
        return tensors, {**meta, "samples": samples, "round": task.round, "job_id": task.job_id}


class Events:
    """JSON lines on stdout, one per step, written whole under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, agent: str, task: Task | None = None, **extra: Any) -> None:
        record = {"event": event, "agent": agent, "t": time.time(), **extra}
        if task is not None:
            record |= {"job": task.job_id, "round": task.round}
        line = json.dumps(record)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


@dataclass
class TimedTransport:
    """A transport that reports when each task, model and receipt arrived."""

    inner: Transport
    agent_id: str
    events: Events

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self._seen: set[tuple[str, int]] = set()

    @property
    def coordinator_returns(self) -> int:
        return self.inner.coordinator_returns

    @coordinator_returns.setter
    def coordinator_returns(self, value: int) -> None:
        self.inner.coordinator_returns = value

    def start(self, status: Any) -> None:
        self.inner.start(status)

    def coordinator_away(self) -> str | None:
        return self.inner.coordinator_away()

    def announce(self, status: Any) -> None:
        self.inner.announce(status)

    def next_task(self, timeout: float, seen: Task | None = None) -> Task | None:
        task = self.inner.next_task(timeout, seen)
        if task is not None and (task.job_id, task.round) not in self._seen:
            self._seen.add((task.job_id, task.round))
            self.events.emit("task", self.agent_id, task)
        return task

    def fetch_model(self, task: Task, timeout: float) -> bytes:
        model = self.inner.fetch_model(task, timeout)
        self.events.emit("model", self.agent_id, task, bytes=len(model))
        return model

    def upload(self, task: Task, frame: bytes, timeout: float) -> UploadReceipt | None:
        self.events.emit("upload", self.agent_id, task, bytes=len(frame))
        receipt = self.inner.upload(task, frame, timeout)
        if receipt is not None:
            reason = receipt.reason if not receipt.accepted else None
            self.events.emit(
                "receipt", self.agent_id, task, accepted=receipt.accepted, reason=reason
            )
        return receipt

    def decline(self, decline: Decline) -> None:
        self.inner.decline(decline)

    def close(self) -> None:
        self.inner.close()


def read_agents(path: Path) -> list[tuple[str, str]]:
    """``agent_id secret`` per line; a bad file is a ConfigError saying which line. Its
    size is bounded before it is read."""
    limit = MAX_AGENTS_PER_SWARM * (2 * MAX_ID_BYTES + 2)
    try:
        with path.open("rb") as listing:
            raw = listing.read(limit + 1)
    except OSError as error:
        raise ConfigError(f"cannot read the agents file {path}: {error.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{path} is over {limit} bytes: more agents than one swarm runs")
    try:
        lines = raw.decode().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not text: expected 'AGENT_ID SECRET' lines") from None
    agents = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or any(len(part) > MAX_ID_BYTES for part in parts):
            raise ConfigError(f"{path}:{number}: expected 'AGENT_ID SECRET'")
        agents.append((parts[0], parts[1]))
    if not 1 <= len(agents) <= MAX_AGENTS_PER_SWARM:
        raise ConfigError(
            f"{path} lists {len(agents)} agents; a swarm runs 1 to {MAX_AGENTS_PER_SWARM} "
            "(start more swarms for more)"
        )
    return agents


def run_swarm(
    agents: Iterable[tuple[str, str]],
    transport: Callable[[str, str], Transport],
    samples: int,
    stop: threading.Event,
) -> None:
    """Run one agent runtime per ``(agent_id, secret)`` until ``stop`` is set."""
    events = Events()
    y = np.zeros(samples, dtype=np.int64)
    x = np.zeros((samples, 0), dtype=np.uint8)  # echo updates read no features
    threads = []
    for agent_id, secret in agents:
        runtime = AgentRuntime(
            agent_id,
            secret,
            x,
            y,
            TimedTransport(transport(agent_id, secret), agent_id, events),
            jobs=EchoJobs(agent_id),
        )
        thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)
    stop.wait()
    for thread in threads:
        thread.join(timeout=10)
