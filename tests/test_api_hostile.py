"""Hostile and clumsy requests get a typed 4xx that says what to change: never a 5xx, and
never more memory than the route's body limit.

The body-size attack runs against a real coordinator process (its peak RSS is what counts);
the rest runs in-process on the real handlers over a real SQLite store.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bitfleet.algorithms.bitflip import bitflip_config
from bitfleet.algorithms.forward import forward_config
from bitfleet.errors import ConfigError, DataError, ModelFileError
from bitfleet.fixedpoint import INPUT_EXP, FixedLayer, FixedMLP
from bitfleet.frames import FLAG_SIGNED, KIND_UPDATE, MAGIC, SIGNATURE_BYTES
from bitfleet.jobstatus import JobConflict
from bitfleet.modelfile import fixedmlp_to_frame
from bitfleet.server.algorithms import JOB_ALGORITHMS
from bitfleet.server.api.app import DEFAULT_LIMITS, create_app
from bitfleet.server.api.limits import DEFAULT_MAX_REQUEST_BYTES, ApiLimits
from bitfleet.server.errors import NotFound
from bitfleet.server.service import Coordinator, CoordinatorSettings
from bitfleet.server.state import StoreError, open_store
from bitfleet.tls import client_context
from tests.cluster import Coordinator as CoordinatorProcess
from tests.inprocess import FakePublisher
from tests.manual import echo_update

TOKEN = "admin-token"
JOB: dict[str, Any] = {
    "name": "digits-binary",
    "algorithm": "bitflip",
    "model": {"layers": [64, 16, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": 2,
    "agents_per_round": 1,
    "min_agents": 1,
}
FORWARD_JOB: dict[str, Any] = {
    **JOB,
    "algorithm": "forward",
    "model": {"layers": [64, 16, 10], "weights": "int16"},
}
MB = 1 << 20
JSON_TYPE = {"Content-Type": "application/json"}


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _post_unread(
    port: int, path: str, size: int, chunked: bool, token: str | None = None
) -> tuple[bytes, int]:
    """POST ``size`` bytes without credentials from a generator, as a hostile client would:
    every byte is sent (unless the server hangs up), then the answer is read. Returns the
    answer's head and how many bytes had gone out when it arrived."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    piece = b"x" * MB
    sent, answered_at = 0, -1
    raw = socket.create_connection(("127.0.0.1", port))
    with client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:  # HTTPS
        sock.sendall(f"{head}{framing}\r\n\r\n".encode())
        try:
            while sent < size:
                if answered_at < 0 and select.select([sock], [], [], 0)[0]:
                    answered_at = sent
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may hang up on a body it refused: still read its answer
            pass
        sock.settimeout(30)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return reply.split(b"\r\n\r\n")[0], sent if answered_at < 0 else answered_at


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("stranger", [True, False], ids=["stranger", "admin"])
def test_a_300_mb_body_is_refused_before_it_is_read(
    http_coordinator: CoordinatorProcess, chunked: bool, stranger: bool
) -> None:
    """A stranger gets 401 before one byte is read, the admin 413 at the limit."""
    assert http_coordinator.process is not None
    pid = http_coordinator.process.pid
    before = _peak_rss(pid)
    token = None if stranger else http_coordinator.token
    head, answered_at = _post_unread(
        http_coordinator.port, "/api/v1/jobs", 300 * MB, chunked, token
    )
    after = _peak_rss(pid)
    print(
        f"\n300 MB {'chunked' if chunked else 'Content-Length'} body "
        f"({'stranger' if stranger else 'admin'}): peak RSS "
        f"{before / MB:.1f} -> {after / MB:.1f} MiB (+{(after - before) / MB:.1f}), "
        f"answered after {answered_at / MB:.0f} MiB sent"
    )
    assert head.startswith(b"HTTP/1.1 401" if stranger else b"HTTP/1.1 413"), head
    assert after - before <= 50 * MB
    metrics = http_coordinator.api.request("GET", "/metrics").body.decode()
    reason = "unauthorized" if stranger else "body_too_large"
    assert f'bitfleet_http_refused_total{{reason="{reason}"}} 1' in metrics


