"""Prometheus metrics of the coordinator, rendered in the text exposition format.

A few counters and one summary are all the coordinator needs; keeping them here avoids a
client library and keeps label handling explicit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Counter:
    name: str
    help: str
    _values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self._values.items()) or [((), 0.0)]:
            lines.append(f"{self.name}{_labels(key)} {value:g}")
        return lines


@dataclass
class Summary:
    name: str
    help: str
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} summary",
            f"{self.name}_sum {self.total:g}",
            f"{self.name}_count {self.count}",
        ]


def _labels(key: tuple[tuple[str, str], ...]) -> str:
    if not key:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in key)
    return "{" + inner + "}"


class Metrics:
    """Every metric the coordinator exports."""

    def __init__(self) -> None:
        self.rounds_opened = Counter("bitfleet_rounds_opened_total", "Rounds opened")
        self.rounds_closed = Counter("bitfleet_rounds_closed_total", "Rounds closed")
        self.rounds_retried = Counter("bitfleet_rounds_retried_total", "Rounds retried")
        self.jobs_completed = Counter("bitfleet_jobs_completed_total", "Jobs completed")
        self.jobs_failed = Counter("bitfleet_jobs_failed_total", "Jobs failed")
        self.uploads_accepted = Counter(
            "bitfleet_uploads_accepted_total", "Uploads accepted, by transport"
        )
        self.uploads_refused = Counter(
            "bitfleet_uploads_refused_total", "Uploads refused, by reason"
        )
        self.uploads_resent = Counter(
            "bitfleet_uploads_resent_total",
            "Uploads an agent sent again after they were accepted (answered, not counted)",
        )
        self.messages_refused = Counter(
            "bitfleet_messages_refused_total",
            "Broker messages refused before reaching the engine, by reason",
        )
        self.http_refused = Counter(
            "bitfleet_http_refused_total", "HTTP requests answered with a 4xx, by reason"
        )
        self.declines = Counter("bitfleet_declines_total", "Tasks agents declined")
        self.bytes_in = Counter("bitfleet_bytes_in_total", "Update bytes received from agents")
        self.bytes_out = Counter("bitfleet_bytes_out_total", "Model bytes sent to agents")
        self.round_seconds = Summary("bitfleet_round_duration_seconds", "Round duration")

    def render(self, agents_online: Callable[[], int]) -> str:
        lines: list[str] = []
        for metric in vars(self).values():
            lines.extend(metric.render())
        lines += [
            "# HELP bitfleet_agents_online Agents online now",
            "# TYPE bitfleet_agents_online gauge",
            f"bitfleet_agents_online {agents_online()}",
        ]
        return "\n".join(lines) + "\n"
