"""The live OpenAPI schema against the coordinator that serves it (schemathesis).

Every operation is fuzzed twice per generated case, without credentials and with the right
ones (the admin token for the control API, an enrolled agent's for the fleet), against a
real coordinator process holding a running job. No response may be a 5xx, and every
response must be one the schema documents, in its documented content type and shape.

``BITFLEET_SCHEMA_EXAMPLES`` sets the examples per operation: small by default, for CI;
``BITFLEET_SCHEMA_EXAMPLES=500 pytest -s tests/test_api_schema.py`` for a thorough run
(``-s`` shows the request count).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema

from bitfleet.server.api.control import FRAME_MEDIA_TYPE
from tests.cluster import Coordinator

EXAMPLES = int(os.environ.get("BITFLEET_SCHEMA_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Update frames are bytes: send the generated binary strings as they are.
schemathesis.serializer.alias(FRAME_MEDIA_TYPE, "application/octet-stream")
JOB = {
    "name": "schema-probe",
    "model": {"layers": [64, 16, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": 3,
    "agents_per_round": 1,
}


@dataclass
class Live:
    """The coordinator under test, the ids it holds, and the tally of what it answered."""

    coordinator: Coordinator
    agent: str
    job_id: str
    statuses: Counter[int] = field(default_factory=Counter)

    def credentials(self, case: Case) -> dict[str, str]:
        fleet = case.path.startswith("/api/v1/fleet/")
        token = self.agent if fleet else self.coordinator.token
        return {"Authorization": f"Bearer {token}"}


# What uvicorn answers to bytes that are not HTTP (negative cases can make a header h11
# cannot parse, e.g. an empty Content-Length): no route is involved, so no schema applies.
UNPARSEABLE_HTTP = "Invalid HTTP request received."


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    coordinator = Coordinator(tmp_path_factory.mktemp("schema") / "coordinator").start()
    try:
        api = coordinator.api
        enrolled = api.request("POST", "/api/v1/agents", json_body={"agent_id": "probe"}).json()
        job_id = api.request("POST", "/api/v1/jobs", json_body=JOB).json()["id"]
        live = Live(coordinator, f"{enrolled['agent_id']}:{enrolled['secret']}", job_id)
        yield live
    finally:
        coordinator.kill()
    requests, errors = live.statuses.total(), sum(n for s, n in live.statuses.items() if s >= 500)
    print(f"\nschemathesis: {requests} requests, {errors} with a 5xx: {dict(live.statuses)}")


@pytest.fixture(scope="module")
def api_schema(live: Live) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{live.coordinator.url}/openapi.json")


def _probe(operation: APIOperation, mode: GenerationMode, live: Live) -> None:
    """Fuzz one operation (hypothesis directly: schemathesis' pytest plugin does not run
    under pytest 9)."""

    @given(case=operation.as_strategy(generation_mode=mode), real_ids=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def probe(case: Case, real_ids: bool) -> None:
        if real_ids and not case.path.endswith("/cancel"):  # past the 404s, into a live job
            ids = {"job_id": live.job_id, "round_index": 0}
            known = case.path_parameters or {}
            known.update((k, v) for k, v in ids.items() if k in known)
        for headers in ({}, live.credentials(case)):
            response = case.call(headers=headers)
            live.statuses[response.status_code] += 1
            if response.status_code == 400 and response.text == UNPARSEABLE_HTTP:
                continue  # uvicorn refused the bytes before the app saw a request
            case.validate_response(response, checks=CHECKS)

    probe()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_response_is_documented_and_none_is_a_5xx(
    api_schema: BaseSchema, live: Live, mode: GenerationMode
) -> None:
    for result in api_schema.get_all_operations():
        try:
            _probe(result.ok(), mode, live)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # no parameter or body to make invalid
