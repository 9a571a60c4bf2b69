"""The agent's MQTT transport against a real mosquitto, with a bare client playing the
coordinator: sealed round models, a task replaced mid-download, waiting for a new task."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bitfleet.edge_agent.transports import TransportTimeout
from bitfleet.edge_agent.transports.mqtt import MqttTransport
from bitfleet.frames import FrameError
from bitfleet.protocol import (
    AgentStatus,
    Task,
    agent_tasks_topic,
    encode_message,
    round_model_topic,
)
from bitfleet.sealing import SealedModel, seal
from tests.cluster import Broker
from tests.mqttraw import raw_client

MODEL = bytes(range(256)) * 40  # 10 KiB: three slices of 4 KiB


@pytest.fixture
def cluster(tmp_path: Path, tls_ca: Any) -> Iterator[tuple[Broker, MqttTransport, Any]]:
    """A broker, an agent's transport logged in as ``pi``, and the coordinator's client."""
    broker = Broker(tmp_path / "broker", worker_users=["pi"], tls=tls_ca).start()
    agent = MqttTransport(broker.agent_url, "pi", broker.worker_passwords["pi"])
    try:
        with raw_client(broker, broker.user, broker.password, "coordinator") as (coord, _, _):
            agent.start(AgentStatus("pi", "online"))
            assert agent.connected.wait(10)
            yield broker, agent, coord
    finally:
        agent.close()
        broker.stop()


def _publish(coordinator: Any, task: Task, sealed: SealedModel | None) -> Task:
    """What the coordinator's bridge does: the sealed slices, then the keyed task."""
    keyed = task
    if sealed is not None:
        slices = sealed.slices(4096)
        base = round_model_topic(task.job_id, task.round)
        for index, part in enumerate(slices):
            coordinator.publish(f"{base}/{index}", part, qos=1, retain=True).wait_for_publish(5)
        keyed = replace(
            task, model_chunks=len(slices), model_key=sealed.key, model_sha256=sealed.sha256
        )
    message = encode_message(keyed)
    coordinator.publish(agent_tasks_topic("pi"), message, qos=1, retain=True).wait_for_publish(5)
    return keyed


def _task(round_index: int = 0) -> Task:
    return Task("job-1", round_index, "bitflip", time.time() + 600)


def test_the_agent_opens_the_sealed_model_its_task_names(cluster: Any) -> None:
    _, agent, coordinator = cluster
    task = _publish(coordinator, _task(), seal(MODEL))
    assert task.model_chunks == 3
    assert agent.next_task(10) == task
    assert agent.fetch_model(task, 10) == MODEL


def test_a_model_that_is_not_the_one_the_task_names_is_refused(cluster: Any) -> None:
    _, agent, coordinator = cluster
    task = _publish(coordinator, _task(), seal(MODEL))
    assert agent.next_task(10) == task
    other = seal(MODEL)  # same slices' topics, another key: the task's digest does not match
    base = round_model_topic("job-1", 0)
    for index, part in enumerate(other.slices(4096)):
        coordinator.publish(f"{base}/{index}", part, qos=1, retain=True).wait_for_publish(5)
    with pytest.raises(FrameError) as refused:  # after waiting for its own, in vain
        agent.fetch_model(task, 2)
    assert refused.value.reason == "sealed"


def test_a_task_replaced_mid_download_ends_the_wait_at_once(cluster: Any) -> None:
    """A restarted coordinator seals the round anew, slices first, task after: the old
    task's download waits past the new slices, stops when the task changes (without
    waiting out its timeout), and the new task's model opens."""
    _, agent, coordinator = cluster
    first = _publish(coordinator, replace(_task(), model_chunks=3, model_key="1" * 64), None)
    assert agent.next_task(10) == first
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            agent.fetch_model(first, 60)
        except TransportTimeout as error:
            outcome.append(error)

    waiting = threading.Thread(target=fetch)
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)
    second = _publish(coordinator, _task(), seal(MODEL))
    waiting.join(20)
    assert outcome and "task changed" in str(outcome[0])
    assert time.monotonic() - started < 20  # not the 60 s timeout
    assert agent.next_task(10, seen=first) == second
    assert agent.fetch_model(second, 10) == MODEL


def test_next_task_waits_for_a_task_other_than_the_one_served(cluster: Any) -> None:
    _, agent, coordinator = cluster
    served = _publish(coordinator, _task(0), seal(MODEL))
    assert agent.next_task(10) == served
    started = time.monotonic()
    assert agent.next_task(1.0, seen=served) == served  # nothing new: the whole wait
    assert time.monotonic() - started >= 0.9
    later = threading.Timer(0.5, _publish, (coordinator, _task(1), seal(MODEL)))
    later.start()
    started = time.monotonic()
    fresh = agent.next_task(30, seen=served)
    assert fresh is not None and fresh.round == 1
    assert time.monotonic() - started < 20  # woken by the task, not the timeout
    later.join()
