"""One log line when a recurring failure starts, one when it clears — not one per attempt.

A full disk or a broken job fails on every tick and every upload; logging each would bury
the one line an operator needs (the probe saw 238 tracebacks in 75 s of a full disk).
"""

from __future__ import annotations

import logging
import threading


class ConditionLog:
    """Tracks named failure conditions and logs only their transitions."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, str] = {}
        self._lock = threading.Lock()

    def failing(self, key: str, message: str, *, traceback: bool = False) -> None:
        """Log ``message`` if ``key`` was not failing already (or failed differently)."""
        with self._lock:
            if self._active.get(key) == message:
                return
            self._active[key] = message
        self._log.error("%s: %s", key, message, exc_info=traceback)

    def cleared(self, key: str) -> None:
        """Log that ``key`` works again, if it was failing."""
        with self._lock:
            if self._active.pop(key, None) is None:
                return
        self._log.info("%s: recovered", key)

    def active(self) -> dict[str, str]:
        """The conditions failing now, by key."""
        with self._lock:
            return dict(self._active)
