"""What only the PostgreSQL store does: a server several coordinators share (their races on
one round or lease serialize), a schema version in the database, PostgreSQL's refusals and
lost connections as clear errors, and ids sorted bytewise whatever the database's locale.
The behaviour every store shares is in test_store_contract.py; every test here runs on a
real server (tests/postgres.py), in a database of its own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bitfleet.jobstatus import RUNNING
from bitfleet.server.state import PostgresStore, SqliteStore, StateVersionError, StoreError
from bitfleet.server.state import open_store as open_any_store
from bitfleet.server.state.base import RoundMetrics, TallyCheckpoint, UnknownRecord
from bitfleet.server.state.postgres import SCHEMA_VERSION, redacted
from tests.cluster import free_port
from tests.inprocess import EPOCH, ManualClock
from tests.postgres import PostgresServer

METRICS = RoundMetrics(0, 0.5, 1.0, 1, 7, 9, 0.1)
Opener = Callable[[], PostgresStore]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def open_store(postgres_url: str, clock: ManualClock) -> Iterator[Opener]:
    """Open another store (another connection, as another coordinator would) on this test's
    database; all are closed after the test."""
    opened: list[PostgresStore] = []

    def open_one() -> PostgresStore:
        opened.append(PostgresStore(postgres_url, clock))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def running(open_store: Opener) -> PostgresStore:
    """A store with agents a1 and a2 and job-1's round 0 open for both."""
    store = open_store()
    store.create_agent("a1", "s1")
    store.create_agent("a2", "s2")
    store.create_job("job-1", {"name": "x", "rounds": 2}, b"model-0")
    store.open_round("job-1", 0, 0, EPOCH + 60, ["a1", "a2"], RUNNING)
    return store


