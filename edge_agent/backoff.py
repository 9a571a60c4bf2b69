"""How long an agent waits before trying again, and when it stops trying.

One policy for every retry the agent makes (the task poll, a model download that met an
outage, each held upload's resend, the broker reconnect, the credential check at start):
capped exponential backoff with jitter, so a fleet that lost its coordinator at the same
instant does not come back at the same instant. "Full" jitter draws each delay from
``[0, min(max, initial·2^n))``; "decorrelated" from ``[initial, 3·previous)``, capped (both
after the AWS architecture blog's "Exponential Backoff and Jitter"). The random source and
the clock are injectable, so tests step through a schedule without sleeping.

:class:`Outage` is the other half: it tracks whether the coordinator can be reached, logs
each change once (not a line per attempt) and gives up when told to.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from bitfleet.errors import BitfleetError, ConfigError

log = logging.getLogger("bitfleet.agent")

Jitter = Literal["full", "decorrelated"]
JITTERS: tuple[Jitter, ...] = ("full", "decorrelated")
DEFAULT_MAX_BACKOFF_S = 10.0


class GaveUp(BitfleetError):
    """The coordinator stayed unreachable for longer than the agent was told to wait."""


@dataclass
class Backoff:
    """A retry schedule: :meth:`failed` says how long to wait, :meth:`reset` starts over."""

    initial_s: float = 1.0
    max_s: float = DEFAULT_MAX_BACKOFF_S
    jitter: Jitter = "full"
    random: Callable[[], float] = field(default=random.random, repr=False)  # in [0, 1)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    attempts: int = field(default=0, init=False)
    _previous: float = field(default=0.0, init=False)
    _next_at: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_s) and 0 < self.initial_s <= self.max_s):
            raise ConfigError(
                f"backoff must satisfy 0 < initial ({self.initial_s} s) <= max ({self.max_s} s)"
            )
        if self.jitter not in JITTERS:
            raise ConfigError(f"backoff jitter must be one of {JITTERS}, got {self.jitter!r}")

    def fresh(self) -> Backoff:
        """The same policy with a schedule of its own (e.g. one per held upload)."""
        return replace(self)

    def failed(self) -> float:
        """Count a failed try; the seconds to wait before the next (:meth:`due` after)."""
        if self.jitter == "full":
            ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.attempts, 62))
            delay = ceiling * self.random()
        else:
            upper = 3.0 * max(self._previous, self.initial_s)
            delay = min(self.max_s, self.initial_s + (upper - self.initial_s) * self.random())
        self.attempts += 1
        self._previous = delay
        self._next_at = self.clock() + delay
        return delay

    def due(self) -> bool:
        """Whether the wait :meth:`failed` asked for is over (always, before any failure)."""
        return self.clock() >= self._next_at

    def reset(self) -> None:
        """A try succeeded (or the other side came back): the next failure waits little."""
        self.attempts = 0
        self._previous = 0.0
        self._next_at = -math.inf


@dataclass
class Outage:
    """Whether the coordinator can be reached, as this agent last saw it.

    :meth:`update` logs "unreachable" when an outage starts and "reachable again" when it
    ends, once each however many tries it takes, and raises :class:`GaveUp` once an outage
    has lasted ``give_up_after_s`` (None: never).
    """

    give_up_after_s: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    since: float | None = field(default=None, init=False)

    def update(self, problem: str | None) -> bool:
        """Record the latest evidence (None: the coordinator answered); True when this ends
        an outage."""
        now = self.clock()
        if problem is None:
            if self.since is None:
                return False
            log.info("coordinator reachable again (after %.0f s)", now - self.since)
            self.since = None
            return True
        if self.since is None:
            self.since = now
            log.warning("coordinator unreachable: %s; retrying with backoff", problem)
        if self.give_up_after_s is not None and now - self.since >= self.give_up_after_s:
            raise GaveUp(
                f"gave up: the coordinator stayed unreachable for {now - self.since:.0f} s "
                f"(--give-up-after {self.give_up_after_s:g}): {problem}"
            )
        return False
