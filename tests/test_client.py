"""``from bitfleet import Client`` against a real coordinator, real agent processes, and a
hostile server that answers what no coordinator would."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitfleet import (
    AuthError,
    Client,
    ClientError,
    ConflictError,
    ConnectError,
    InvalidRequestError,
    NotFoundError,
    ResponseError,
    Round,
    ServerError,
    TLSError,
)
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.frames import decode_frame
from bitfleet.modelfile import model_from_frame
from bitfleet.server.tlsca import create_ca
from tests.agents import AgentProcess
from tests.cluster import Coordinator, free_port
from tests.manual import JOB, partition_files


def test_a_script_trains_a_job_with_real_agents(
    http_coordinator: Coordinator, tmp_path: Path
) -> None:
    """Enroll, submit, follow every round to the end, list agents, download the model."""
    data = partition_files(tmp_path / "parts", 2)
    with Client(http_coordinator.url, http_coordinator.token) as client:  # CA from the env
        enrolled = [client.enroll(f"pi-{index}") for index in range(2)]
        assert [e.agent_id for e in enrolled] == ["pi-0", "pi-1"] and all(
            e.secret for e in enrolled
        )
        generated = client.enroll().agent_id  # stays offline
        assert generated.startswith("agent-")
        job = client.submit({**JOB, "agents_per_round": 2, "rounds": 2})
        assert job.status == "pending" and job.rounds == 2 and job.metrics == []
        agents = [
            AgentProcess(
                e.agent_id, e.secret, client.url, path, tmp_path / e.agent_id, transport="http"
            ).start()
            for e, path in zip(enrolled, data, strict=True)
        ]
        try:
            rounds = list(client.follow(job.id, poll_s=0.2))
        finally:
            assert [agent.stop() for agent in agents] == [0, 0]
        assert [r.round for r in rounds] == [0, 1] and all(isinstance(r, Round) for r in rounds)
        assert all(0 < r.test_accuracy <= 1 and r.uploads == 2 for r in rounds)
        done = client.job(job.id)
        assert done.status == "completed" and done.finished and done.metrics == rounds
        assert [j.id for j in client.jobs()] == [job.id]
        listed = {a.agent_id: a for a in client.agents()}
        assert {i: a.rounds_contributed for i, a in listed.items()} == {
            "pi-0": 2,
            "pi-1": 2,
            generated: 0,
        }
        assert listed["pi-0"].transport == "http" and listed[generated].last_seen is None
        model = model_from_frame(decode_frame(client.download_model(job.id)))
        assert model.layer_sizes == [64, 64, 10]
        first = client.download_model(job.id, round=0)
        assert first != client.download_model(job.id) and decode_frame(first)


def test_every_refusal_is_a_typed_client_error(
    http_coordinator: Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = http_coordinator.url, http_coordinator.token
    monkeypatch.delenv("BITFLEET_ADMIN_TOKEN", raising=False)
    with pytest.raises(AuthError) as anonymous:
        Client(url).jobs()
    assert anonymous.value.status == 401
    with pytest.raises(AuthError) as wrong:
        Client(url, "not-the-token").jobs()
    assert wrong.value.status == 403 and "admin token" in wrong.value.detail
    client = Client(url, token)
    with pytest.raises(NotFoundError) as missing:
        client.job("job-nothere")
    assert missing.value.status == 404 and "does not exist" in str(missing.value)
    with pytest.raises(InvalidRequestError) as invalid:
        client.submit({**JOB, "min_agents": 9})
    assert invalid.value.status == 422 and "min_agents" in invalid.value.detail
    job = client.submit(JOB)
    assert client.cancel(job.id).status == "cancelled"
    with pytest.raises(ConflictError) as again:
        client.cancel(job.id)
    assert again.value.status == 409 and "already cancelled" in again.value.detail
    client.enroll("pi-taken")
    with pytest.raises(ConflictError):
        client.enroll("pi-taken")
    stranger = create_ca(tmp_path / "stranger")
    with pytest.raises(TLSError) as impostor:
        Client(url, token, ca_file=str(stranger.ca)).jobs()
    assert impostor.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(impostor.value)
    with pytest.raises(ConnectError) as away:
        Client(f"http://127.0.0.1:{free_port()}", token).jobs()
    assert away.value.status == 0 and "cannot reach the coordinator" in str(away.value)
    for error in (anonymous, wrong, missing, invalid, again, impostor, away):
        assert isinstance(error.value, ClientError) and isinstance(error.value, BitfleetError)


def test_arguments_and_defaults_are_checked_before_any_request(
    http_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITFLEET_URL", http_coordinator.url)
    monkeypatch.setenv("BITFLEET_ADMIN_TOKEN", http_coordinator.token)
    with Client() as client:  # URL, token and CA from the environment, as the CLI
        assert client.agents() == []
        with pytest.raises(BitfleetError) as path:
            client.job("../agents")
        assert not isinstance(path.value, ClientError) and "job id" in str(path.value)
    with pytest.raises(ConfigError, match="closed"):
        client.agents()
    with pytest.raises(ConfigError, match="in clear"):
        Client("http://192.0.2.1:8080", "a-token")
    with pytest.raises(ConfigError, match="not valid"):
        Client("ftp://127.0.0.1")


HOSTILE_ANSWERS: dict[str, tuple[int, bytes]] = {
    "/api/v1/jobs": (200, json.dumps([{"id": "job-1", "status": "running"}]).encode()),
    "/api/v1/jobs/job-huge": (200, b"[" + b"0," * 4096 + b"0]"),
    "/api/v1/jobs/job-html": (200, b"<html>hello</html>"),
    "/api/v1/jobs/job-deep": (200, b"[" * 100_000 + b"]" * 100_000),
    "/api/v1/jobs/job-1/model": (200, b"not a model frame"),
    "/api/v1/jobs/job-bigerror": (500, b"x" * (1 << 20)),
    "/api/v1/agents": (502, b"<html>bad gateway</html>"),
}


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Answers no coordinator gives: too large, not JSON, the wrong shape, not a model."""

    def do_GET(self) -> None:
        status, body = HOSTILE_ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads the client's errors, not the server's log."""


@contextmanager
def _serving(server: http.server.HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def _not_http() -> Iterator[str]:
    """A port that answers every request with an SSH banner, not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        listener.close()