def _coordinator(path: Path, **settings: Any) -> Coordinator:
    return Coordinator(
        open_store(path), CoordinatorSettings(presence_timeout_s=60, **settings), time.time
    )


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    built = _coordinator(tmp_path / "state")
    yield built
    built.store.close()


@contextmanager
def _client(coordinator: Coordinator, limits: ApiLimits = DEFAULT_LIMITS) -> Iterator[TestClient]:
    """The app over ``coordinator``, its engine thread not started: tests tick it."""
    app = create_app(coordinator, TOKEN, limits, background=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    with _client(coordinator) as built:
        yield built


def _chunks(size: int) -> Iterator[bytes]:
    """A body without Content-Length: the server sees it only as it streams in."""
    for _ in range(size // 1000):
        yield b"x" * 1000


def test_each_route_has_its_body_limit_declared_or_streamed(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path / "state", max_frame_bytes=8000)
    with _client(coordinator, ApiLimits(max_request_bytes=4000)) as client:
        _check_body_limits(client)
    coordinator.store.close()


def _check_body_limits(client: TestClient) -> None:
    agent_id, secret = _enroll(client, "pi-1")
    upload = "/api/v1/fleet/jobs/job-x/rounds/0/updates"
    for body in (b"x" * 5000, _chunks(5000)):
        refused = client.post("/api/v1/jobs", content=body)
        assert refused.status_code == 413 and "4000 bytes" in refused.json()["detail"]
    agent = {"Authorization": f"Bearer {agent_id}:{secret}"}
    for body in (b"x" * 5000, _chunks(5000)):  # within the upload limit: read, then refused
        assert client.post(upload, content=body, headers=agent).json()["accepted"] is False
    for body in (b"x" * 9000, _chunks(9000)):
        refused = client.post(upload, content=body, headers=agent)
        assert refused.status_code == 413 and "--max-frame-bytes" in refused.json()["detail"]
    metrics = client.get("/metrics").text
    assert 'bitfleet_http_refused_total{reason="body_too_large"} 4' in metrics


def test_the_largest_allowed_model_fits_the_default_request_limit(
    coordinator: Coordinator, client: TestClient
) -> None:
    """A forward job carries its int16 model as base64 JSON: at the weight limit it must
    still be under the body limit, or such a job could never be submitted."""
    hidden = coordinator.settings.max_model_weights // (64 + 10)
    model = FixedMLP(
        [
            FixedLayer(
                np.zeros((64, hidden), np.int16), np.zeros(hidden, np.int32), INPUT_EXP, 8, 8
            ),
            FixedLayer(np.zeros((hidden, 10), np.int16), np.zeros(10, np.int32), 8, 8, 16),
        ],
        np.zeros(64, np.uint8),
    )
    spec = {
        **FORWARD_JOB,
        "model": {"layers": [64, hidden, 10], "weights": "int16"},
        "initial_model": base64.b64encode(fixedmlp_to_frame(model)).decode(),
    }
    body = json.dumps(spec).encode()
    assert len(body) <= DEFAULT_MAX_REQUEST_BYTES
    created = client.post("/api/v1/jobs", content=body, headers=JSON_TYPE)
    assert created.status_code == 201, created.json()


@pytest.mark.parametrize(
    "job, hyperparameters, message",
    [
        (JOB, {"state_bits": "x"}, "state_bits must be a whole number, got 'x'"),
        (JOB, {"lr": 1e308}, "lr must be > 0 and at most 256"),
        (JOB, {"lr": float("nan")}, "lr must be > 0"),
        (JOB, {"batch_size": 2.5}, "batch_size must be a whole number, got 2.5"),
        (JOB, {"batch_size": True}, "batch_size must be a whole number, got True"),
        (JOB, {"window_divisor": 0}, "window_divisor must be at least 1"),
        (JOB, {"lr_decay": 2}, r"lr_decay must be in (0, 1]"),
        (JOB, {"momentum": 0.9}, "unknown bit-flip hyperparameters ['momentum']"),
        (FORWARD_JOB, {"perturbations": 2.5}, "perturbations must be a whole number"),
        (FORWARD_JOB, {"eps": 10**400}, "is out of range: use 1 to 32767"),
        (FORWARD_JOB, {"lr": 1e308}, "lr must be > 0 and at most 65536"),
        (FORWARD_JOB, {"density": "x"}, "density must be a number, got 'x'"),
        (FORWARD_JOB, {"margin": -1}, r"margin must be in [0, 1000]"),
        (FORWARD_JOB, {"train_bias": 1}, "train_bias must be true or false, got 1"),
        (FORWARD_JOB, {"schedule": ["cosine"]}, "unknown schedule"),
    ],
)
def test_bad_hyperparameters_are_refused_at_submission_with_the_fix(
    client: TestClient, job: dict[str, Any], hyperparameters: dict[str, Any], message: str
) -> None:
    body = json.dumps({**job, "hyperparameters": hyperparameters})  # NaN as JSON's NaN
    refused = client.post("/api/v1/jobs", content=body, headers=JSON_TYPE)
    assert refused.status_code == 422
    assert message in refused.json()["detail"], refused.json()


def test_agents_refuse_the_same_hyperparameters_with_the_same_check() -> None:
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        bitflip_config({"batch_size": 2.5}, "binary", 1, 0)
    with pytest.raises(ConfigError, match="perturbations must be at least 1"):
        forward_config({"perturbations": 0}, 1, 0)
    assert bitflip_config({"state_bits": 8, "lr": 4}, "ternary", 2, 1).state_bits == 8


def test_a_model_over_the_weight_limit_is_refused_before_it_is_built(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object) -> bytes:
        raise AssertionError("the initial model was built")

    monkeypatch.setattr(JOB_ALGORITHMS["bitflip"], "initial_model", never)
    huge = {**JOB, "model": {"layers": [784, 65536, 65536, 10], "weights": "binary"}}
    refused = client.post("/api/v1/jobs", json=huge)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "4347002880 weights" in detail and "limit of 4000000" in detail
    assert "--max-model-weights" in detail


@pytest.mark.parametrize(
    "error, status",
    [
        (NotFound("no such job"), 404),
        (JobConflict("already cancelled"), 409),
        (StoreError("the disk is full"), 503),
        (ModelFileError("the model frame is corrupted"), 422),
        (DataError("the data set is missing"), 422),
        (ConfigError("the layers do not fit"), 422),
    ],
)
def test_every_typed_error_is_a_typed_response(
    coordinator: Coordinator,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
) -> None:
    def fail(*_: object) -> None:
        raise error

    monkeypatch.setattr(coordinator.scheduler, "cancel", fail)
    answer = client.post("/api/v1/jobs/job-x/cancel")
    assert (answer.status_code, answer.json()) == (status, {"detail": str(error)})


def test_undecodable_json_is_a_400_that_says_what_to_send(client: TestClient) -> None:
    for body in (b"[" * 100_000, b'{"name": "\xff"}'):
        refused = client.post("/api/v1/jobs", content=body, headers=JSON_TYPE)
        assert refused.status_code == 400 and "send UTF-8 JSON" in refused.json()["detail"]


def _enroll(client: TestClient, agent_id: str) -> tuple[str, str]:
    enrolled = client.post("/api/v1/agents", json={"agent_id": agent_id}).json()
    return enrolled["agent_id"], enrolled["secret"]


class Agent:
    """An enrolled agent speaking the fleet API by hand."""

    def __init__(self, client: TestClient, agent_id: str) -> None:
        self.client = client
        self.agent_id, self.secret = _enroll(client, agent_id)
        self.headers = {"Authorization": f"Bearer {self.agent_id}:{self.secret}"}

    def task(self) -> dict[str, Any] | None:
        answer = self.client.get("/api/v1/fleet/task", headers=self.headers)
        return answer.json() if answer.status_code == 200 else None

    def model(self, job_id: str, round_index: int) -> Any:
        path = f"/api/v1/fleet/jobs/{job_id}/rounds/{round_index}/model"
        return self.client.get(path, headers=self.headers)

    def upload(self, job_id: str, frame: bytes) -> Any:
        path = f"/api/v1/fleet/jobs/{job_id}/rounds/0/updates"
        return self.client.post(path, content=frame, headers=self.headers)


def _open_round(
    coordinator: Coordinator, client: TestClient, count: int
) -> tuple[str, list[Agent]]:
    """A job's round 0 opened with one of ``count`` online agents selected (first in the list)."""
    agents = [Agent(client, f"pi-{index}") for index in range(count)]
    for agent in agents:
        assert agent.task() is None  # a heartbeat: online over HTTP
    job_id = client.post("/api/v1/jobs", json=JOB).json()["id"]
    coordinator.scheduler.tick()
    agents.sort(key=lambda agent: agent.task() is None)
    return job_id, agents


def test_an_agent_downloads_only_the_models_of_rounds_it_was_selected_for(
    coordinator: Coordinator, client: TestClient
) -> None:
    job_id, (selected, other) = _open_round(coordinator, client, 2)
    assert selected.model(job_id, 0).status_code == 200
    refused = other.model(job_id, 0)
    assert refused.status_code == 404 and "not selected" in refused.json()["detail"]
    assert selected.model(job_id, 1).status_code == 404  # a round that is not open
    assert selected.model("job-nothere", 0).status_code == 404


def _frame_with_header(header: bytes) -> bytes:
    """A signed update frame whose header is ``header`` verbatim (signature unchecked:
    the header is parsed first, to learn the sender)."""
    prefix = struct.pack("<4sBBHI", MAGIC, 1, KIND_UPDATE, FLAG_SIGNED, len(header))
    body = prefix + header + bytes(SIGNATURE_BYTES)
    return body + struct.pack("<I", zlib.crc32(body))


def test_hostile_uploads_are_refused_with_a_receipt(
    coordinator: Coordinator, client: TestClient
) -> None:
    job_id, (agent,) = _open_round(coordinator, client, 1)
    model = agent.model(job_id, 0).content
    bomb = b'{"meta": ' + b"[" * 100_000 + b"]" * 100_000 + b', "tensors": []}'
    huge_number = b'{"meta": {"samples": ' + b"9" * 5000 + b'}, "tensors": []}'
    for frame in (
        echo_update(model, job_id, 0, agent.agent_id, agent.secret, False, 2**63),
        _frame_with_header(bomb),
        _frame_with_header(huge_number),
    ):
        refused = agent.upload(job_id, frame)
        assert 400 <= refused.status_code < 500 and refused.json()["accepted"] is False
    accepted = agent.upload(
        job_id, echo_update(model, job_id, 0, agent.agent_id, agent.secret, False, 10)
    )
    assert accepted.status_code == 200 and accepted.json()["accepted"] is True


class Link(FakePublisher):
    """A pushing transport whose link is up or down as the test says."""

    up = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_up(self) -> bool:
        return self.up


def test_healthz_reports_each_link(coordinator: Coordinator, client: TestClient) -> None:
    healthy = client.get("/healthz")
    assert healthy.status_code == 200
    assert healthy.json() == {"status": "ok", "version": healthy.json()["version"], "links": {}}
    broker = Link()
    coordinator.add_transport("mqtt", broker)
    connected = client.get("/healthz")
    assert connected.status_code == 200 and connected.json()["links"] == {"mqtt": "connected"}
    broker.up = False
    degraded = client.get("/healthz")
    assert degraded.status_code == 503
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["links"] == {"mqtt": "disconnected"}


def test_refusals_are_counted_by_reason(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    assert anonymous.get("/api/v1/jobs").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert anonymous.get("/api/v1/jobs", headers=wrong).status_code == 403
    assert client.get("/api/v1/jobs/job-nothere").status_code == 404
    assert client.post("/api/v1/jobs", json={**JOB, "rounds": 0}).status_code == 422
    too_large = b"x" * (DEFAULT_MAX_REQUEST_BYTES + 1)
    assert client.post("/api/v1/jobs", content=too_large).status_code == 413
    metrics = client.get("/metrics").text
    for reason in ("unauthorized", "forbidden", "not_found", "invalid", "body_too_large"):
        assert f'bitfleet_http_refused_total{{reason="{reason}"}} 1' in metrics, reason
