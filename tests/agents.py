"""Real ``bitfleet-agent`` processes for integration tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AgentProcess:
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
            "edge_agent",
            "run",
            "--data",
            str(self.data),
            "--coordinator",
            self.coordinator_url,
            "--agent-id",
            self.agent_id,
            "--secret",
            self.secret,
            "--state-dir",
            str(self.state_dir),
            "--transport",
            self.transport,
            *self.extra,
        ]
        if self.mqtt_url:
            command += ["--mqtt-url", self.mqtt_url]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        return self

    def signal(self, sig: int) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def stop(self) -> int | None:
        return self.signal(signal.SIGTERM)

    def status(self) -> dict:
        path = self.state_dir / "status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def journal(self) -> list[dict]:
        path = self.state_dir / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for_state(self, state: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status().get("state") == state:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.agent_id} never reached state {state}: {self.status()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
