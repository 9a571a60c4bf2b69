"""The state interface the round engine and the API depend on, and its records.

Every method that changes state is one transaction: a crash at any point leaves either the
whole change or none of it, so a restarted coordinator resumes exactly where it stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bitfleet.errors import BitfleetError


class StoreError(BitfleetError):
    """The store cannot complete a change (e.g. the disk is full); nothing was written."""


class AlreadyExists(StoreError):
    """The record to create exists already."""


class StateVersionError(StoreError):
    """The state was written by a newer bitfleet, in a schema version this one cannot read."""


@dataclass(frozen=True)
class AgentRecord:
    agent_id: str
    created_at: float
    revoked: bool
    last_seen: float | None
    online: bool
    transport: str | None
    capabilities: dict[str, Any]
    rounds_contributed: int


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    spec: dict[str, Any]
    status: str
    round: int
    created_at: float
    updated_at: float
    reason: str | None


@dataclass(frozen=True)
class RoundRecord:
    job_id: str
    round: int
    attempt: int
    opened_at: float
    deadline: float
    selected: list[str]
    vote_caps: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeclineRecord:
    agent_id: str
    round: int
    reason: str


@dataclass(frozen=True)
class UploadRecord:
    agent_id: str
    samples: int
    payload: bytes


@dataclass(frozen=True)
class RoundMetrics:
    round: int
    test_accuracy: float
    loss: float
    uploads: int
    bytes_up: int
    bytes_down: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "test_accuracy": self.test_accuracy,
            "loss": self.loss,
            "uploads": self.uploads,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "seconds": self.seconds,
            **self.extra,
        }


class StateStore(ABC):
    """Jobs, rounds, uploads, models, metrics and agents of one coordinator."""

    # agents
    @abstractmethod
    def create_agent(self, agent_id: str, secret: str) -> AgentRecord: ...

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    @abstractmethod
    def agent_secret(self, agent_id: str) -> str | None:
        """The secret of an enrolled, not revoked agent; None otherwise."""

    @abstractmethod
    def list_agents(self) -> list[AgentRecord]: ...

    @abstractmethod
    def revoke_agent(self, agent_id: str) -> bool: ...

    @abstractmethod
    def record_presence(
        self, agent_id: str, online: bool, transport: str, capabilities: dict[str, Any] | None
    ) -> None: ...

    # jobs
    @abstractmethod
    def create_job(self, job_id: str, spec: dict[str, Any], initial_model: bytes) -> JobRecord: ...

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, statuses: tuple[str, ...] | None = None) -> list[JobRecord]: ...

    @abstractmethod
    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None: ...

    # rounds and uploads
    @abstractmethod
    def open_round(
        self,
        job_id: str,
        round_index: int,
        attempt: int,
        deadline: float,
        selected: list[str],
        vote_caps: dict[str, int] | None = None,
    ) -> RoundRecord:
        """Open (or re-open, as a new attempt) a round. Uploads an earlier attempt of the
        same round stored are kept: they are votes on the same global model."""

    @abstractmethod
    def get_open_round(self, job_id: str) -> RoundRecord | None: ...

    @abstractmethod
    def add_upload(
        self, job_id: str, round_index: int, agent_id: str, samples: int, payload: bytes
    ) -> bool:
        """Store an accepted upload; False (and no change) if this agent already uploaded."""

    @abstractmethod
    def upload_agents(self, job_id: str, round_index: int) -> list[str]: ...

    @abstractmethod
    def counted(self, job_id: str, round_index: int, agent_id: str) -> bool:
        """True if this agent's upload was counted in this round, which has closed: a
        resend after a lost receipt MUST then be answered accepted, never as late."""

    @abstractmethod
    def add_decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> None:
        """Record that an agent cannot take this job (it is not selected for it again)."""

    @abstractmethod
    def list_declines(self, job_id: str) -> list[DeclineRecord]: ...

    @abstractmethod
    def iter_uploads(self, job_id: str, round_index: int) -> Iterator[UploadRecord]:
        """Uploads one at a time, so a tally can be rebuilt without holding them all."""

    @abstractmethod
    def close_round(
        self, job_id: str, round_index: int, next_model: bytes, metrics: RoundMetrics, final: bool
    ) -> None:
        """Store the new global model and metrics, advance (or complete) the job, drop the
        uploads' payloads and remember whose were counted (:meth:`counted`)."""

    # models and metrics
    @abstractmethod
    def get_model(self, job_id: str, round_index: int | None = None) -> bytes | None:
        """The global model that opens ``round_index`` (default: the latest)."""

    @abstractmethod
    def list_metrics(self, job_id: str) -> list[RoundMetrics]: ...

    @abstractmethod
    def close(self) -> None: ...
