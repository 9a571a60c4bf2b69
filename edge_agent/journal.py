"""What the agent did with each task, on disk, so a crash or reboot never uploads twice.

One JSON line per event in ``STATE_DIR/journal.jsonl``: ``started``, then ``uploaded``,
``declined``, ``failed`` or ``abandoned``; ``receipt`` when a held upload was resent and its
final receipt came (see ``outbox``). A round that was started but never finished training
(the agent was killed) is abandoned on the next start and never retrained; an upload it had
already put in the outbox is still resent. ``status.json`` holds
what the running agent is doing, for ``bitfleet-agent status``.

A state directory belongs to one running agent: :meth:`Journal.lock` takes an exclusive
``flock`` on ``STATE_DIR/agent.lock`` (holding the owner's pid) for the process lifetime,
so a second agent on the same directory stops with a clear error instead of interleaving
its journal and racing on ``status.json``. Readers (``status``) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from bitfleet.atomicfile import write_atomic
from bitfleet.errors import ConfigError

JOURNAL = "journal.jsonl"
STATUS = "status.json"
LOCK = "agent.lock"
FINAL = ("uploaded", "declined", "failed", "abandoned", "receipt")
# A task is one attempt at one round of one job: a retried round is a new task.
TaskKey = tuple[str, int, int]


class Journal:
    """The journal and status of ``directory``; reading needs neither the lock nor the
    directory to exist, writing needs :meth:`lock` first (``bitfleet-agent run`` does)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL

    def lock(self) -> None:
        """Create the directory and lock it for this process (released when it exits)."""
        fix = "pass --state-dir with a directory this agent can write"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(
                f"state directory {self.directory} is not usable ({error.strerror}): {fix}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"state directory {self.directory} is in use by another bitfleet-agent "
                f"(pid {holder}): stop it, or give this agent its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # fd stays open, holding the lock, until the process exits.

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash mid-write
                continue
        return entries

    def record(self, task: TaskKey, event: str, **details: Any) -> None:
        """Append one event and fsync it: it must survive a power cut."""
        job_id, round_index, attempt = task
        entry = {"job_id": job_id, "round": round_index, "attempt": attempt, "event": event}
        line = json.dumps({"time": time.time(), **entry, **details})
        with self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def recover(self) -> tuple[set[TaskKey], list[TaskKey]]:
        """(every task ever attempted, tasks interrupted by a crash, now abandoned)."""
        latest: dict[TaskKey, str] = {}
        for entry in self.entries():
            latest[(entry["job_id"], entry["round"], entry.get("attempt", 0))] = entry["event"]
        interrupted = [key for key, event in latest.items() if event not in FINAL]
        for key in interrupted:
            self.record(key, "abandoned", reason="interrupted by a restart")
        return set(latest), interrupted

    def write_status(self, status: dict[str, Any]) -> None:
        """Replace status.json atomically (readable like the journal, for ``status``)."""
        data = json.dumps({**status, "pid": os.getpid(), "updated_at": time.time()})
        write_atomic(self.directory / STATUS, data.encode(), mode=0o644, durable=False)

    def read_status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads((self.directory / STATUS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return status
