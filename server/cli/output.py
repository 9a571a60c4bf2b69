"""Shared output helpers for CLI subcommands: JSON for scripts, a progress bar for people."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


def print_json(payload: dict[str, Any]) -> None:
    """Print one JSON object on stdout: the machine-readable contract of ``--json``."""
    print(json.dumps(payload, sort_keys=True))


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    Kept dependency-free so the CLI runs on an agent board with numpy alone.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0

    def update(self, done: int, note: str = "") -> None:
        """Redraw at most ten times a second (and always at the end)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        fraction = min(1.0, done / self.total)
        width = 30
        filled = int(width * fraction)
        elapsed = now - self.started
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {elapsed:6.1f}s {note}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
