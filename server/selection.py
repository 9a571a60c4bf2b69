"""Which agents a round asks, and how much each one's vote may weigh."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitfleet.server.jobs import Job
from bitfleet.server.state.base import AgentRecord
from bitfleet.server.voting import declared_samples, vote_caps


@dataclass(frozen=True)
class Selection:
    selected: list[str]
    vote_caps: dict[str, int]


def waiting_reason(job: Job, candidates: int, declined_online: int) -> str | None:
    """Why the round cannot open with ``candidates`` agents; None if it can."""
    if candidates >= job.spec.min_agents:
        return None
    more = f" ({declined_online} more declined this job)" if declined_online else ""
    return f"waiting for {job.spec.min_agents} agents, {candidates} online{more}"


def select(
    job: Job, attempt: int, online: list[str], prior: set[str], agents: dict[str, AgentRecord]
) -> Selection:
    """``prior`` (agents whose upload an earlier attempt accepted) stay selected; the rest
    are drawn from ``online`` by the job's seed, round and attempt (reproducible)."""
    rng = np.random.default_rng([job.spec.seed, job.round, attempt])
    count = max(0, min(job.spec.agents_per_round - len(prior), len(online)))
    chosen = rng.choice(sorted(online), size=count, replace=False).tolist()
    selected = sorted(prior | set(chosen))
    declared = {
        a: declared_samples(agents[a].capabilities) if a in agents else None for a in selected
    }
    return Selection(
        selected, vote_caps(declared, job.spec.max_vote_share, job.spec.max_vote_ratio)
    )
