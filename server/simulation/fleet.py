"""The simulated agents, and where they run: in this process, or spread over workers.

An agent keeps its training state across rounds (bit-flip's counters) where it runs, so with
workers each agent lives in one worker for the whole run (agent ``i`` in worker ``i mod W``);
only the round's model goes out and signed update frames come back. Results do not depend on
the number of workers: every agent's randomness is its own.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.local import LocalJobs
from bitfleet.federated import update_frame
from bitfleet.frames import decode_frame
from bitfleet.protocol import Task
from bitfleet.server.simulation.attacks import Attack


@dataclass
class SimAgent:
    agent_id: str
    x: NDArray[np.uint8]
    y: NDArray[np.int64]
    secret: bytes
    attack: Attack | None = None
    jobs: LocalJobs = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = LocalJobs(self.agent_id)

    @property
    def declared_samples(self) -> int:
        """The sample count this agent declares before rounds open."""
        claimed = self.attack.declared_samples if self.attack else None
        return claimed if claimed is not None else len(self.y)

    def update(self, task: Task, model: bytes) -> bytes:
        """Train the task's round as an edge agent would (a hostile one then rewrites what
        it sends); the signed update frame."""
        frame = decode_frame(model)
        plan = self.jobs.plan(task, frame)
        update = self.jobs.train(task, frame, plan, self.x, self.y)
        if self.attack is not None:
            update = self.attack.apply(update)
        tensors, meta = update
        return update_frame(tensors, meta, self.agent_id, self.secret)


def _serve(agents: dict[str, SimAgent], link: Connection) -> None:
    """A worker: answer (task, model, agent ids) with each agent's update until told to stop."""
    while True:
        request = link.recv()
        if request is None:
            return
        task, model, agent_ids = request
        try:
            link.send({agent_id: agents[agent_id].update(task, model) for agent_id in agent_ids})
        except Exception as error:  # sent back whole: the parent raises it in its own thread
            link.send(error)


class Fleet:
    """The agents of a run; :meth:`updates` trains the ones a round selected."""

    def __init__(self, agents: Sequence[SimAgent], workers: int = 1) -> None:
        self.agents = {agent.agent_id: agent for agent in agents}
        self._links: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self._home: dict[str, int] = {}
        if workers > 1:
            self._start(list(agents), min(workers, len(agents)))

    def _start(self, agents: list[SimAgent], workers: int) -> None:
        context = multiprocessing.get_context("fork")  # agents' data stays shared, unpickled
        for index in range(workers):
            mine = {a.agent_id: a for a in agents[index::workers]}
            self._home.update(dict.fromkeys(mine, index))
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(mine, child), daemon=True)
            process.start()
            child.close()
            self._links.append((process, parent))

    def updates(self, task: Task, model: bytes, agent_ids: list[str]) -> dict[str, bytes]:
        """Each listed agent's signed update for ``task``."""
        if not self._links:
            return {agent_id: self.agents[agent_id].update(task, model) for agent_id in agent_ids}
        for index, (_, link) in enumerate(self._links):
            link.send((task, model, [a for a in agent_ids if self._home[a] == index]))
        frames: dict[str, bytes] = {}
        for _, link in self._links:
            answer: Any = link.recv()
            if isinstance(answer, Exception):
                raise answer
            frames.update(answer)
        return frames

    def close(self) -> None:
        for process, link in self._links:
            link.send(None)
            process.join(timeout=10)
        self._links = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
