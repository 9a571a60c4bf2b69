"""How an agent's bytes travel: MQTT (preferred) or HTTP (fallback), behind one interface."""

from __future__ import annotations

from typing import Protocol

from bitfleet.errors import BitfleetError
from bitfleet.httpclient import ApiError
from bitfleet.protocol import AgentStatus, Decline, Task, UploadReceipt


class TransportTimeout(BitfleetError):
    """The broker did not deliver what the agent waited for in time."""


def is_outage(error: BitfleetError) -> bool:
    """The coordinator or broker was away (unreachable, timed out, 5xx): worth a retry,
    unlike a refusal."""
    if isinstance(error, ApiError):
        return error.status == 0 or error.status >= 500
    return isinstance(error, TransportTimeout)


class Transport(Protocol):
    """What the agent's training loop needs from a transport, and nothing more."""

    name: str
    # How often the coordinator has (re)appeared: a change means "resend held uploads now".
    coordinator_returns: int

    def start(self, status: AgentStatus) -> None:
        """Connect and announce ``status`` (reconnecting on its own, with backoff, if the
        link drops); a coordinator away at start is an outage to ride out, not an error."""

    def coordinator_away(self) -> str | None:
        """Why the coordinator cannot be reached now, as far as this transport saw; None
        when it can (HTTP: the last request was answered; MQTT: the broker link is up and
        the coordinator's retained status says online)."""

    def announce(self, status: AgentStatus) -> None: ...

    def next_task(self, timeout: float, seen: Task | None = None) -> Task | None:
        """The current task, waiting up to ``timeout`` seconds for one other than ``seen``
        (the one the agent already served); at the timeout, the current one (``seen``
        again, or None if there is none)."""

    def fetch_model(self, task: Task, timeout: float) -> bytes: ...

    def upload(self, task: Task, frame: bytes, timeout: float) -> UploadReceipt | None:
        """Send an update; the coordinator's receipt, or None if none came in time."""

    def decline(self, decline: Decline) -> None:
        """Tell the coordinator this agent cannot take the task, and why."""

    def close(self) -> None: ...
