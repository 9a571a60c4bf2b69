"""Prometheus metrics of the coordinator, kept and exposed by prometheus_client.

Each :class:`Metrics` has a registry of its own, not the process-wide default one: several
engines in one process (tests, embedding) would otherwise clash on the metric names.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, Summary, generate_latest

# What generate_latest writes: the text format 0.0.4. Named here because newer
# prometheus_client releases point CONTENT_TYPE_LATEST at format 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A _created series per counter and summary would double the exposition with a timestamp the
# text format has no place for (Prometheus stores it as one more gauge). Process-wide, but
# the coordinator's registries are the only ones in its process.
prometheus_client.disable_created_metrics()


class Counter:
    """A counter whose call sites say ``inc(reason="busy")``: the label names are fixed when
    it is made, and every ``inc`` gives all of them."""

    def __init__(
        self, registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()
    ) -> None:
        self._counter = prometheus_client.Counter(name, doc, labels, registry=registry)
        self._registry = registry
        self._name = name

    def inc(self, amount: float = 1, **labels: str) -> None:
        (self._counter.labels(**labels) if labels else self._counter).inc(amount)

    def value(self, **labels: str) -> float:
        """The count for these label values, 0 if none was counted yet."""
        return self._registry.get_sample_value(self._name, labels) or 0.0


class Metrics:
    """Every metric the coordinator exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(self.registry, name, doc, labels)

        self.rounds_opened = counter("bitfleet_rounds_opened_total", "Rounds opened")
        self.rounds_closed = counter("bitfleet_rounds_closed_total", "Rounds closed")
        self.rounds_retried = counter("bitfleet_rounds_retried_total", "Rounds retried")
        self.jobs_completed = counter("bitfleet_jobs_completed_total", "Jobs completed")
        self.jobs_failed = counter("bitfleet_jobs_failed_total", "Jobs failed")
        self.uploads_accepted = counter(
            "bitfleet_uploads_accepted_total", "Uploads accepted, by transport", "transport"
        )
        self.uploads_refused = counter(
            "bitfleet_uploads_refused_total", "Uploads refused, by reason", "reason"
        )
        self.uploads_resent = counter(
            "bitfleet_uploads_resent_total",
            "Uploads an agent sent again after they were accepted (answered, not counted)",
            "transport",
        )
        self.messages_refused = counter(
            "bitfleet_messages_refused_total",
            "Broker messages refused before reaching the engine, by reason",
            "reason",
        )
        self.http_refused = counter(
            "bitfleet_http_refused_total", "HTTP requests answered with a 4xx, by reason", "reason"
        )
        self.lead_changes = counter(
            "bitfleet_lead_changes_total",
            "Times this worker took or lost the round engine's lease",
        )
        self.leading = Gauge(
            "bitfleet_leading", "1 while this worker leads the round engine", registry=self.registry
        )
        self.declines = counter("bitfleet_declines_total", "Tasks agents declined")
        self.bytes_in = counter("bitfleet_bytes_in_total", "Update bytes received from agents")
        self.bytes_out = counter("bitfleet_bytes_out_total", "Model bytes sent to agents")
        self.round_seconds = Summary(
            "bitfleet_round_duration_seconds", "Round duration", registry=self.registry
        )
        self.agents_online = Gauge(
            "bitfleet_agents_online", "Agents online now", registry=self.registry
        )

    def render(self, agents_online: Callable[[], int]) -> bytes:
        """The exposition (:data:`CONTENT_TYPE`), with the online count taken now."""
        self.agents_online.set(agents_online())
        return generate_latest(self.registry)
