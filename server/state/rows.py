"""Records from database rows: the one reading both stores share, whatever their driver
(``sqlite3.Row`` and psycopg's dict rows both index by column name). JSON columns are TEXT
in both, exactly as written."""

from __future__ import annotations

import json
from typing import Any, Protocol

from bitfleet.server.state.base import (
    AgentRecord,
    JobRecord,
    RoundMetrics,
    RoundRecord,
    TallyCheckpoint,
)


class Row(Protocol):
    def __getitem__(self, column: str) -> Any: ...


def agent_record(row: Row) -> AgentRecord:
    return AgentRecord(
        agent_id=row["agent_id"],
        created_at=row["created_at"],
        revoked=bool(row["revoked"]),
        last_seen=row["last_seen"],
        online=bool(row["online"]),
        transport=row["transport"],
        capabilities=json.loads(row["capabilities"]),
        rounds_contributed=row["rounds_contributed"],
    )


def job_record(row: Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        spec=json.loads(row["spec"]),
        status=row["status"],
        round=row["round"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reason=row["reason"],
    )


def round_record(row: Row) -> RoundRecord:
    return RoundRecord(
        row["job_id"],
        row["round"],
        row["attempt"],
        row["opened_at"],
        row["deadline"],
        json.loads(row["selected"]),
        json.loads(row["vote_caps"]),
    )


def tally_checkpoint(row: Row) -> TallyCheckpoint:
    return TallyCheckpoint(
        row["worker_id"],
        row["attempt"],
        json.loads(row["agents"]),
        row["bytes_up"],
        bytes(row["tally"]),
    )


def round_metrics(row: Row) -> RoundMetrics:
    """A metrics row's ``data``: the core fields, and the rest as ``extra``."""
    data = json.loads(row["data"])
    core = {k: data.pop(k) for k in list(data) if k in RoundMetrics.__dataclass_fields__}
    return RoundMetrics(**core, extra=data)
