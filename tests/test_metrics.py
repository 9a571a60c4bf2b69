"""The coordinator's /metrics: prometheus_client's exposition, exact numbers, escaped labels,
one registry per engine, and the metric families operators and the docs rely on."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.server.metrics import CONTENT_TYPE, Metrics
from tests.cluster import Coordinator

# Every family /metrics holds, as its samples are named, and its type.
FAMILIES = {
    "bitfleet_rounds_opened_total": "counter",
    "bitfleet_rounds_closed_total": "counter",
    "bitfleet_rounds_retried_total": "counter",
    "bitfleet_jobs_completed_total": "counter",
    "bitfleet_jobs_failed_total": "counter",
    "bitfleet_uploads_accepted_total": "counter",
    "bitfleet_uploads_refused_total": "counter",
    "bitfleet_uploads_resent_total": "counter",
    "bitfleet_messages_refused_total": "counter",
    "bitfleet_http_refused_total": "counter",
    "bitfleet_declines_total": "counter",
    "bitfleet_lead_changes_total": "counter",
    "bitfleet_leading": "gauge",
    "bitfleet_bytes_in_total": "counter",
    "bitfleet_bytes_out_total": "counter",
    "bitfleet_round_duration_seconds": "summary",
    "bitfleet_agents_online": "gauge",
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, read by the official parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_large_byte_counter_is_exposed_exactly() -> None:
    metrics = Metrics()
    metrics.bytes_in.inc(5_512_345)
    text = metrics.render(lambda: 0).decode()
    # Go's (and so prometheus_client's) float format: exponent form from 1e6 on, every digit
    # kept. The hand-made format printed 5.51234e+06 and lost the last one.
    assert "\nbitfleet_bytes_in_total 5.512345e+06\n" in text
    assert _samples(text)[("bitfleet_bytes_in_total", ())] == 5_512_345
    metrics.bytes_in.inc(2**40)
    assert _samples(metrics.render(lambda: 0).decode())[("bitfleet_bytes_in_total", ())] == (
        5_512_345 + 2**40
    )


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    hostile = 'say "hi"\\n\nbitfleet_agents_online 99'
    metrics.http_refused.inc(reason=hostile)
    text = metrics.render(lambda: 2).decode()
    escaped = r'reason="say \"hi\"\\n\nbitfleet_agents_online 99"'
    assert f"\nbitfleet_http_refused_total{{{escaped}}} 1.0\n" in text
    samples = _samples(text)
    assert samples[("bitfleet_http_refused_total", (("reason", hostile),))] == 1
    assert samples[("bitfleet_agents_online", ())] == 2
    assert metrics.http_refused.value(reason=hostile) == 1


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.uploads_refused.inc(reason="busy")
    first.rounds_opened.inc(3)
    assert first.uploads_refused.value(reason="busy") == 1 and first.rounds_opened.value() == 3
    assert second.uploads_refused.value(reason="busy") == 0 and second.rounds_opened.value() == 0


def test_a_live_coordinator_serves_metrics_the_official_parser_reads(
    http_coordinator: Coordinator,
) -> None:
    stranger = ApiClient(http_coordinator.url, ca_file=http_coordinator.ca_file)
    with pytest.raises(ApiError) as refused:
        stranger.request("GET", "/api/v1/jobs")
    assert refused.value.status == 401
    reply = stranger.request("GET", "/metrics")  # no token needed
    assert reply.content_type == CONTENT_TYPE
    families = {
        family.name: family.type for family in text_string_to_metric_families(reply.body.decode())
    }
    # The parser names a counter's family without its samples' _total.
    assert families == {name.removesuffix("_total"): kind for name, kind in FAMILIES.items()}
    samples = _samples(reply.body.decode())
    assert samples[("bitfleet_http_refused_total", (("reason", "unauthorized"),))] == 1
    assert samples[("bitfleet_agents_online", ())] == 0
