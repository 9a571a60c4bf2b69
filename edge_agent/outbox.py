"""Uploads the agent holds until the coordinator's receipt says what became of them.

A coordinator killed mid-round, a broker restart or a full disk on the coordinator must
not lose an upload: each signed update is written here (fsynced, atomically) before it is
first sent, and the agent resends it until a receipt is final (accepted, already held, or
refused for good). Resends are idempotent on (job, round, agent): the coordinator
answers an upload it holds with an accepted receipt and never counts it twice. Each held
upload is resent on its own schedule of the agent's backoff policy, and at once when the
coordinator comes back (:meth:`Outbox.retry_now`).

On disk, ``STATE_DIR/outbox/{job}-{round}-{attempt}.bfu`` is the frame and ``.json`` beside
it the task; the ``.json`` is written last, so a half-written entry is never resent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bitfleet.atomicfile import write_atomic
from bitfleet.edge_agent.backoff import Backoff
from bitfleet.errors import BitfleetError
from bitfleet.protocol import Task, parse_message

log = logging.getLogger("bitfleet.agent.outbox")

OUTBOX = "outbox"


@dataclass(frozen=True)
class Pending:
    """One held upload: its task, its frame and when it was first queued."""

    task: Task
    frame: bytes
    queued_at: float

    @property
    def name(self) -> str:
        return f"{self.task.job_id}-{self.task.round}-{self.task.attempt}"


class Outbox:
    """Held uploads, on disk when ``directory`` is given (in memory otherwise)."""

    def __init__(
        self,
        directory: Path | None,
        max_entries: int = 32,
        max_age_s: float = 24 * 3600.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.directory = directory / OUTBOX if directory is not None else None
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.backoff = backoff or Backoff()
        self._entries: dict[str, Pending] = {}
        self._retries: dict[str, Backoff] = {}  # per held upload that was sent unanswered
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._load()

    def put(self, task: Task, frame: bytes) -> Pending:
        """Hold an upload (durably, before it is first sent)."""
        pending = Pending(task, frame, time.time())
        if self.directory is not None:
            write_atomic(self.directory / f"{pending.name}.bfu", frame)
            record = {"task": asdict(task), "queued_at": pending.queued_at}
            write_atomic(self.directory / f"{pending.name}.json", json.dumps(record).encode())
        self._entries[pending.name] = pending
        self._trim()
        return pending

    def pending(self) -> list[Pending]:
        """Held uploads, oldest first; expired ones are dropped (and logged)."""
        cutoff = time.time() - self.max_age_s
        for entry in [e for e in self._entries.values() if e.queued_at < cutoff]:
            log.warning(
                "upload for job %s round %d expired unanswered", entry.task.job_id, entry.task.round
            )
            self.remove(entry)
        return sorted(self._entries.values(), key=lambda e: e.queued_at)

    def due(self) -> list[Pending]:
        """Held uploads whose resend is due, oldest first."""
        return [
            e for e in self.pending() if e.name not in self._retries or self._retries[e.name].due()
        ]

    def later(self, entry: Pending) -> float:
        """``entry`` went unanswered (or was refused for now): seconds until it is due."""
        return self._retries.setdefault(entry.name, self.backoff.fresh()).failed()

    def retry_now(self) -> None:
        """The coordinator is back: every held upload is due now, on a fresh schedule."""
        self._retries.clear()

    def remove(self, entry: Pending) -> None:
        self._entries.pop(entry.name, None)
        self._retries.pop(entry.name, None)
        if self.directory is not None:
            for suffix in (".json", ".bfu"):
                (self.directory / f"{entry.name}{suffix}").unlink(missing_ok=True)

    def _trim(self) -> None:
        for entry in self.pending()[: max(0, len(self._entries) - self.max_entries)]:
            log.warning("outbox full: dropped the oldest upload %s", entry.name)
            self.remove(entry)

    def _load(self) -> None:
        """Held uploads of an earlier run; broken entries (a crash mid-write) are removed."""
        assert self.directory is not None
        for meta in sorted(self.directory.glob("*.json")):
            frame_path = meta.with_suffix(".bfu")
            try:
                record = json.loads(meta.read_text())
                task = parse_message(Task, record["task"])
                entry = Pending(task, frame_path.read_bytes(), float(record["queued_at"]))
            except (OSError, ValueError, KeyError, TypeError, BitfleetError) as error:
                log.warning("outbox entry %s unreadable (%s); removed", meta.name, error)
                meta.unlink(missing_ok=True)
                frame_path.unlink(missing_ok=True)
                continue
            self._entries[entry.name] = entry
        for orphan in [*self.directory.glob("*.bfu"), *self.directory.glob("*.tmp")]:
            if orphan.stem not in self._entries:
                orphan.unlink(missing_ok=True)
