"""The HTTP fallback transport: poll for tasks, download models, post updates."""

from __future__ import annotations

import time

from bitfleet.edge_agent.transports import is_outage
from bitfleet.httpclient import ApiClient, ApiError, Response
from bitfleet.protocol import (
    FLEET_DECLINE,
    FLEET_MODEL,
    FLEET_STATUS,
    FLEET_TASK,
    FLEET_UPDATES,
    AgentStatus,
    Decline,
    Task,
    UploadReceipt,
    encode_message,
    fleet_path,
    parse_message,
)


class HttpTransport:
    name = "http"

    def __init__(
        self,
        url: str,
        agent_id: str,
        secret: str,
        poll_s: float = 1.0,
        ca_file: str | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.api = ApiClient(url, f"{agent_id}:{secret}", ca_file=ca_file)
        self.poll_s = poll_s
        self.coordinator_returns = 0
        self._away: str | None = None

    def start(self, status: AgentStatus) -> None:
        """Announce; a coordinator away now is seen by the next poll, and announced to
        when it is back (the runtime re-announces)."""
        try:
            self.announce(status)
        except ApiError as error:
            if not is_outage(error):
                raise

    def coordinator_away(self) -> str | None:
        return self._away

    def _request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> Response:
        """Every request goes here, so the transport knows whether the coordinator answers:
        no answer (or a proxy's 5xx without the coordinator's JSON) is "away"."""
        try:
            reply = self.api.request(method, path, data=data, content_type=content_type)
        except ApiError as error:
            if error.status == 0 or (error.status >= 500 and not isinstance(error.body, dict)):
                self._away = str(error)
                raise
            self._answered()
            raise
        self._answered()
        return reply

    def _answered(self) -> None:
        if self._away is not None:  # the coordinator is back: resend held uploads now
            self._away = None
            self.coordinator_returns += 1

    def announce(self, status: AgentStatus) -> None:
        self._request(
            "POST",
            fleet_path(FLEET_STATUS),
            data=encode_message(status),
            content_type="application/json",
        )

    def next_task(self, timeout: float, seen: Task | None = None) -> Task | None:
        deadline = time.monotonic() + timeout
        while True:
            reply = self._request("GET", fleet_path(FLEET_TASK))
            task = parse_message(Task, reply.body) if reply.status == 200 else None
            if (task is not None and task != seen) or time.monotonic() + self.poll_s > deadline:
                return task
            time.sleep(self.poll_s)

    def fetch_model(self, task: Task, timeout: float) -> bytes:
        path = fleet_path(FLEET_MODEL, task.job_id, task.round)
        return self._request("GET", path).body

    def upload(self, task: Task, frame: bytes, timeout: float) -> UploadReceipt | None:
        """The receipt; None when the coordinator is unreachable or failed without one
        (the agent's outbox resends)."""
        path = fleet_path(FLEET_UPDATES, task.job_id, task.round)
        try:
            reply = self._request("POST", path, data=frame)
        except ApiError as error:
            if isinstance(error.body, dict) and "accepted" in error.body:
                return parse_message(UploadReceipt, error.body)
            if is_outage(error):
                return None
            # Refused without a receipt (too large for the API, credentials revoked): final.
            return UploadReceipt(
                task.job_id, task.round, self.agent_id, False, f"http_{error.status}"
            )
        return parse_message(UploadReceipt, reply.body)

    def decline(self, decline: Decline) -> None:
        path = fleet_path(FLEET_DECLINE, decline.job_id, decline.round)
        self._request("POST", path, data=encode_message(decline), content_type="application/json")

    def close(self) -> None:
        """Nothing to tear down: every request is its own connection."""