def _sql(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements with plain psycopg, as another program would; the rows of the last."""
    with psycopg.connect(url, autocommit=True) as db:
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            cursor = db.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the database holds: each table's rows."""
    tables = _sql(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "ORDER BY table_name",
    )
    return {name: sorted(_sql(url, f'SELECT * FROM "{name}"'), key=repr) for (name,) in tables}


def _version(url: str) -> int:
    return int(_sql(url, "SELECT version FROM bitfleet_schema")[0][0])


def _wait_for_lock_waiters(url: str, count: int, timeout: float = 15.0) -> None:
    """Until ``count`` sessions on the database wait for a lock (a row another holds)."""
    deadline = time.monotonic() + timeout
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    while _sql(url, query)[0][0] < count:
        assert time.monotonic() < deadline, f"{count} sessions never waited for a lock"
        time.sleep(0.02)


# schema


def test_an_empty_database_gets_the_tables_and_the_current_schema_version(
    open_store: Opener, postgres_url: str
) -> None:
    open_store()
    assert _version(postgres_url) == SCHEMA_VERSION == 1
    assert set(_dump(postgres_url)) == {
        "agents",
        "bitfleet_schema",
        "contributions",
        "declines",
        "jobs",
        "leases",
        "metrics",
        "models",
        "rounds",
        "tallies",
        "uploads",
    }


def test_a_database_from_a_newer_bitfleet_is_refused_and_left_alone(
    running: PostgresStore, postgres_url: str
) -> None:
    running.close()
    newer = SCHEMA_VERSION + 1
    _sql(postgres_url, f"UPDATE bitfleet_schema SET version = {newer}")
    before = _dump(postgres_url)
    with pytest.raises(StateVersionError) as refused:
        PostgresStore(postgres_url)
    message = str(refused.value)
    assert f"{postgres_url} has schema version {newer}, from a newer bitfleet" in message
    assert f"reads schema versions up to {SCHEMA_VERSION}" in message
    assert "run the newer bitfleet that wrote it" in message
    assert _dump(postgres_url) == before


def test_a_negative_schema_version_is_refused(open_store: Opener, postgres_url: str) -> None:
    open_store().close()
    _sql(postgres_url, "UPDATE bitfleet_schema SET version = -1")
    with pytest.raises(StoreError, match="schema version -1, which no bitfleet writes"):
        PostgresStore(postgres_url)
    assert _version(postgres_url) == -1


def test_a_database_with_another_programs_tables_is_refused_and_left_alone(
    postgres_url: str,
) -> None:
    _sql(postgres_url, "CREATE TABLE jobs (id INTEGER)", "INSERT INTO jobs VALUES (7)")
    before = _dump(postgres_url)
    with pytest.raises(StoreError, match=r'relation "jobs" already exists; give bitfleet an'):
        PostgresStore(postgres_url)
    assert _dump(postgres_url) == before


def test_coordinators_opening_an_empty_database_together_create_it_once(
    open_store: Opener, postgres_url: str
) -> None:
    start = threading.Barrier(6)
    outcomes: list[object] = []

    def open_together() -> None:
        start.wait()
        try:
            outcomes.append(open_store())
        except Exception as error:  # any failure fails the test below, with its message
            outcomes.append(error)

    threads = [threading.Thread(target=open_together) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(outcome, PostgresStore) for outcome in outcomes), outcomes
    assert _sql(postgres_url, "SELECT version FROM bitfleet_schema") == [(SCHEMA_VERSION,)]


# several coordinators on one database


def test_two_stores_on_one_database_see_each_others_changes(open_store: Opener) -> None:
    first, second = open_store(), open_store()
    first.create_agent("a1", "s1")
    second.create_job("job-1", {}, b"model-0")
    second.open_round("job-1", 0, 0, EPOCH + 60, ["a1"], RUNNING)
    assert first.add_upload("job-1", 0, "a1", 5, b"vote") is True
    assert second.add_upload("job-1", 0, "a1", 5, b"resent") is False
    second.close_round("job-1", 0, b"model-1", METRICS, RUNNING)
    assert first.get_model("job-1") == b"model-1" and first.counted("job-1", 0, "a1")
    assert [agent.rounds_contributed for agent in second.list_agents()] == [1]


def test_of_two_coordinators_closing_one_round_one_closes_it_the_other_finds_it_closed(
    running: PostgresStore, open_store: Opener, postgres_url: str
) -> None:
    running.add_upload("job-1", 0, "a1", 5, b"vote-a1")
    closers = [open_store(), open_store()]
    outcomes: dict[bytes, str] = {}
    # A third party holds the round's row, so that both closers are inside close_round,
    # waiting on it, before either goes on.
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("SELECT 1 FROM rounds WHERE job_id = 'job-1' AND round = 0 FOR UPDATE")

        def close(store: PostgresStore, model: bytes) -> None:
            try:
                store.close_round("job-1", 0, model, METRICS, RUNNING)
                outcomes[model] = "closed"
            except UnknownRecord:
                outcomes[model] = "refused"

        threads = [
            threading.Thread(target=close, args=(store, f"model-1 by {i}".encode()))
            for i, store in enumerate(closers)
        ]
        for thread in threads:
            thread.start()
        _wait_for_lock_waiters(postgres_url, 2)
        blocker.rollback()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["closed", "refused"]
    (winner,) = (model for model, outcome in outcomes.items() if outcome == "closed")
    assert running.get_model("job-1") == winner
    assert [agent.rounds_contributed for agent in running.list_agents()] == [1, 0]
    assert running.list_metrics("job-1") == [METRICS]


def test_uploads_racing_a_close_are_counted_or_refused_never_left_behind(
    running: PostgresStore, open_store: Opener
) -> None:
    agents = [f"b{i}" for i in range(6)]
    uploaders = [open_store() for _ in agents]
    closer = open_store()
    for round_index in range(4):
        if round_index:
            running.open_round("job-1", round_index, 0, EPOCH + 60, agents, RUNNING)
        accepted = _race_uploads_and_close(
            round_index, dict(zip(agents, uploaders, strict=True)), closer
        )
        for agent_id, stored in accepted.items():
            assert running.counted("job-1", round_index, agent_id) is stored, agent_id
        assert running.upload_agents("job-1", round_index) == []


def _race_uploads_and_close(
    round_index: int, uploaders: dict[str, PostgresStore], closer: PostgresStore
) -> dict[str, bool]:
    """Each agent uploads through a store of its own while ``closer`` closes the round, all
    at once; whether each upload was stored."""
    accepted: dict[str, bool] = {}
    start = threading.Barrier(len(uploaders) + 1)

    def upload(agent_id: str, store: PostgresStore) -> None:
        start.wait()
        try:
            accepted[agent_id] = store.add_upload("job-1", round_index, agent_id, 1, b"v")
        except UnknownRecord:
            accepted[agent_id] = False

    def close() -> None:
        start.wait()
        closer.close_round("job-1", round_index, b"m", METRICS, RUNNING)

    threads = [threading.Thread(target=close)]
    threads += [threading.Thread(target=upload, args=pair) for pair in uploaders.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return accepted


def test_of_coordinators_racing_for_an_expired_lease_exactly_one_takes_it(
    open_store: Opener, clock: ManualClock
) -> None:
    stores = [open_store() for _ in range(4)]
    assert stores[0].hold_lease("round-engine", "old", 5.0)
    clock.advance(5.0)
    won: list[str] = []
    start = threading.Barrier(len(stores))

    def race(store: PostgresStore, holder: str) -> None:
        start.wait()
        if store.hold_lease("round-engine", holder, 5.0):
            won.append(holder)

    threads = [
        threading.Thread(target=race, args=(store, f"w{i}")) for i, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert not stores[0].hold_lease("round-engine", "old", 5.0)


# refusals and connections


def test_a_refusal_at_the_last_step_of_a_close_writes_nothing(
    running: PostgresStore, postgres_url: str
) -> None:
    running.add_upload("job-1", 0, "a1", 5, b"payload")
    running.save_tally("job-1", 0, TallyCheckpoint("w1", 0, ["a1"], 7, b"tally"))
    # A real refusal by PostgreSQL at the close's last statement, after the rest is written.
    _sql(
        postgres_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected refusal'; END $$",
        "CREATE TRIGGER refuse BEFORE UPDATE OF round ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    before = _dump(postgres_url)
    with pytest.raises(StoreError, match=r"refused the change .*injected refusal"):
        running.close_round("job-1", 0, b"model-1", METRICS, RUNNING, b"model-0 slim")
    assert _dump(postgres_url) == before
    _sql(postgres_url, "DROP TRIGGER refuse ON jobs")
    running.close_round("job-1", 0, b"model-1", METRICS, RUNNING)  # the store still works
    assert running.counted("job-1", 0, "a1")


def test_a_refused_connection_names_the_database_without_its_password() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreError) as refused:
        PostgresStore(f"postgresql://bitfleet:hunter2@127.0.0.1:{port}/state?sslmode=disable")
    message = str(refused.value)
    assert message.startswith(
        f"cannot connect to the state database postgresql://bitfleet@127.0.0.1:{port}/state"
        "?sslmode=disable: "
    )
    assert "Connection refused" in message
    assert "check that PostgreSQL is running there and accepts connections" in message
    assert "hunter2" not in message


def test_a_lost_connection_is_a_store_error_and_the_next_call_connects_again(
    running: PostgresStore, postgres_url: str
) -> None:
    def cut() -> None:
        _sql(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )

    cut()
    with pytest.raises(StoreError, match="cannot read the state database"):
        running.get_job("job-1")
    assert running.get_job("job-1") is not None
    cut()
    with pytest.raises(StoreError, match="lost the connection to the state database"):
        running.add_upload("job-1", 0, "a1", 5, b"vote")
    assert running.add_upload("job-1", 0, "a1", 5, b"vote") is True
    running.close()
    with pytest.raises(StoreError):  # never a psycopg error, even used after close
        running.get_job("job-1")


def test_the_password_leaves_the_url_wherever_it_is_given() -> None:
    assert redacted("postgresql://u:p%40ss@db.example:5433/state") == (
        "postgresql://u@db.example:5433/state"
    )
    assert redacted("postgres://db/state?password=x&sslmode=require") == (
        "postgres://db/state?sslmode=require"
    )
    assert redacted("postgresql:///state") == "postgresql:///state"


def test_an_id_postgresql_cannot_store_is_simply_unknown(running: PostgresStore) -> None:
    assert running.get_agent("a1\x00") is None and running.agent_secret("a1\x00") is None
    assert running.get_job("job-1\x00") is None and running.upload_agents("job\x00", 0) == []


# ordering


@pytest.fixture
def linguistic_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database whose default collation sorts text as people read it (ICU, en-US)."""
    name = postgres_server.create_database(
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
    )
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def test_ids_sort_bytewise_as_in_sqlite_whatever_the_databases_collation(
    linguistic_url: str, tmp_path: Path
) -> None:
    assert _sql(linguistic_url, "SELECT 'B' < 'a'") == [(False,)]  # linguistic by default
    ids = ["b", "B", "a-b", "é", "ab", "a"]
    bytewise = sorted(ids)
    assert bytewise == ["B", "a", "a-b", "ab", "b", "é"]
    for store in (PostgresStore(linguistic_url), SqliteStore(tmp_path / "bitfleet.db")):
        store.create_job("job", {}, b"m")
        store.open_round("job", 0, 0, EPOCH, ids, RUNNING)
        for agent_id in ids:
            store.create_agent(agent_id, "s")
            store.add_decline("job", 0, agent_id, "no")
            store.save_tally("job", 0, TallyCheckpoint(agent_id, 0, [], 0, b""))
        assert [agent.agent_id for agent in store.list_agents()] == bytewise
        assert [decline.agent_id for decline in store.list_declines("job")] == bytewise
        assert [tally.worker_id for tally in store.list_tallies("job", 0)] == bytewise
        store.close()


def test_jobs_created_at_one_instant_list_in_bytewise_id_order(linguistic_url: str) -> None:
    store = PostgresStore(linguistic_url, ManualClock())
    for job_id in ("b", "B", "a"):
        store.create_job(job_id, {}, b"m")
    assert [job.job_id for job in store.list_jobs()] == ["B", "a", "b"]
    store.close()


# open_store


def test_open_store_opens_postgresql_for_a_url_and_sqlite_for_a_directory(
    postgres_url: str, tmp_path: Path
) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://")):
        store = open_any_store(url)
        assert isinstance(store, PostgresStore)
        store.close()
    store = open_any_store(tmp_path)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "bitfleet.db"
    store.close()


def test_without_psycopg_the_state_imports_and_a_url_says_what_to_install(
    tmp_path: Path,
) -> None:
    script = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('psycopg', 'psycopg_binary'):\n"
        "            raise ImportError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from bitfleet.errors import ConfigError\n"
        "from bitfleet.server.state import open_store\n"
        f"open_store({str(tmp_path)!r}).close()\n"
        "try:\n"
        "    open_store('postgresql://127.0.0.1/state')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "a PostgreSQL state database needs the server extra: pip install "
        "'bitfleet[server]' (psycopg is missing)\n"
    )
