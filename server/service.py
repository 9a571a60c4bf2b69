"""The composition root: one coordinator's store, handlers, engine thread and transports.

Everything else receives what it needs from here; nothing registers itself anywhere. The
FastAPI app (:func:`bitfleet.server.api.app.create_app`) starts and stops a
:class:`Coordinator` in its lifespan; the in-process test tier builds the same object and
drives :meth:`RoundScheduler.tick` itself instead of starting the thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bitfleet.frames import DEFAULT_MAX_FRAME_BYTES
from bitfleet.server.conditions import ConditionLog
from bitfleet.server.context import Context
from bitfleet.server.datasets import DatasetCache
from bitfleet.server.engine import RoundEngine
from bitfleet.server.fanout import Fanout, Publisher
from bitfleet.server.jobs import JobBook
from bitfleet.server.metrics import Metrics
from bitfleet.server.refusals import RefusalCounts
from bitfleet.server.registry import AgentRegistry
from bitfleet.server.rounds import OpenRounds
from bitfleet.server.scheduler import RoundScheduler, WorkerRole
from bitfleet.server.state import StateStore
from bitfleet.server.tasks import TaskDesk
from bitfleet.server.uploads import UploadDesk

log = logging.getLogger("bitfleet")


@dataclass
class CoordinatorSettings:
    presence_timeout_s: float = 30.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    # Largest model a job may ask for, in dense weights: 10x a 784-512-10 network, about
    # 80 MB of bit-flip training state on an agent, 8 MB as an int16 model file.
    max_model_weights: int = 4_000_000
    tick_s: float = 0.25
    data_dir: str | None = None
    role: WorkerRole = field(default_factory=WorkerRole)


class Transport(Publisher, Protocol):
    """A link to agents that pushes (MQTT): started and stopped with the coordinator."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_up(self) -> bool: ...


@dataclass(frozen=True)
class FleetHandlers:
    """What a transport adapts to: the transport-free handlers, and where it counts and
    reports what it refuses."""

    registry: AgentRegistry
    scheduler: RoundScheduler
    tasks: TaskDesk
    uploads: UploadDesk
    metrics: Metrics
    conditions: ConditionLog


class Coordinator:
    def __init__(
        self,
        store: StateStore,
        settings: CoordinatorSettings,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.conditions = ConditionLog(logging.getLogger("bitfleet.engine"))
        self.fanout = Fanout()
        self.engine = RoundEngine(settings.tick_s, self.conditions)
        datasets = DatasetCache(settings.data_dir)
        self.rounds = OpenRounds()
        self.refusals = RefusalCounts()
        self.registry = AgentRegistry(store, self.fanout, clock, settings.presence_timeout_s)
        self.jobs = JobBook(store, datasets, settings.max_model_weights)
        context = Context(
            store,
            self.jobs,
            self.registry,
            self.rounds,
            self.fanout,
            self.metrics,
            self.conditions,
            clock,
            self.engine.wake,
            self.refusals,
        )
        self.scheduler = RoundScheduler(context, datasets, settings.role)
        self.uploads = UploadDesk(context, settings.max_frame_bytes)
        self.tasks = TaskDesk(context)
        self.fleet = FleetHandlers(
            self.registry, self.scheduler, self.tasks, self.uploads, self.metrics, self.conditions
        )
        self._transports: dict[str, Transport] = {}

    def add_transport(self, name: str, transport: Transport) -> None:
        """A pushing transport: it gets every round and receipt, /healthz reports its link."""
        self._transports[name] = transport
        self.fanout.add(transport)

    def link_states(self) -> dict[str, bool]:
        """Each transport link and whether it is up now."""
        return {name: transport.is_up() for name, transport in self._transports.items()}

    def start(self) -> None:
        """Rebuild open rounds from the store, start the engine thread, then the links."""
        self.scheduler.recover()
        self.engine.start(self.scheduler.tick)
        for transport in self._transports.values():
            transport.start()

    def stop(self) -> None:
        for transport in self._transports.values():
            transport.stop()
        self.engine.stop()
