"""``from bitfleet import Client``: the coordinator's REST API for notebooks and scripts.

The ``bitfleet jobs`` and ``bitfleet agents`` commands are built on it. Standard library
only (over :class:`bitfleet.httpclient.ApiClient`), so it runs on an agent-only install.
Answers come back as dataclasses, checked field by field; every failure of the coordinator
or the link is a :class:`ClientError` subclass; arguments the client checks itself (the
URL, the ids in a path) raise another :class:`bitfleet.errors.BitfleetError`, before any
request::

    with Client("https://coordinator:8080", token) as client:
        job = client.submit(spec)
        for closed in client.follow(job.id):
            print(closed.round, closed.test_accuracy)
        model = client.download_model(job.id)
        open("rounds.csv", "w").write(client.metrics_csv(job.id))  # for your own plots
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import os
import time
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bitfleet.errors import ConfigError
from bitfleet.frames import FrameError, decode_frame
from bitfleet.httpclient import (
    ApiClient,
    AuthError,
    ClientError,
    ConflictError,
    ConnectError,
    InvalidRequestError,
    NotFoundError,
    Response,
    ResponseError,
    ServerError,
    StatusError,
    TLSError,
)
from bitfleet.jobstatus import TERMINAL
from bitfleet.protocol import check_id
from bitfleet.tls import ca_file_from_env, require_secure

__all__ = [
    "Agent",
    "AuthError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectError",
    "Decline",
    "Enrollment",
    "InvalidRequestError",
    "Job",
    "NotFoundError",
    "ResponseError",
    "Round",
    "ServerError",
    "StatusError",
    "TLSError",
    "rounds_csv",
]

URL_ENV = "BITFLEET_URL"
TOKEN_ENV = "BITFLEET_ADMIN_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Round:
    """One closed round: the new global model's test metrics and the round's traffic."""

    round: int
    test_accuracy: float
    loss: float
    uploads: int
    bytes_up: int
    bytes_down: int
    seconds: float


# The CSV columns of per-round metrics: Round's fields, in order.
ROUND_COLUMNS = tuple(field.name for field in dataclasses.fields(Round))


def rounds_csv(rounds: Iterable[Round], header: bool = True) -> str:
    """Per-round metrics as CSV (RFC 4180, ``\n`` line ends): a header row of
    :data:`ROUND_COLUMNS` (unless ``header`` is false), then one row per round."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(ROUND_COLUMNS)
    for closed in rounds:
        writer.writerow(getattr(closed, column) for column in ROUND_COLUMNS)
    return out.getvalue()


@dataclass(frozen=True)
class Decline:
    """An agent that could not take the job (e.g. too little memory), and why."""

    agent_id: str
    round: int
    reason: str


@dataclass(frozen=True)
class Job:
    """A job as ``GET /api/v1/jobs/{id}`` shows it; ``reason`` says why it failed, was
    cancelled, or waits (``waiting for 3 agents, 1 online``)."""

    id: str
    name: str
    algorithm: str
    status: str
    round: int
    rounds: int
    reason: str | None
    round_uploads: int
    round_agents: int
    created_at: float
    updated_at: float
    metrics: list[Round]
    declines: list[Decline]
    spec: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Agent:
    agent_id: str
    online: bool
    revoked: bool
    last_seen: float | None
    transport: str | None
    rounds_contributed: int
    capabilities: dict[str, Any]


@dataclass(frozen=True)
class Enrollment:
    """A new agent's id and secret: the secret is shown this once."""

    agent_id: str
    secret: str


T = TypeVar("T")


