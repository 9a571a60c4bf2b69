"""Refused uploads by job and by agent, each by reason: what the dashboard shows beside a job
and an agent (``/metrics`` counts them by reason alone).

Counts since this coordinator (worker) started, in memory. Bounded, since a refused upload
may name any job or agent: past ``MAX_KEYS`` distinct ones, new names count under
``OTHER``.
"""

from __future__ import annotations

import threading

MAX_KEYS = 10_000
OTHER = "(other)"


class RefusalCounts:
    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._by_job: dict[str, dict[str, int]] = {}
        self._by_agent: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def count(self, job_id: str, agent_id: str, reason: str) -> None:
        with self._lock:
            for counts, key in ((self._by_job, job_id), (self._by_agent, agent_id)):
                if key not in counts and len(counts) >= self._max_keys:
                    key = OTHER
                reasons = counts.setdefault(key, {})
                reasons[reason] = reasons.get(reason, 0) + 1

    def by_job(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {key: dict(reasons) for key, reasons in self._by_job.items()}

    def by_agent(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {key: dict(reasons) for key, reasons in self._by_agent.items()}
