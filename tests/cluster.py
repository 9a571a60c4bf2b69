"""Real parts for integration tests: a Mosquitto broker and a coordinator (uvicorn) process.

Both listen on free loopback ports and are torn down by the fixtures in conftest.py.
"""

from __future__ import annotations

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

from server.broker import BrokerFiles, write_broker_files
from shared.httpclient import ApiClient, ApiError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
    return found


@dataclass
class Broker:
    directory: Path
    port: int = field(default_factory=free_port)
    user: str = "coordinator"
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen[bytes] | None = None
    files: BrokerFiles | None = None

    def start(self) -> Broker:
        """Start (or restart) the broker; its files are written once, as a real install's."""
        if self.files is None:
            self.files = write_broker_files(self.directory, self.port, self.user, self.password)
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.files.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "mosquitto.log", "ab"),  # noqa: SIM115
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            log = (self.directory / "mosquitto.log").read_text()
            raise RuntimeError(f"mosquitto did not start: {log}") from None
        return self

    @property
    def coordinator_url(self) -> str:
        return f"mqtt://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def agent_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Coordinator:
    data_dir: Path
    broker: Broker | None = None
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(12))
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.url, self.token)

    def start(self) -> Coordinator:
        command = [
            sys.executable,
            "-m",
            "server.cli",
            "coordinator",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--admin-token",
            self.token,
            "--presence-timeout",
            "5",
            "--log-level",
            "info",
            *self.extra_args,
        ]
        if self.broker is not None:
            assert self.broker.files is not None
            command += [
                "--mqtt-url",
                self.broker.coordinator_url,
                "--broker-passwd-file",
                str(self.broker.files.passwords),
                "--broker-pid-file",
                str(self.broker.files.pid),
            ]
        log = open(self.data_dir.parent / f"coordinator-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.process.returncode}")
            try:
                self.api.request("GET", "/healthz")
                return self
            except ApiError:
                time.sleep(0.1)
        raise TimeoutError("coordinator did not become healthy")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)

    def restart(self) -> Coordinator:
        self.kill()
        return self.start()

    def wait_for(self, job_id: str, predicate: str = "done", timeout: float = 90.0) -> dict:
        """Poll a job until it is terminal (or its round reaches an int ``predicate``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api.request("GET", f"/api/v1/jobs/{job_id}").json()
            if predicate == "done" and job["status"] in ("completed", "failed", "cancelled"):
                return job
            if predicate != "done" and job["round"] >= int(predicate):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not reach {predicate}: {job}")
