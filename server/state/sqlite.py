"""SQLite implementation of :class:`StateStore`: one file, WAL mode, a transaction per change.

One connection serves every thread (API workers, the MQTT thread, the round timer) behind a
lock: SQLite serializes writers anyway, and the coordinator's write rate is low. The file
carries its schema version (``PRAGMA user_version``): opening it upgrades an older one in
one transaction and refuses a newer one (:class:`StateVersionError`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bitfleet import __version__
from bitfleet.jobstatus import PENDING
from bitfleet.server.state.base import (
    AgentRecord,
    AlreadyExists,
    DeclineRecord,
    JobRecord,
    Presence,
    RoundMetrics,
    RoundRecord,
    StateStore,
    StateVersionError,
    StoreError,
    TallyCheckpoint,
    UnknownRecord,
    UploadRecord,
)
from bitfleet.server.state.rows import (
    agent_record,
    job_record,
    round_metrics,
    round_record,
    tally_checkpoint,
)

# Version 1 of the layout: the tables as bitfleet made them before schema versions. Later
# versions change the layout with steps of their own in UPGRADES, never by editing this.
VERSION_1_TABLES = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    online INTEGER NOT NULL DEFAULT 0,
    transport TEXT,
    capabilities TEXT NOT NULL DEFAULT '{}',
    rounds_contributed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    deadline REAL NOT NULL,
    selected TEXT NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    vote_caps TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS uploads (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    samples INTEGER NOT NULL,
    received_at REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (job_id, round, agent_id)
);
CREATE TABLE IF NOT EXISTS contributions (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (job_id, round, agent_id)
);
CREATE TABLE IF NOT EXISTS declines (
    job_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, agent_id)
);
CREATE TABLE IF NOT EXISTS models (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    frame BLOB NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
"""


