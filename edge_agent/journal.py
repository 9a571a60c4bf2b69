"""What the agent did with each task, on disk, so a crash or reboot never uploads twice.

One JSON line per event in ``STATE_DIR/journal.jsonl``: ``started``, then ``uploaded``,
``declined``, ``failed`` or ``abandoned``. A round that was started but never finished (the
agent was killed) is abandoned on the next start and never retried. ``status.json`` holds
what the running agent is doing, for ``bitfleet-agent status``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"
STATUS = "status.json"
FINAL = ("uploaded", "declined", "failed", "abandoned")
# A task is one attempt at one round of one job: a retried round is a new task.
TaskKey = tuple[str, int, int]


class Journal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / JOURNAL

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
        temp = self.directory / (STATUS + ".tmp")
        temp.write_text(json.dumps({**status, "pid": os.getpid(), "updated_at": time.time()}))
        os.replace(temp, self.directory / STATUS)

    def read_status(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads((self.directory / STATUS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return status
