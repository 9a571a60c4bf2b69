"""A cluster on one machine: Mosquitto, the coordinator and agents as real processes.

With a throwaway CA (``bitfleet.server.tlsca``) every link is TLS, as in a deployment: the broker
listens with mqtts://, the coordinator serves HTTPS, and agents verify both against the CA.

Used by ``bitfleet demo`` and by the integration tests, so both run exactly the parts a
deployment runs. Every process listens on loopback only; children are asked to die with
their parent (Linux PR_SET_PDEATHSIG), so even a killed demo leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.jobstatus import TERMINAL
from bitfleet.server.broker import BrokerFiles, BrokerTls, write_broker_files

if TYPE_CHECKING:
    from bitfleet.server.tlsca import ThrowawayCa


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent process dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only us), logging to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env={**os.environ, **(env or {})},
        )


# Agents sharing one machine each get one BLAS thread: several multi-threaded agents on
# two cores spend their time contending (measured 10x slower rounds).
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int | None:
    """Signal a child and wait; SIGKILL if it does not stop in time."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ConfigError("mosquitto is not installed: sudo apt-get install mosquitto")


@dataclass
class Broker:
    directory: Path
    port: int = field(default_factory=free_port)
    user: str = "coordinator"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    # Broker users of further coordinator workers, each with a password of its own.
    worker_users: list[str] = field(default_factory=list)
    worker_passwords: dict[str, str] = field(default_factory=dict)
    tls: ThrowawayCa | None = None
    mutual_tls: bool = False  # agents must present a client certificate of ``tls``
    process: subprocess.Popen[bytes] | None = None
    files: BrokerFiles | None = None

    def start(self) -> Broker:
        """Start (or restart) the broker; its files are written once, as a real install's."""
        if self.files is None:
            listener = None
            if self.tls is not None:
                client_ca = self.tls.ca if self.mutual_tls else None
                listener = BrokerTls(self.tls.server.cert, self.tls.server.key, client_ca)
            for user in self.worker_users:
                self.worker_passwords.setdefault(user, secrets.token_hex(12))
            logins = {self.user: self.password, **self.worker_passwords}
            self.files = write_broker_files(self.directory, self.port, logins, tls=listener)
        log = self.directory / "mosquitto.log"
        self.process = spawn([mosquitto_binary(), "-c", str(self.files.config)], log)
        if not wait_for_port(self.port):
            stop_process(self.process)
            raise BitfleetError(f"mosquitto did not start: {log.read_text()[-2000:]}")
        return self

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def coordinator_url(self) -> str:
        return self.login_url(self.user)

    def login_url(self, user: str) -> str:
        """The URL a coordinator worker logs in with as ``user``."""
        password = self.password if user == self.user else self.worker_passwords[user]
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}"

    def logins_file(self, user: str, path: Path) -> Path:
        """What --broker-worker-logins of the worker ``user`` holds: the others' logins."""
        logins = {self.user: self.password, **self.worker_passwords}
        entries = [{"user": u, "password": p} for u, p in logins.items() if u != user]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))
        path.chmod(0o600)
        return path

    @property
    def agent_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Coordinator:
    data_dir: Path
    broker: Broker | None = None
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    extra_args: list[str] = field(default_factory=list)
    tls: ThrowawayCa | None = None
    process: subprocess.Popen[bytes] | None = None
    # The broker user this coordinator logs in as (a worker's own; default the broker's).
    broker_user: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """The CA clients verify this coordinator (and its broker) against."""
        return str(self.tls.ca) if self.tls else None

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.url, self.token, ca_file=self.ca_file)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"coordinator-{self.port}.log"

    def start(self) -> Coordinator:
        command = [
            sys.executable,
            "-m",
            "bitfleet.server.cli",
            "coordinator",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--admin-token",
            self.token,
            "--presence-timeout",
            "5",
            *self.extra_args,
        ]
        if self.tls is not None:
            command += ["--tls-cert", str(self.tls.server.cert), "--tls-key"]
            command += [str(self.tls.server.key), "--ca-file", str(self.tls.ca)]
        if self.broker is not None:
            command += self._broker_options(self.broker)
        self.process = spawn(command, self.log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BitfleetError(
                    f"the coordinator exited with {self.process.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            try:
                # 503 (degraded) is up too: the broker may start after us, from our config.
                self.api.request("GET", "/healthz", ok=(200, 503))
                return self
            except ApiError:
                time.sleep(0.1)
        raise BitfleetError("the coordinator did not become healthy within 60 s")

    def _broker_options(self, broker: Broker) -> list[str]:
        """Its broker login (and client certificate), and the broker files it keeps."""
        user = self.broker_user or broker.user
        options = []
        if self.tls is not None and broker.mutual_tls:
            pair = self.tls.client(user)
            options += ["--mqtt-client-cert", str(pair.cert), "--mqtt-client-key", str(pair.key)]
        if broker.files is not None:
            options += ["--mqtt-url", broker.login_url(user)]
            options += ["--broker-passwd-file", str(broker.files.passwords)]
            options += ["--broker-pid-file", str(broker.files.pid)]
            if broker.worker_users:
                logins = broker.logins_file(user, self.data_dir.parent / f"logins-{user}.json")
                options += ["--broker-worker-logins", str(logins)]
        return options

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.process, sig)

    def stop(self) -> None:
        stop_process(self.process)

    def start_agent(
        self,
        agent_id: str,
        data: Path,
        state_dir: Path,
        mqtt_url: str | None = None,
        transport: str = "auto",
        extra: list[str] | None = None,
        kind: type[AgentProcess] | None = None,
    ) -> AgentProcess:
        """Enroll ``agent_id`` through the API and start its ``bitfleet-agent run`` process."""
        enrolled = self.api.request("POST", "/api/v1/agents", json_body={"agent_id": agent_id})
        secret = enrolled.json()["secret"]
        process = (kind or AgentProcess)(
            agent_id,
            secret,
            self.url,
            data,
            state_dir,
            mqtt_url,
            transport,
            [*(["--ca-file", self.ca_file] if self.ca_file else []), *(extra or [])],
        )
        return process.start()

    def wait_online(
        self, count: int, timeout: float = 120.0, agents: list[AgentProcess] | None = None
    ) -> None:
        """Wait until ``count`` agents report online; fail at once if one of ``agents`` died."""
        deadline = time.monotonic() + timeout
        while True:
            for agent in agents or []:
                if agent.process is not None and agent.process.poll() is not None:
                    raise BitfleetError(
                        f"agent {agent.agent_id} exited with {agent.process.returncode}: "
                        f"{agent.log()[-2000:]}"
                    )
            listed = self.api.request("GET", "/api/v1/agents").json()
            online = sum(entry["online"] for entry in listed)
            if online >= count:
                return
            if time.monotonic() > deadline:
                raise BitfleetError(f"only {online} of {count} agents came online; see their logs")
            time.sleep(0.1)

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.api.request("GET", f"/api/v1/jobs/{job_id}").json()
        return job

    def wait_for(
        self, job_id: str, round_index: int | None = None, timeout: float = 90.0
    ) -> dict[str, Any]:
        """Poll a job until it is terminal, or (given ``round_index``) reaches that round."""
        deadline = time.monotonic() + timeout
        goal = "the end" if round_index is None else f"round {round_index}"
        while True:
            job = self.job(job_id)
            if round_index is None and job["status"] in TERMINAL:
                return job
            if round_index is not None and job["round"] >= round_index:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not reach {goal}: {job}")
            time.sleep(0.2)


@dataclass
class AgentProcess:
    """A ``bitfleet-agent run`` process."""

    agent_id: str
    secret: str
    coordinator_url: str
    data: Path
    state_dir: Path
    mqtt_url: str | None = None
    transport: str = "auto"
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.agent_id}.log"

    def start(self) -> AgentProcess:
        command = [
            sys.executable,
            "-m",
            "bitfleet.edge_agent",
            "run",
            "--data",
            str(self.data),
            "--coordinator",
            self.coordinator_url,
            "--agent-id",
            self.agent_id,
            f"--secret={self.secret}",  # one token: a secret may start with "-"
            "--state-dir",
            str(self.state_dir),
            "--transport",
            self.transport,
            *self.extra,
        ]
        if self.mqtt_url:
            command += ["--mqtt-url", self.mqtt_url]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(command, self.log_path, ONE_THREAD)
        return self

    def signal(self, sig: int) -> int | None:
        return stop_process(self.process, sig)

    def stop(self) -> int | None:
        return stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
