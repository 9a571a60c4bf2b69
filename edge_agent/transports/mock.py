"""An in-memory transport a test answers, as httpx's ``MockTransport(handler)`` answers requests.

Every call the agent's runtime makes becomes a request — :class:`Announce`, :class:`Poll`,
:class:`ModelDownload`, :class:`Upload`, :class:`DeclineNotice` — handed to the test's
handler and recorded in ``requests``, in order. The handler answers a poll with a Task (or
None: no task), a model download with the model's bytes, an upload with a receipt (or None:
none came in time), anything else with None; a wrong kind of answer is a TypeError (a bug
in the test, said loudly).

Outages, two ways, as the real transports see them. A handler that raises an outage error
(:class:`~bitfleet.edge_agent.transports.TransportTimeout`, or an ``ApiError`` with status 0
or 5xx) is a coordinator that did not answer: the transport reports it away until a request
is answered again, and that return counts in ``coordinator_returns`` (as HTTP does).
:meth:`MockTransport.go_away` and :meth:`MockTransport.come_back` set it directly, however
requests fare meanwhile (as MQTT's retained coordinator status does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bitfleet.edge_agent.transports import is_outage
from bitfleet.errors import BitfleetError
from bitfleet.protocol import AgentStatus, Decline, Task, UploadReceipt


@dataclass(frozen=True)
class Announce:
    status: AgentStatus


@dataclass(frozen=True)
class Poll:
    timeout: float
    seen: Task | None = None


@dataclass(frozen=True)
class ModelDownload:
    task: Task
    timeout: float


@dataclass(frozen=True)
class Upload:
    task: Task
    frame: bytes
    timeout: float


@dataclass(frozen=True)
class DeclineNotice:
    decline: Decline


Request = Announce | Poll | ModelDownload | Upload | DeclineNotice
Answer = Task | bytes | UploadReceipt | None
Handler = Callable[[Request], Answer]
Kind = TypeVar("Kind", Announce, Poll, ModelDownload, Upload, DeclineNotice)

_ANSWERS: dict[type, tuple[type, ...]] = {
    Announce: (type(None),),
    Poll: (Task, type(None)),
    ModelDownload: (bytes,),
    Upload: (UploadReceipt, type(None)),
    DeclineNotice: (type(None),),
}


class MockTransport:
    """The Transport interface in memory: ``handler`` plays the coordinator."""

    name = "mock"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.coordinator_returns = 0
        self.started = False
        self.closed = False
        self._lock = threading.Lock()
        self._unanswered: str | None = None  # why the last request got no answer
        self._offline: str | None = None  # set by go_away, until come_back

    def sent(self, kind: type[Kind]) -> list[Kind]:
        """The requests of one kind the agent made, in order."""
        with self._lock:
            return [r for r in self.requests if isinstance(r, kind)]

    def go_away(self, reason: str) -> None:
        """The coordinator is offline (its status says so) until :meth:`come_back`."""
        self._offline = reason

    def come_back(self) -> None:
        """The coordinator is back online: held uploads are due at once."""
        self._offline = None
        self.coordinator_returns += 1

    def _ask(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
        try:
            answer = self.handler(request)
        except BitfleetError as error:
            if is_outage(error):
                self._unanswered = str(error)
            raise
        if not isinstance(answer, _ANSWERS[type(request)]):
            raise TypeError(f"the handler answered {request!r} with {type(answer).__name__}")
        if self._unanswered is not None:  # answered again: the coordinator is back
            self._unanswered = None
            self.coordinator_returns += 1
        return answer

    # the Transport interface
    def start(self, status: AgentStatus) -> None:
        """Announce; a coordinator away at start is ridden out, like the real transports."""
        self.started = True
        try:
            self.announce(status)
        except BitfleetError as error:
            if not is_outage(error):
                raise

    def coordinator_away(self) -> str | None:
        return self._offline or self._unanswered

    def announce(self, status: AgentStatus) -> None:
        self._ask(Announce(status))

    def next_task(self, timeout: float, seen: Task | None = None) -> Task | None:
        answer = self._ask(Poll(timeout, seen))
        assert answer is None or isinstance(answer, Task)
        return answer

    def fetch_model(self, task: Task, timeout: float) -> bytes:
        answer = self._ask(ModelDownload(task, timeout))
        assert isinstance(answer, bytes)
        return answer

    def upload(self, task: Task, frame: bytes, timeout: float) -> UploadReceipt | None:
        """The handler's receipt; None when it did not answer (the outbox resends)."""
        try:
            answer = self._ask(Upload(task, frame, timeout))
        except BitfleetError as error:
            if is_outage(error):
                return None
            raise
        assert answer is None or isinstance(answer, UploadReceipt)
        return answer

    def decline(self, decline: Decline) -> None:
        self._ask(DeclineNotice(decline))

    def close(self) -> None:
        self.closed = True