def test_answers_that_are_no_api_answer_are_response_errors() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    with _serving(server) as url:
        client = Client(url, "a-token")
        with pytest.raises(ResponseError, match=r"the answer\[0\] has no name"):
            client.jobs()
        client.api.max_response_bytes = 4096
        with pytest.raises(ResponseError, match="larger than 4096 bytes"):
            client.job("job-huge")
        with pytest.raises(ResponseError, match="not valid JSON"):
            client.job("job-html")
        client.api.max_response_bytes = 1 << 20
        with pytest.raises(ResponseError, match="not valid JSON"):
            client.job("job-deep")
        with pytest.raises(ResponseError, match="not a model"):
            client.download_model("job-1")
        with pytest.raises(ResponseError, match="larger than 65536 bytes") as big_error:
            client.job("job-bigerror")
        assert big_error.value.status == 500
        with pytest.raises(ServerError) as gateway:
            client.agents()
        assert gateway.value.status == 502 and gateway.value.body is None
        cli = _bitfleet("jobs", "list", "--url", url, "--token", "a-token")
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.startswith("bitfleet: error: the coordinator's answer does not fit its API")
    assert "Traceback" not in cli.stderr and cli.stderr.count("\n") == 1
    with _not_http() as url:
        with pytest.raises(ResponseError, match="did not answer in HTTP") as banner:
            Client(url).agents()
        assert banner.value.status == 0
        cli = _bitfleet("agents", "list", "--url", url, "--json")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert json.loads(cli.stdout)["error"]["type"] == "ResponseError"


def _bitfleet(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real ``bitfleet`` command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bitfleet.server.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
