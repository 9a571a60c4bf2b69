"""``bitfleet-agent`` processes for integration tests, with a view of their journal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bitfleet.edge_agent.journal import Journal
from bitfleet.server.cli.demo.cluster import AgentProcess as _AgentProcess


@dataclass
class AgentProcess(_AgentProcess):
    def status(self) -> dict[str, Any]:
        return Journal(self.state_dir).read_status() or {}

    def journal(self) -> list[dict[str, Any]]:
        return Journal(self.state_dir).entries()

    def wait_for_state(self, state: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status().get("state") == state:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.agent_id} never reached state {state}: {self.status()}")
