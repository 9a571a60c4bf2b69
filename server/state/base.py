"""The state interface the round engine and the API depend on, and its records.

Every method that changes state is one transaction: a crash at any point leaves either the
whole change or none of it, so a restarted coordinator resumes exactly where it stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bitfleet.errors import BitfleetError


class StoreError(BitfleetError):
    """The store cannot complete a change (e.g. the disk is full); nothing was written."""


class AlreadyExists(StoreError):
    """The record to create exists already."""


class UnknownRecord(StoreError):
    """The job (or its open round) to change does not exist: the caller's bug, since the
    engine checks first."""


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
class Presence:
    """What an agent last said of itself, heard at ``seen_at``: online or not, over which
    transport, and its capabilities (None: as it reported them before)."""

    agent_id: str
    online: bool
    transport: str
    seen_at: float
    capabilities: dict[str, Any] | None = None


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
class TallyCheckpoint:
    """One coordinator worker's partial tally of an attempt of an open round: the uploads it
    accepted (``agents``, ``bytes_up`` bytes of them) counted in ``tally`` (its
    accumulator's bytes)."""

    worker_id: str
    attempt: int
    agents: list[str]
    bytes_up: int
    tally: bytes


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
    """Jobs, rounds, uploads, models, metrics and agents of one coordinator.

    The contract every implementation keeps (tests/test_store_contract.py checks it): every
    time a record carries (``created_at``, ``updated_at``, ``last_seen``, ``opened_at``) comes
    from the clock the store was built with, never from the wall clock behind its back; a
    change that fails (a refused write is a :class:`StoreError`) leaves nothing of itself
    written; reads of an unknown id return None or an empty list, changes to an unknown job
    raise :class:`UnknownRecord`.
    """

    # agents
    @abstractmethod
    def create_agent(self, agent_id: str, secret: str) -> AgentRecord:
        """Enroll an agent, not revoked, never seen, with no rounds contributed.

        MUST fail with :class:`AlreadyExists` if ``agent_id`` exists (revoked or not), leaving
        the existing agent and its secret unchanged."""

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent, revoked or not; MUST return None for an unknown id."""

    @abstractmethod
    def agent_secret(self, agent_id: str) -> str | None:
        """The secret of an enrolled agent; MUST return None if it is unknown or revoked."""

    @abstractmethod
    def list_agents(self) -> list[AgentRecord]:
        """Every agent, revoked ones included; MUST return them in ``agent_id`` order."""

    @abstractmethod
    def revoke_agent(self, agent_id: str) -> bool:
        """Revoke an agent and mark it offline. MUST be idempotent: True only for the call
        that revoked it, False for an unknown or already revoked agent (no change)."""

    @abstractmethod
    def record_presence(self, reports: Sequence[Presence]) -> None:
        """Record, in one transaction, that each agent is (or went) online over its
        transport, its ``last_seen`` the report's ``seen_at`` (the engine's clock, read when
        the report was heard); ``capabilities=None`` keeps the ones it reported before.
        MUST NOT create an agent: for an unknown or revoked one it changes nothing."""

    # jobs
    @abstractmethod
    def create_job(self, job_id: str, spec: dict[str, Any], initial_model: bytes) -> JobRecord:
        """Create a ``pending`` job at round 0 with ``initial_model`` as the model of round 0.
        MUST fail with :class:`AlreadyExists` if ``job_id`` exists, changing nothing."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None:
        """The job; MUST return None for an unknown id."""

    @abstractmethod
    def list_jobs(self, statuses: tuple[str, ...] | None = None) -> list[JobRecord]:
        """The jobs in one of ``statuses`` (all if None or empty); MUST return them in
        creation order (``created_at``, then ``job_id``)."""

    @abstractmethod
    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        """Set a job's status and reason, stamping ``updated_at``. MUST fail with
        :class:`UnknownRecord` if the job is unknown."""

    # rounds and uploads
    @abstractmethod
    def open_round(
        self,
        job_id: str,
        round_index: int,
        attempt: int,
        deadline: float,
        selected: list[str],
        status: str,
        vote_caps: dict[str, int] | None = None,
    ) -> RoundRecord:
        """Open (or re-open, as a new attempt replacing the last) a round, stamping
        ``opened_at``, and set the job's ``status`` (what :func:`bitfleet.jobstatus.transition`
        gave) with no reason. Uploads an earlier attempt
        of the same round stored MUST be kept: they are votes on the same global model. MUST
        fail with :class:`UnknownRecord` if the job is unknown."""

    @abstractmethod
    def get_open_round(self, job_id: str) -> RoundRecord | None:
        """The job's open round, as :meth:`open_round` returned it; None if it has none (or
        the job is unknown)."""

    @abstractmethod
    def add_uploads(
        self, job_id: str, round_index: int, uploads: Sequence[UploadRecord]
    ) -> list[bool]:
        """Store accepted uploads of one round in one transaction; for each, True if it was
        stored. MUST be idempotent on (job, round, agent): False, and the first payload
        kept, for an agent that already uploaded (in an earlier call or earlier in this
        one). MUST fail with :class:`UnknownRecord`, storing none, if the job has no open
        round ``round_index``."""

    def add_upload(
        self, job_id: str, round_index: int, agent_id: str, samples: int, payload: bytes
    ) -> bool:
        """:meth:`add_uploads` of one upload."""
        return self.add_uploads(job_id, round_index, [UploadRecord(agent_id, samples, payload)])[0]

    @abstractmethod
    def upload_agents(self, job_id: str, round_index: int) -> list[str]:
        """The agents whose uploads are stored (not yet closed); MUST return them in the order
        the uploads were stored."""

    @abstractmethod
    def counted(self, job_id: str, round_index: int, agent_id: str) -> bool:
        """True if this agent's upload was counted in this round, which has closed: a
        resend after a lost receipt MUST then be answered accepted, never as late. MUST
        return False for an open round and for unknown ids."""

    @abstractmethod
    def add_decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> None:
        """Record that an agent cannot take this job (it is not selected for it again). MUST
        be idempotent on (job, agent): one decline each, the latest round and reason kept.
        MUST fail with :class:`UnknownRecord` if the job is unknown."""

    @abstractmethod
    def list_declines(self, job_id: str) -> list[DeclineRecord]:
        """The job's declines; MUST return them in ``agent_id`` order."""

    @abstractmethod
    def get_upload(self, job_id: str, round_index: int, agent_id: str) -> UploadRecord | None:
        """The agent's stored upload to an open round; None if there is none."""

    def iter_uploads(
        self, job_id: str, round_index: int, agents: Collection[str] | None = None
    ) -> Iterator[UploadRecord]:
        """Uploads one at a time, so a tally can be rebuilt without holding them all, in
        the order of :meth:`upload_agents`; only those of ``agents`` if given."""
        wanted = None if agents is None else set(agents)
        for agent_id in self.upload_agents(job_id, round_index):
            if wanted is None or agent_id in wanted:
                upload = self.get_upload(job_id, round_index, agent_id)
                if upload is not None:
                    yield upload

    @abstractmethod
    def close_round(
        self,
        job_id: str,
        round_index: int,
        next_model: bytes,
        metrics: RoundMetrics,
        status: str,
        slim_model: bytes | None = None,
    ) -> None:
        """In one transaction: store ``next_model`` as the model of round ``round_index + 1``
        and the round's metrics, advance the job to that round with ``status`` (what
        :func:`bitfleet.jobstatus.transition` gave), count a round for each agent that
        uploaded, drop the uploads' payloads and the round's tally checkpoints and remember
        whose were counted (:meth:`counted`); and, given ``slim_model``, replace the model of round
        ``round_index`` with it (the retention rule: state only the latest model is read
        for goes with the round). MUST fail with :class:`UnknownRecord` if the job has no
        open round ``round_index`` (so of several workers racing to close it, one
        succeeds); a failure at any point (e.g. metrics that are not JSON values) MUST
        leave all of it unwritten."""

    # coordinator workers
    @abstractmethod
    def hold_lease(self, name: str, holder: str, lease_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until the store's clock passes
        now + ``lease_s``; True if ``holder`` holds it now. A lease another holder renewed
        within its term MUST NOT be taken (False, nothing changed); an expired one MUST be,
        by exactly one of several holders racing for it."""

    @abstractmethod
    def save_tally(self, job_id: str, round_index: int, checkpoint: TallyCheckpoint) -> None:
        """Store ``checkpoint`` as its worker's partial tally of the open round, replacing
        the one it stored before. MUST fail with :class:`UnknownRecord` if the job has no
        open round ``round_index``."""

    @abstractmethod
    def list_tallies(self, job_id: str, round_index: int) -> list[TallyCheckpoint]:
        """The round's tally checkpoints; MUST return them in ``worker_id`` order (empty
        once the round closed, and for unknown ids)."""

    # models and metrics
    @abstractmethod
    def get_model(self, job_id: str, round_index: int | None = None) -> bytes | None:
        """The global model that opens ``round_index`` (default: the latest); MUST return
        None for an unknown job or a round with no model yet."""

    @abstractmethod
    def list_metrics(self, job_id: str) -> list[RoundMetrics]:
        """The metrics of each closed round, ``extra`` included; MUST return them in round
        order (empty for an unknown job)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connection; it MUST NOT be used after."""