class SqliteStore(StateStore):
    """The embedded store: one SQLite file in WAL mode.

    About 300 lines, over the ~250 a class here should stay under, for a reason: it is one
    short method per :class:`StateStore` contract method and nothing else (schema and
    upgrades are module functions below). Split by table, ``close_round``'s one
    transaction over jobs, rounds, models and metrics would have to span the pieces.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` stamps every time the store writes (last seen, opened, updated): the
        engine's own, so that deadlines and presence agree, and tests can drive both."""
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _open(path)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(
                f"cannot open the state database {path}: {error}; check that the data "
                "directory is writable and not full"
            ) from None
        self._lock = threading.RLock()
        self.path = path

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK and a clear StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(_explain(error)) from None
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    # agents
    def create_agent(self, agent_id: str, secret: str) -> AgentRecord:
        now = self._clock()
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO agents (agent_id, secret, created_at) VALUES (?, ?, ?)",
                    (agent_id, secret, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"agent {agent_id!r} already exists; choose another id or revoke it first"
                ) from None
        agent = self.get_agent(agent_id)
        assert agent is not None
        return agent

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = self._query("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return agent_record(rows[0]) if rows else None

    def agent_secret(self, agent_id: str) -> str | None:
        rows = self._query(
            "SELECT secret FROM agents WHERE agent_id = ? AND revoked = 0", (agent_id,)
        )
        return str(rows[0]["secret"]) if rows else None

    def list_agents(self) -> list[AgentRecord]:
        return [agent_record(row) for row in self._query("SELECT * FROM agents ORDER BY agent_id")]

    def revoke_agent(self, agent_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE agents SET revoked = 1, online = 0 WHERE agent_id = ? AND revoked = 0",
                (agent_id,),
            )
            return cursor.rowcount == 1

    def record_presence(self, reports: Sequence[Presence]) -> None:
        rows = [
            (
                int(report.online),
                report.transport,
                report.seen_at,
                None if report.capabilities is None else json.dumps(report.capabilities),
                report.agent_id,
            )
            for report in reports
        ]
        with self._transaction() as db:
            db.executemany(
                "UPDATE agents SET online = ?, transport = ?, last_seen = ?, "
                "capabilities = COALESCE(?, capabilities) WHERE agent_id = ? AND revoked = 0",
                rows,
            )

    # jobs
    def create_job(self, job_id: str, spec: dict[str, Any], initial_model: bytes) -> JobRecord:
        now = self._clock()
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO jobs (job_id, spec, status, round, created_at, updated_at) "
                    "VALUES (?, ?, ?, 0, ?, ?)",
                    (job_id, json.dumps(spec), PENDING, now, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"job {job_id!r} already exists") from None
            db.execute(
                "INSERT INTO models (job_id, round, frame) VALUES (?, 0, ?)",
                (job_id, initial_model),
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return job_record(rows[0]) if rows else None

    def list_jobs(self, statuses: tuple[str, ...] | None = None) -> list[JobRecord]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self._query(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at, job_id",
                statuses,
            )
        else:
            rows = self._query("SELECT * FROM jobs ORDER BY created_at, job_id")
        return [job_record(row) for row in rows]

    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, reason = ?, updated_at = ? WHERE job_id = ?",
                (status, reason, self._clock(), job_id),
            )
            if cursor.rowcount != 1:
                raise UnknownRecord(f"no job {job_id!r}")

    # rounds and uploads
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
        now = self._clock()
        caps = dict(vote_caps or {})
        with self._transaction() as db:
            _require_job(db, job_id)
            db.execute(
                "INSERT OR REPLACE INTO rounds "
                "(job_id, round, attempt, opened_at, deadline, selected, closed, vote_caps) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    job_id,
                    round_index,
                    attempt,
                    now,
                    deadline,
                    json.dumps(selected),
                    json.dumps(caps),
                ),
            )
            db.execute(
                "UPDATE jobs SET status = ?, reason = NULL, updated_at = ? WHERE job_id = ?",
                (status, now, job_id),
            )
        return RoundRecord(job_id, round_index, attempt, now, deadline, selected, caps)

    def get_open_round(self, job_id: str) -> RoundRecord | None:
        rows = self._query(
            "SELECT * FROM rounds WHERE job_id = ? AND closed = 0 ORDER BY round DESC LIMIT 1",
            (job_id,),
        )
        if not rows:
            return None
        return round_record(rows[0])

    def add_uploads(
        self, job_id: str, round_index: int, uploads: Sequence[UploadRecord]
    ) -> list[bool]:
        now = self._clock()
        with self._transaction() as db:
            _require_open_round(db, job_id, round_index)
            return [
                db.execute(
                    "INSERT OR IGNORE INTO uploads (job_id, round, agent_id, samples, "
                    "received_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, round_index, upload.agent_id, upload.samples, now, upload.payload),
                ).rowcount
                == 1
                for upload in uploads
            ]

    def upload_agents(self, job_id: str, round_index: int) -> list[str]:
        rows = self._query(
            "SELECT agent_id FROM uploads WHERE job_id = ? AND round = ? ORDER BY rowid",
            (job_id, round_index),
        )
        return [row["agent_id"] for row in rows]

    def counted(self, job_id: str, round_index: int, agent_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM contributions WHERE job_id = ? AND round = ? AND agent_id = ?",
            (job_id, round_index, agent_id),
        )
        return bool(rows)

    def add_decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> None:
        with self._transaction() as db:
            _require_job(db, job_id)
            db.execute(
                "INSERT OR REPLACE INTO declines (job_id, agent_id, round, reason) "
                "VALUES (?, ?, ?, ?)",
                (job_id, agent_id, round_index, reason),
            )

    def list_declines(self, job_id: str) -> list[DeclineRecord]:
        rows = self._query(
            "SELECT agent_id, round, reason FROM declines WHERE job_id = ? ORDER BY agent_id",
            (job_id,),
        )
        return [DeclineRecord(row["agent_id"], row["round"], row["reason"]) for row in rows]

    def get_upload(self, job_id: str, round_index: int, agent_id: str) -> UploadRecord | None:
        rows = self._query(
            "SELECT samples, payload FROM uploads WHERE job_id = ? AND round = ? AND agent_id = ?",
            (job_id, round_index, agent_id),
        )
        return (
            UploadRecord(agent_id, rows[0]["samples"], bytes(rows[0]["payload"])) if rows else None
        )

    def close_round(
        self,
        job_id: str,
        round_index: int,
        next_model: bytes,
        metrics: RoundMetrics,
        status: str,
        slim_model: bytes | None = None,
    ) -> None:
        now = self._clock()
        with self._transaction() as db:
            _require_open_round(db, job_id, round_index)
            db.execute(
                "UPDATE agents SET rounds_contributed = rounds_contributed + 1 WHERE agent_id IN "
                "(SELECT agent_id FROM uploads WHERE job_id = ? AND round = ?)",
                (job_id, round_index),
            )
            db.execute(
                "INSERT OR IGNORE INTO contributions (job_id, round, agent_id) "
                "SELECT job_id, round, agent_id FROM uploads WHERE job_id = ? AND round = ?",
                (job_id, round_index),
            )
            db.execute("DELETE FROM uploads WHERE job_id = ? AND round = ?", (job_id, round_index))
            db.execute("DELETE FROM tallies WHERE job_id = ? AND round = ?", (job_id, round_index))
            db.execute(
                "UPDATE rounds SET closed = 1 WHERE job_id = ? AND round = ?",
                (job_id, round_index),
            )
            if slim_model is not None:
                db.execute(
                    "UPDATE models SET frame = ? WHERE job_id = ? AND round = ?",
                    (slim_model, job_id, round_index),
                )
            db.execute(
                "INSERT OR REPLACE INTO models (job_id, round, frame) VALUES (?, ?, ?)",
                (job_id, round_index + 1, next_model),
            )
            db.execute(
                "INSERT OR REPLACE INTO metrics (job_id, round, data) VALUES (?, ?, ?)",
                (job_id, round_index, json.dumps(metrics.as_dict())),
            )
            db.execute(
                "UPDATE jobs SET round = ?, status = ?, updated_at = ? WHERE job_id = ?",
                (round_index + 1, status, now, job_id),
            )

    # coordinator workers
    def hold_lease(self, name: str, holder: str, lease_s: float) -> bool:
        now = self._clock()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE leases.holder = excluded.holder "
                "OR leases.expires_at <= ?",
                (name, holder, now + lease_s, now),
            )
            row = db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
            return bool(row[0] == holder)

    def save_tally(self, job_id: str, round_index: int, checkpoint: TallyCheckpoint) -> None:
        with self._transaction() as db:
            _require_open_round(db, job_id, round_index)
            db.execute(
                "INSERT OR REPLACE INTO tallies (job_id, round, worker_id, attempt, agents, "
                "bytes_up, tally) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    round_index,
                    checkpoint.worker_id,
                    checkpoint.attempt,
                    json.dumps(checkpoint.agents),
                    checkpoint.bytes_up,
                    checkpoint.tally,
                ),
            )

    def list_tallies(self, job_id: str, round_index: int) -> list[TallyCheckpoint]:
        rows = self._query(
            "SELECT worker_id, attempt, agents, bytes_up, tally FROM tallies WHERE job_id = ? AND "
            "round = ? ORDER BY worker_id",
            (job_id, round_index),
        )
        return [tally_checkpoint(row) for row in rows]

    # models and metrics
    def get_model(self, job_id: str, round_index: int | None = None) -> bytes | None:
        if round_index is None:
            rows = self._query(
                "SELECT frame FROM models WHERE job_id = ? ORDER BY round DESC LIMIT 1", (job_id,)
            )
        else:
            rows = self._query(
                "SELECT frame FROM models WHERE job_id = ? AND round = ?", (job_id, round_index)
            )
        return bytes(rows[0]["frame"]) if rows else None

    def list_metrics(self, job_id: str) -> list[RoundMetrics]:
        rows = self._query("SELECT data FROM metrics WHERE job_id = ? ORDER BY round", (job_id,))
        return [round_metrics(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _require_job(db: sqlite3.Connection, job_id: str) -> None:
    if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is None:
        raise UnknownRecord(f"no job {job_id!r}")


def _require_open_round(db: sqlite3.Connection, job_id: str, round_index: int) -> None:
    found = db.execute(
        "SELECT 1 FROM rounds JOIN jobs USING (job_id) WHERE job_id = ? AND rounds.round = ? "
        "AND closed = 0",
        (job_id, round_index),
    ).fetchone()
    if found is None:
        raise UnknownRecord(f"job {job_id!r} has no open round {round_index}")


def _explain(error: sqlite3.Error) -> str:
    text = str(error)
    if "full" in text:
        return "the coordinator's disk is full: free space in the data directory and retry"
    return f"the state database refused the change ({text}); nothing was written"


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the database at ``path``, upgraded to :data:`SCHEMA_VERSION`."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous=FULL")
        _upgrade(db, path)
        db.execute("PRAGMA journal_mode=WAL")  # after the check: a refused file is left as is
    except BaseException:
        db.close()
        raise
    return db


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Run the steps from the database's version to ours in one transaction: a step that
    fails leaves the database as it was. A newer database is refused, unchanged."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StateVersionError(
                f"the state database {path} has schema version {found}, from a newer "
                f"bitfleet; bitfleet {__version__} reads schema versions up to "
                f"{SCHEMA_VERSION}: run the newer bitfleet that wrote it (upgrade this "
                "installation), or start with another --data-dir"
            )
        if found < 0:
            raise StoreError(
                f"the state database {path} has schema version {found}, which no bitfleet "
                "writes: restore it from a backup, or start with another --data-dir"
            )
        if found < SCHEMA_VERSION:
            for step in UPGRADES[found:]:
                step(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _to_version_1(db: sqlite3.Connection) -> None:
    """Version 0 is every database from before schema versions: the tables bitfleet made on
    first use, and a ``rounds`` table without ``vote_caps`` if it predates vote caps."""
    for statement in VERSION_1_TABLES.split(";"):
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(rounds)")}
    if "vote_caps" not in columns:
        db.execute("ALTER TABLE rounds ADD COLUMN vote_caps TEXT NOT NULL DEFAULT '{}'")


VERSION_2_TABLES = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tallies (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agents TEXT NOT NULL,
    bytes_up INTEGER NOT NULL,
    tally BLOB NOT NULL,
    PRIMARY KEY (job_id, round, worker_id)
);
"""


def _to_version_2(db: sqlite3.Connection) -> None:
    """Coordinator workers: the round engine's lease and each worker's partial tallies."""
    for statement in VERSION_2_TABLES.split(";"):
        db.execute(statement)


# The steps to the current schema: UPGRADES[n] turns version n into version n + 1, so the
# number of steps is the version this bitfleet writes (in PRAGMA user_version).
UPGRADES: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_version_1, _to_version_2)
SCHEMA_VERSION = len(UPGRADES)
