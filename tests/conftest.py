"""Fixtures that start real parts: a Mosquitto broker and coordinator processes, over TLS,
and PostgreSQL databases (``postgres_url``, from tests/postgres.py).

One throwaway CA serves the whole session; ``BITFLEET_CA_FILE`` points every client (the
agent processes, the CLIs, in-process transports) at it, as an operator with a private CA
would set it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitfleet.server.tlsca import ThrowawayCa, create_ca
from bitfleet.tls import CA_FILE_ENV
from tests.cluster import Broker, Coordinator
from tests.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)


@pytest.fixture(scope="session", autouse=True)
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayCa]:
    ca = create_ca(tmp_path_factory.mktemp("ca"))
    previous = os.environ.get(CA_FILE_ENV)
    os.environ[CA_FILE_ENV] = str(ca.ca)
    yield ca
    if previous is None:
        os.environ.pop(CA_FILE_ENV, None)
    else:
        os.environ[CA_FILE_ENV] = previous


@pytest.fixture
def broker(tmp_path: Path, tls_ca: ThrowawayCa) -> Iterator[Broker]:
    started = Broker(tmp_path / "broker", tls=tls_ca).start()
    yield started
    started.stop()


@pytest.fixture
def coordinator(tmp_path: Path, broker: Broker, tls_ca: ThrowawayCa) -> Iterator[Coordinator]:
    started = Coordinator(tmp_path / "coordinator", broker, tls=tls_ca).start()
    yield started
    started.kill()


@pytest.fixture
def http_coordinator(tmp_path: Path, tls_ca: ThrowawayCa) -> Iterator[Coordinator]:
    """A coordinator without a broker: the HTTP transport only."""
    started = Coordinator(tmp_path / "coordinator", tls=tls_ca).start()
    yield started
    started.kill()