class Client:
    """A client of one coordinator; ``url``, ``token`` and ``ca_file`` default to
    ``$BITFLEET_URL`` (else http://127.0.0.1:8080), ``$BITFLEET_ADMIN_TOKEN`` and
    ``$BITFLEET_CA_FILE`` (else the system's CAs). The admin token crosses only TLS or
    loopback, unless ``insecure``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        insecure: bool = False,
    ) -> None:
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.api = ApiClient(
            url,
            token or os.environ.get(TOKEN_ENV),
            timeout=timeout,
            ca_file=ca_file_from_env(ca_file),
        )
        parts = urlsplit(url)
        require_secure(parts.hostname or "", parts.scheme == "https", insecure, "the admin token")
        self._closed = False

    @property
    def url(self) -> str:
        return self.api.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """No connection outlives a request; a closed client refuses further ones."""
        self._closed = True

    # jobs
    def submit(self, spec: Mapping[str, Any], initial_model: bytes | None = None) -> Job:
        """Submit a job (the JSON of ``bitfleet jobs submit``); ``initial_model`` is a .bfm
        frame to start from (forward jobs)."""
        body = dict(spec)
        if initial_model is not None:
            body["initial_model"] = base64.b64encode(initial_model).decode()
        created = self._request("POST", "/api/v1/jobs", json_body=body).json()
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise ResponseError(201, "the coordinator created a job but did not say its id")
        return self.job(created["id"])

    def jobs(self) -> list[Job]:
        return self._call(list[Job], "GET", "/api/v1/jobs")

    def job(self, job_id: str) -> Job:
        return self._call(Job, "GET", f"/api/v1/jobs/{check_id(job_id, 'job id')}")

    def cancel(self, job_id: str) -> Job:
        return self._call(Job, "POST", f"/api/v1/jobs/{check_id(job_id, 'job id')}/cancel")

    def download_model(self, job_id: str, round: int | None = None) -> bytes:
        """The job's current global model (or the one that opened ``round``) as .bfm bytes,
        checked to decode as a frame."""
        query = f"?round={int(round)}" if round is not None else ""
        path = f"/api/v1/jobs/{check_id(job_id, 'job id')}/model{query}"
        frame = self._request("GET", path).body
        try:
            decode_frame(frame, max_bytes=self.api.max_response_bytes)
        except FrameError as error:
            raise ResponseError(200, f"the coordinator's model is not a model: {error}") from None
        return frame

    def metrics_csv(self, job_id: str) -> str:
        """The job's closed rounds as CSV (:func:`rounds_csv`), for spreadsheets and
        plotting tools."""
        return rounds_csv(self.job(job_id).metrics)

    def watch(self, job_id: str, poll_s: float = 1.0) -> Iterator[Job]:
        """The job now, then each time it changes (a round closes, its status or reason
        changes), polling every ``poll_s`` seconds; the last one yielded has finished."""
        seen: tuple[object, ...] | None = None
        while True:
            job = self.job(job_id)
            state = (job.status, len(job.metrics), job.reason)
            if state != seen:
                seen = state
                yield job
            if job.finished:
                return
            time.sleep(poll_s)

    def follow(self, job_id: str, poll_s: float = 1.0) -> Iterator[Round]:
        """Each round of the job as it closes (those closed already first), until the job
        ends; ``job()`` then says how it ended."""
        shown = 0
        for job in self.watch(job_id, poll_s):
            yield from job.metrics[shown:]
            shown = len(job.metrics)

    # agents
    def enroll(self, agent_id: str | None = None) -> Enrollment:
        """Enroll an agent (its id generated unless given); the secret is returned once."""
        body = {"agent_id": agent_id} if agent_id is not None else {}
        return self._call(Enrollment, "POST", "/api/v1/agents", body)

    def agents(self) -> list[Agent]:
        return self._call(list[Agent], "GET", "/api/v1/agents")

    def revoke(self, agent_id: str) -> Agent:
        path = f"/api/v1/agents/{check_id(agent_id, 'agent id')}/revoke"
        return self._call(Agent, "POST", path)

    def _call(self, kind: type[T], method: str, path: str, body: Any = None) -> T:
        """The answer, checked to be a ``kind`` as the API documents it."""
        response = self._request(method, path, body)
        try:
            return typing.cast(T, _decode(kind, response.json(), "the answer"))
        except _Mismatch as error:
            raise ResponseError(
                response.status, f"the coordinator's answer does not fit its API: {error}"
            ) from None

    def _request(self, method: str, path: str, json_body: Any = None) -> Response:
        if self._closed:
            raise ConfigError("this bitfleet Client is closed; make a new one")
        return self.api.request(method, path, json_body=json_body)


class _Mismatch(ValueError):
    """A decoded JSON value that is not what the API documents; the message says where."""


def _decode(kind: Any, value: Any, where: str) -> Any:
    """``value`` (decoded JSON) as ``kind``: a dataclass, list, dict, optional or scalar.
    Fields the client does not know are ignored, so a newer coordinator still answers."""
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where} is not an object")
        hints = typing.get_type_hints(kind)
        names = [f.name for f in dataclasses.fields(kind)]
        missing = [name for name in names if name not in value]
        if missing:
            raise _Mismatch(f"{where} has no {', '.join(missing)}")
        return kind(**{n: _decode(hints[n], value[n], f"{where}.{n}") for n in names})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list and isinstance(value, list):
        return [_decode(args[0], item, f"{where}[{index}]") for index, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return value
    if origin is types.UnionType:  # ``X | None``
        return None if value is None else _decode(args[0], value, where)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, bool) and type(value) is kind:
        return value
    raise _Mismatch(f"{where} is not {getattr(kind, '__name__', kind)}: {str(value)[:60]!r}")
