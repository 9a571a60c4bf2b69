"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster, no mock.

Each pytest process (each xdist worker) that needs one starts its own server, on first use:
``initdb`` into a fresh directory under /tmp, then ``postgres`` listening on 127.0.0.1 at a
free port and on a socket in that directory, with fsync off (nothing here must survive a
crash). initdb and postgres refuse to run as root, which the machine and CI are: then they
run as Debian's ``postgres`` system user, the directory handed to it. The server dies with
the process that started it (a parent-death signal), so a killed test run leaves none behind.

Each test gets a database of its own (``postgres_url``), dropped after it, so tests stay
independent on a shared server. Without the server binaries the tests fail, saying how to
install them: CI installs them, so a skip would hide a broken setup.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.cluster import free_port

SUPERUSER = "postgres"


def server_binaries() -> Path:
    """The newest Debian PostgreSQL server's bin directory (where initdb and postgres are;
    ``pg_config --bindir`` names the client's, which may differ), else one on PATH."""
    found = sorted(
        (path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/postgres")),
        key=lambda bindir: [int(part) for part in re.findall(r"\d+", bindir.parent.name)],
    )
    if found and (found[-1] / "initdb").exists():
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    pytest.fail(
        "the PostgreSQL tests need the server binaries (initdb, postgres), found neither "
        "under /usr/lib/postgresql/*/bin nor on PATH: run scripts/install-system-deps.sh",
        pytrace=False,
    )


class PostgresServer:
    """One throwaway cluster: ``start()`` it, make databases, ``stop()`` it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="bitfleet-pg-"))  # short: the socket's path
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)

    def _command(self, program: str, *args: str) -> list[str]:
        """``program`` from the server's bin directory, run as the postgres user if we are
        root, and sent SIGINT (a fast shutdown) should this process die."""
        switch = ["--reuid", SUPERUSER, "--regid", SUPERUSER, "--init-groups"]
        return [
            "setpriv",
            *(switch if self._as_root else []),
            "--pdeathsig",
            "INT",
            str(self.bindir / program),
            *args,
        ]

    def start(self, attempts: int = 3) -> PostgresServer:
        options = ["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        initdb = self._command("initdb", "-D", str(self.data), *options)
        done = subprocess.run(initdb, cwd=self.root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        for _ in range(attempts):  # another process may take the free port before we bind it
            self.port = free_port()
            if self._run():
                return self
        raise RuntimeError(f"postgres did not start; its log:\n{self.log.read_text()}")

    def _run(self, timeout: float = 30.0) -> bool:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "200",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data), *options),
                cwd=self.root,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self._stop_process()
        return False

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[TupleRow]:
        """A superuser connection to the maintenance database, in autocommit."""
        return psycopg.connect(self.url("postgres"), autocommit=True)

    def create_database(self, options: str = "") -> str:
        """A new empty database (``options`` appended to CREATE DATABASE); its name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}" {options}')
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, disconnecting whoever still uses it (a store a test left open)."""
        with self.admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _stop_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # fast shutdown: clients are cut off
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def stop(self) -> None:
        self._stop_process()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This process's server, started on first use and stopped at the end of the session."""
    server = PostgresServer(server_binaries())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database of this test's own, dropped after it."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
