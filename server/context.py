"""What the transport-free handlers share, built once by the composition root.

The scheduler, the task desk and the upload desk each need the same parts: the store, the
jobs, the agent registry, the open rounds (and their one lock), the fan-out to pushing
transports, the metrics and condition log, the clock, and the bell that wakes the engine's
thread. One :class:`Context` carries them, so a handler's constructor names only what is
its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bitfleet.server.conditions import ConditionLog
from bitfleet.server.fanout import Fanout
from bitfleet.server.jobs import JobBook
from bitfleet.server.metrics import Metrics
from bitfleet.server.refusals import RefusalCounts
from bitfleet.server.registry import AgentRegistry
from bitfleet.server.rounds import OpenRounds
from bitfleet.server.state import StateStore


@dataclass(frozen=True)
class Context:
    store: StateStore
    jobs: JobBook
    registry: AgentRegistry
    rounds: OpenRounds
    fanout: Fanout
    metrics: Metrics
    conditions: ConditionLog
    clock: Callable[[], float]
    # Rings the engine's thread: a round may be ready to close.
    wake: Callable[[], None]
    refusals: RefusalCounts
