"""PostgreSQL implementation of :class:`StateStore`: for coordinators that share one database.

SQLite serves one coordinator process; several (behind a load balancer, or taking over from
each other) need a database they all reach, so this store keeps SqliteStore's semantics over
a PostgreSQL server, method for method. Every change is one transaction (``BEGIN ...
COMMIT``, rolled back on any error); PostgreSQL's errors become :class:`StoreError`.

Within a process, one connection serves every thread behind a lock, as in SqliteStore: the
coordinator's write rate is low. Across processes, PostgreSQL's row locks do the
serializing SQLite's single writer did: ``close_round`` locks the round's row first, so of
two coordinators closing the same round one closes it and the other finds it closed
(:class:`UnknownRecord`); ``add_upload`` holds that row shared, so no upload lands in a
round while it closes. Text ids use the "C" collation, so they sort bytewise as in SQLite
whatever the database's locale. JSON is stored as TEXT, exactly as written (JSONB would
reorder keys and refuse NaN).

The database carries its schema version (table ``bitfleet_schema``): opening creates the
tables in an empty database in one transaction, under an advisory lock so coordinators
starting together create them once, and refuses a newer version (:class:`StateVersionError`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import DictRow, dict_row

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

Connection = psycopg.Connection[DictRow]

# Version 1 of the layout. Later versions change it with steps of their own in UPGRADES,
# never by editing this. Plain CREATE TABLE: a database holding other tables of these names
# is refused, not adopted.
VERSION_1_TABLES = """
CREATE TABLE bitfleet_schema (version INTEGER NOT NULL);
CREATE TABLE agents (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen DOUBLE PRECISION,
    online BOOLEAN NOT NULL DEFAULT FALSE,
    transport TEXT,
    capabilities TEXT NOT NULL DEFAULT '{}',
    rounds_contributed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE jobs (
    job_id TEXT COLLATE "C" PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    round BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    reason TEXT
);
CREATE TABLE rounds (
    job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs(job_id),
    round BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION NOT NULL,
    selected TEXT NOT NULL,
    closed BOOLEAN NOT NULL DEFAULT FALSE,
    vote_caps TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, round)
);
CREATE TABLE uploads (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    job_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    samples BIGINT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    payload BYTEA NOT NULL,
    PRIMARY KEY (job_id, round, agent_id)
);
CREATE TABLE contributions (
    job_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (job_id, round, agent_id)
);
CREATE TABLE declines (
    job_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, agent_id)
);
CREATE TABLE models (
    job_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    frame BYTEA NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE metrics (
    job_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT COLLATE "C" NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE tallies (
    job_id TEXT COLLATE "C" NOT NULL,
    round BIGINT NOT NULL,
    worker_id TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL,
    agents TEXT NOT NULL,
    bytes_up BIGINT NOT NULL,
    tally BYTEA NOT NULL,
    PRIMARY KEY (job_id, round, worker_id)
);
-- Packed bits and signed frames do not compress: store them out of line as they are,
-- without PostgreSQL's trying to first.
ALTER TABLE uploads ALTER COLUMN payload SET STORAGE EXTERNAL;
ALTER TABLE models ALTER COLUMN frame SET STORAGE EXTERNAL;
ALTER TABLE tallies ALTER COLUMN tally SET STORAGE EXTERNAL
"""

# The advisory lock (per database) that schema creation and upgrades hold: "bitf".
SCHEMA_LOCK = 0x62697466


class PostgresStore(StateStore):
    """The shared store: the tables in one PostgreSQL database.

    Over the ~250 lines a class here should stay under, for SqliteStore's reason: one short
    method per :class:`StateStore` contract method, with schema and upgrades outside.
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        """``url`` is a libpq URL (``postgresql://user:password@host:port/database``);
        ``clock`` stamps every time the store writes, as in SqliteStore."""
        self._clock = clock
        self._url = url
        self.where = redacted(url)
        self._lock = threading.RLock()
        self._db = self._connect()
        try:
            _upgrade(self._db, self.where)
        except psycopg.Error as error:
            self._db.close()
            raise StoreError(
                f"cannot set up the state database {self.where}: {_text(error)}; give "
                "bitfleet an empty database of its own (or one it made) that it may create "
                "tables in"
            ) from None
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> Connection:
        try:
            return psycopg.connect(self._url, autocommit=True, row_factory=dict_row)
        except psycopg.Error as error:
            raise StoreError(
                f"cannot connect to the state database {self.where}: {_text(error)}; check "
                "that PostgreSQL is running there and accepts connections, and that the "
                "URL's host, port, database name, user and password are right"
            ) from None

    def _connection(self) -> Connection:
        """The connection, made anew if the last one broke (e.g. the server restarted)."""
        if self._db.broken:
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """BEGIN ... COMMIT, or ROLLBACK and a clear StoreError."""
        with self._lock:
            db = self._connection()
            try:
                with db.transaction():
                    yield db
            except psycopg.Error as error:
                raise StoreError(self._explain(error)) from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[DictRow]:
        if any(isinstance(arg, str) and "\x00" in arg for arg in args):
            return []  # PostgreSQL text cannot hold NUL, so no stored id has one
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except psycopg.Error as error:
                raise StoreError(
                    f"cannot read the state database {self.where}: {_text(error)}"
                ) from None

    def _explain(self, error: psycopg.Error) -> str:
        if isinstance(error, psycopg.errors.DiskFull):
            return "the database server's disk is full: free space there and retry"
        if self._db.broken:
            return (
                f"lost the connection to the state database {self.where} ({_text(error)}); "
                "the change was not confirmed; the next call connects again"
            )
        return f"the state database refused the change ({_text(error)}); nothing was written"

    # agents
    def create_agent(self, agent_id: str, secret: str) -> AgentRecord:
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO agents (agent_id, secret, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (agent_id, secret, now),
            )
            if cursor.rowcount != 1:
                raise AlreadyExists(
                    f"agent {agent_id!r} already exists; choose another id or revoke it first"
                )
        agent = self.get_agent(agent_id)
        assert agent is not None
        return agent

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = self._query("SELECT * FROM agents WHERE agent_id = %s", (agent_id,))
        return agent_record(rows[0]) if rows else None

    def agent_secret(self, agent_id: str) -> str | None:
        rows = self._query(
            "SELECT secret FROM agents WHERE agent_id = %s AND NOT revoked", (agent_id,)
        )
        return str(rows[0]["secret"]) if rows else None

    def list_agents(self) -> list[AgentRecord]:
        return [agent_record(row) for row in self._query("SELECT * FROM agents ORDER BY agent_id")]

    def revoke_agent(self, agent_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE agents SET revoked = TRUE, online = FALSE "
                "WHERE agent_id = %s AND NOT revoked",
                (agent_id,),
            )
            return cursor.rowcount == 1

    def record_presence(self, reports: Sequence[Presence]) -> None:
        rows = [
            (
                report.online,
                report.transport,
                report.seen_at,
                None if report.capabilities is None else json.dumps(report.capabilities),
                report.agent_id,
            )
            for report in reports
        ]
        with self._transaction() as db:
            db.cursor().executemany(
                "UPDATE agents SET online = %s, transport = %s, last_seen = %s, "
                "capabilities = COALESCE(%s, capabilities) WHERE agent_id = %s AND NOT revoked",
                rows,
            )

    # jobs
    def create_job(self, job_id: str, spec: dict[str, Any], initial_model: bytes) -> JobRecord:
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (job_id, spec, status, round, created_at, updated_at) "
                "VALUES (%s, %s, %s, 0, %s, %s) ON CONFLICT DO NOTHING",
                (job_id, json.dumps(spec), PENDING, now, now),
            )
            if cursor.rowcount != 1:
                raise AlreadyExists(f"job {job_id!r} already exists")
            db.execute(
                "INSERT INTO models (job_id, round, frame) VALUES (%s, 0, %s)",
                (job_id, initial_model),
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE job_id = %s", (job_id,))
        return job_record(rows[0]) if rows else None

    def list_jobs(self, statuses: tuple[str, ...] | None = None) -> list[JobRecord]:
        if statuses:
            rows = self._query(
                "SELECT * FROM jobs WHERE status = ANY(%s) ORDER BY created_at, job_id",
                (list(statuses),),
            )
        else:
            rows = self._query("SELECT * FROM jobs ORDER BY created_at, job_id")
        return [job_record(row) for row in rows]

    def set_job_status(self, job_id: str, status: str, reason: str | None = None) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = %s, reason = %s, updated_at = %s WHERE job_id = %s",
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
                "INSERT INTO rounds "
                "(job_id, round, attempt, opened_at, deadline, selected, closed, vote_caps) "
                "VALUES (%s, %s, %s, %s, %s, %s, FALSE, %s) "
                "ON CONFLICT (job_id, round) DO UPDATE SET attempt = EXCLUDED.attempt, "
                "opened_at = EXCLUDED.opened_at, deadline = EXCLUDED.deadline, "
                "selected = EXCLUDED.selected, closed = FALSE, vote_caps = EXCLUDED.vote_caps",
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
                "UPDATE jobs SET status = %s, reason = NULL, updated_at = %s WHERE job_id = %s",
                (status, now, job_id),
            )
        return RoundRecord(job_id, round_index, attempt, now, deadline, selected, caps)

    def get_open_round(self, job_id: str) -> RoundRecord | None:
        rows = self._query(
            "SELECT * FROM rounds WHERE job_id = %s AND NOT closed ORDER BY round DESC LIMIT 1",
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
            _require_open_round(db, job_id, round_index, "FOR SHARE")  # held until committed
            return [
                db.execute(
                    "INSERT INTO uploads (job_id, round, agent_id, samples, received_at, "
                    "payload) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (job_id, round_index, upload.agent_id, upload.samples, now, upload.payload),
                ).rowcount
                == 1
                for upload in uploads
            ]

    def upload_agents(self, job_id: str, round_index: int) -> list[str]:
        rows = self._query(
            "SELECT agent_id FROM uploads WHERE job_id = %s AND round = %s ORDER BY seq",
            (job_id, round_index),
        )
        return [row["agent_id"] for row in rows]

    def counted(self, job_id: str, round_index: int, agent_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM contributions WHERE job_id = %s AND round = %s AND agent_id = %s",
            (job_id, round_index, agent_id),
        )
        return bool(rows)

    def add_decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> None:
        with self._transaction() as db:
            _require_job(db, job_id)
            db.execute(
                "INSERT INTO declines (job_id, agent_id, round, reason) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (job_id, agent_id) DO UPDATE SET round = EXCLUDED.round, "
                "reason = EXCLUDED.reason",
                (job_id, agent_id, round_index, reason),
            )

    def list_declines(self, job_id: str) -> list[DeclineRecord]:
        rows = self._query(
            "SELECT agent_id, round, reason FROM declines WHERE job_id = %s ORDER BY agent_id",
            (job_id,),
        )
        return [DeclineRecord(row["agent_id"], row["round"], row["reason"]) for row in rows]

    def get_upload(self, job_id: str, round_index: int, agent_id: str) -> UploadRecord | None:
        rows = self._query(
            "SELECT samples, payload FROM uploads WHERE job_id = %s AND round = %s "
            "AND agent_id = %s",
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
        key = (job_id, round_index)
        uploaders = "SELECT agent_id FROM uploads WHERE job_id = %s AND round = %s"
        with self._transaction() as db:
            # The round's row first: a second closer waits here, then finds it closed.
            _require_open_round(db, job_id, round_index, "FOR UPDATE")
            # The agents' rows in id order, so that closes of other jobs cannot deadlock us.
            db.execute(
                f"SELECT 1 FROM agents WHERE agent_id IN ({uploaders}) ORDER BY agent_id "
                "FOR UPDATE",
                key,
            )
            db.execute(
                "UPDATE agents SET rounds_contributed = rounds_contributed + 1 "
                f"WHERE agent_id IN ({uploaders})",
                key,
            )
            db.execute(
                "INSERT INTO contributions (job_id, round, agent_id) "
                "SELECT job_id, round, agent_id FROM uploads WHERE job_id = %s AND round = %s "
                "ON CONFLICT DO NOTHING",
                key,
            )
            db.execute("DELETE FROM uploads WHERE job_id = %s AND round = %s", key)
            db.execute("DELETE FROM tallies WHERE job_id = %s AND round = %s", key)
            db.execute("UPDATE rounds SET closed = TRUE WHERE job_id = %s AND round = %s", key)
            if slim_model is not None:
                db.execute(
                    "UPDATE models SET frame = %s WHERE job_id = %s AND round = %s",
                    (slim_model, *key),
                )
            db.execute(
                "INSERT INTO models (job_id, round, frame) VALUES (%s, %s, %s) "
                "ON CONFLICT (job_id, round) DO UPDATE SET frame = EXCLUDED.frame",
                (job_id, round_index + 1, next_model),
            )
            db.execute(
                "INSERT INTO metrics (job_id, round, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (job_id, round) DO UPDATE SET data = EXCLUDED.data",
                (*key, json.dumps(metrics.as_dict())),
            )
            db.execute(
                "UPDATE jobs SET round = %s, status = %s, updated_at = %s WHERE job_id = %s",
                (round_index + 1, status, now, job_id),
            )

    # coordinator workers
    def hold_lease(self, name: str, holder: str, lease_s: float) -> bool:
        now = self._clock()
        with self._transaction() as db:
            # Racing holders serialize on the lease's row; the condition is checked again on
            # the row the winner committed, so a loser's update does nothing (no row back).
            held = db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
                "expires_at = EXCLUDED.expires_at WHERE leases.holder = EXCLUDED.holder "
                "OR leases.expires_at <= %s RETURNING holder",
                (name, holder, now + lease_s, now),
            ).fetchone()
            return held is not None

    def save_tally(self, job_id: str, round_index: int, checkpoint: TallyCheckpoint) -> None:
        with self._transaction() as db:
            _require_open_round(db, job_id, round_index, "FOR SHARE")  # as add_upload
            db.execute(
                "INSERT INTO tallies (job_id, round, worker_id, attempt, agents, bytes_up, "
                "tally) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, round, "
                "worker_id) DO UPDATE SET attempt = EXCLUDED.attempt, agents = EXCLUDED.agents, "
                "bytes_up = EXCLUDED.bytes_up, tally = EXCLUDED.tally",
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
            "SELECT worker_id, attempt, agents, bytes_up, tally FROM tallies WHERE job_id = %s AND "
            "round = %s ORDER BY worker_id",
            (job_id, round_index),
        )
        return [tally_checkpoint(row) for row in rows]

    # models and metrics
    def get_model(self, job_id: str, round_index: int | None = None) -> bytes | None:
        if round_index is None:
            rows = self._query(
                "SELECT frame FROM models WHERE job_id = %s ORDER BY round DESC LIMIT 1",
                (job_id,),
            )
        else:
            rows = self._query(
                "SELECT frame FROM models WHERE job_id = %s AND round = %s", (job_id, round_index)
            )
        return bytes(rows[0]["frame"]) if rows else None

    def list_metrics(self, job_id: str) -> list[RoundMetrics]:
        rows = self._query("SELECT data FROM metrics WHERE job_id = %s ORDER BY round", (job_id,))
        return [round_metrics(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _require_job(db: Connection, job_id: str) -> None:
    if db.execute("SELECT 1 FROM jobs WHERE job_id = %s", (job_id,)).fetchone() is None:
        raise UnknownRecord(f"no job {job_id!r}")


def _require_open_round(db: Connection, job_id: str, round_index: int, lock: str) -> None:
    """Check the round is open, locking its row (``FOR SHARE`` or ``FOR UPDATE``) until the
    transaction ends. A row that closes while we wait for it no longer matches."""
    found = db.execute(
        f"SELECT 1 FROM rounds WHERE job_id = %s AND round = %s AND NOT closed {lock}",
        (job_id, round_index),
    ).fetchone()
    if found is None:
        raise UnknownRecord(f"job {job_id!r} has no open round {round_index}")


def _text(error: psycopg.Error) -> str:
    """psycopg's message on one line."""
    return " ".join(str(error).split())


def redacted(url: str) -> str:
    """The URL without its password, to show in messages and logs."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    query = "&".join(
        pair for pair in parts.query.split("&") if not pair.lower().startswith("password=")
    )
    netloc = f"{user.partition(':')[0]}{at}{host}"
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}"


def _upgrade(db: Connection, where: str) -> None:
    """Run the steps from the database's version to ours in one transaction, holding the
    schema lock: a step that fails leaves the database as it was, and of coordinators
    opening it together the first upgrades it and the others find it done. A newer database
    is refused, unchanged."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        found = 0  # no bitfleet_schema table: an empty database
        made = db.execute("SELECT to_regclass('bitfleet_schema') IS NOT NULL AS made").fetchone()
        if made is not None and made["made"]:
            row = db.execute("SELECT version FROM bitfleet_schema").fetchone()
            found = 0 if row is None else int(row["version"])
        if found > SCHEMA_VERSION:
            raise StateVersionError(
                f"the state database {where} has schema version {found}, from a newer "
                f"bitfleet; bitfleet {__version__} reads schema versions up to "
                f"{SCHEMA_VERSION}: run the newer bitfleet that wrote it (upgrade this "
                "installation), or use another database"
            )
        if found < 0:
            raise StoreError(
                f"the state database {where} has schema version {found}, which no bitfleet "
                "writes: restore it from a backup, or use another database"
            )
        if found < SCHEMA_VERSION:
            for step in UPGRADES[found:]:
                step(db)
            db.execute("DELETE FROM bitfleet_schema")
            db.execute("INSERT INTO bitfleet_schema (version) VALUES (%s)", (SCHEMA_VERSION,))


def _to_version_1(db: Connection) -> None:
    """Version 0 is an empty database: create the tables."""
    for statement in VERSION_1_TABLES.split(";"):
        db.execute(statement)


# The steps to the current schema: UPGRADES[n] turns version n into version n + 1, so the
# number of steps is the version this bitfleet writes (in bitfleet_schema).
UPGRADES: tuple[Callable[[Connection], None], ...] = (_to_version_1,)
SCHEMA_VERSION = len(UPGRADES)
