"""The round engine: the coordinator's own thread, the only one that opens and closes rounds.

It runs :meth:`RoundScheduler.tick <bitfleet.server.scheduler.RoundScheduler.tick>` every
``tick_s`` seconds and at once when woken (an upload or decline that may complete a round),
so votes, evaluations and publishing never run on a uvicorn worker or the paho network
thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bitfleet.server.conditions import ConditionLog


class RoundEngine:
    def __init__(self, tick_s: float, conditions: ConditionLog) -> None:
        self._tick_s = tick_s
        self._conditions = conditions
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Tick now rather than at the next interval (callable from any thread)."""
        self._wakeup.set()

    def start(self, tick: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(tick,), name="round-engine", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, tick: Callable[[], None]) -> None:
        while True:
            self._wakeup.wait(self._tick_s)
            # Cleared before the tick: a wake-up during it is kept for the next turn, and
            # what rang before is visible to this one.
            self._wakeup.clear()
            if self._stop.is_set():
                return
            try:
                tick()
                self._conditions.cleared("round engine")
            except Exception as error:  # keep ticking; logged once per distinct failure
                self._conditions.failing("round engine", f"tick failed: {error}", traceback=True)
