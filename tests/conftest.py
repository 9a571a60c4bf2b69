"""Fixtures that start real parts: a Mosquitto broker and coordinator processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Broker, Coordinator


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    started = Broker(tmp_path / "broker").start()
    yield started
    started.stop()


@pytest.fixture
def coordinator(tmp_path: Path, broker: Broker) -> Iterator[Coordinator]:
    started = Coordinator(tmp_path / "coordinator", broker).start()
    yield started
    started.kill()


@pytest.fixture
def http_coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator without a broker: the HTTP transport only."""
    started = Coordinator(tmp_path / "coordinator").start()
    yield started
    started.kill()
