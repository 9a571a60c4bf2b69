"""Refusal counts per job and agent: what the dashboard shows, bounded against names a
hostile sender makes up."""

from __future__ import annotations

from bitfleet.server.refusals import OTHER, RefusalCounts


def test_refusals_are_counted_per_job_and_agent_by_reason() -> None:
    counts = RefusalCounts()
    counts.count("job-1", "a1", "late")
    counts.count("job-1", "a1", "late")
    counts.count("job-1", "a2", "mismatch")
    assert counts.by_job() == {"job-1": {"late": 2, "mismatch": 1}}
    assert counts.by_agent() == {"a1": {"late": 2}, "a2": {"mismatch": 1}}


def test_names_past_the_bound_count_under_other() -> None:
    counts = RefusalCounts(max_keys=3)
    for index in range(10):
        counts.count(f"job-{index}", f"agent-{index}", "unknown_job")
    by_job = counts.by_job()
    assert len(by_job) == 4 and by_job[OTHER] == {"unknown_job": 7}
    assert counts.by_agent()[OTHER] == {"unknown_job": 7}
    counts.count("job-0", "agent-0", "late")  # names already kept still count as themselves
    assert counts.by_job()["job-0"] == {"unknown_job": 1, "late": 1}
