"""The MQTT bridge's upload queue, in-process over a real SQLite file: uploads handed over
by a transport thread are all answered, in batches, within the queue's byte bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from bitfleet.chunks import split_frame
from bitfleet.protocol import update_topic
from bitfleet.server.mqtt_bridge import MqttBridge
from bitfleet.server.service import Coordinator
from bitfleet.server.state.base import RoundMetrics
from bitfleet.server.upload_batches import UploadBatches
from bitfleet.server.uploads import Upload
from tests.inprocess import FakePublisher
from tests.manual import echo_update
from tests.test_engine_faults import _coordinator, _open_round

AGENTS = 12


def _uploads(coordinator: Coordinator, job_id: str, agents: list[str]) -> list[Upload]:
    uploads = []
    for agent_id in agents:
        model = coordinator.tasks.model(job_id, 0, agent_id)
        frame = echo_update(model, job_id, 0, agent_id, f"secret-{agent_id[1:]}", False, 10)
        uploads.append(Upload(job_id, 0, agent_id, frame, "mqtt"))
    return uploads


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_queued_upload_is_stored_once_and_answered(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    publisher = FakePublisher()
    coordinator.fanout.add(publisher)
    job_id, agents = _open_round(coordinator, AGENTS, min_agents=AGENTS, rounds=2)
    uploads = _uploads(coordinator, job_id, agents)
    batches = UploadBatches(coordinator.uploads, coordinator.conditions)
    batches.start()
    try:
        for upload in [*uploads, uploads[0]]:  # one sent twice
            batches.submit(upload)
        _wait(lambda: len(publisher.receipts) == AGENTS + 1)
    finally:
        batches.stop()
    reasons = sorted(r.reason for r in publisher.receipts)
    assert reasons == [""] * AGENTS + ["resent"]
    assert all(r.accepted for r in publisher.receipts)
    assert sorted(coordinator.store.upload_agents(job_id, 0)) == sorted(agents)
    coordinator.scheduler.tick()  # the round is complete: it closes with every upload counted
    metrics: list[RoundMetrics] = coordinator.jobs.metrics(job_id)
    assert [m.uploads for m in metrics] == [AGENTS]


def test_a_full_queue_holds_the_transport_until_there_is_room(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    publisher = FakePublisher()
    coordinator.fanout.add(publisher)
    job_id, agents = _open_round(coordinator, 3, min_agents=3, rounds=2)
    uploads = _uploads(coordinator, job_id, agents)
    # Room for one upload at a time; the writer is not running yet, so the second waits.
    batches = UploadBatches(coordinator.uploads, coordinator.conditions, max_waiting_bytes=1)
    batches.submit(uploads[0])  # larger than the bound, but the queue is empty
    second = threading.Thread(target=batches.submit, args=(uploads[1],))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # held: the queue is full
    batches.start()
    second.join(timeout=30)
    assert not second.is_alive()
    batches.submit(uploads[2])
    _wait(lambda: len(publisher.receipts) == 3)
    batches.stop()
    assert [r.reason for r in publisher.receipts] == ["", "", ""]


def test_stopping_answers_what_waits(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path / "state.db")
    publisher = FakePublisher()
    coordinator.fanout.add(publisher)
    job_id, agents = _open_round(coordinator, 4, min_agents=4, rounds=2)
    batches = UploadBatches(coordinator.uploads, coordinator.conditions)
    for upload in _uploads(coordinator, job_id, agents):
        batches.submit(upload)  # queued before the writer runs
    batches.start()
    batches.stop()
    assert len(publisher.receipts) == 4


def test_a_worker_sharing_uploads_refuses_a_chunk_and_takes_a_whole_upload(
    tmp_path: Path,
) -> None:
    """The broker hands each message of a shared subscription to one worker, so the chunks of
    one upload would be split between workers: a chunk is refused at once (``chunked``),
    counted, and answered; a whole frame goes on to the desk."""
    coordinator = _coordinator(tmp_path / "state.db")
    publisher = FakePublisher()
    coordinator.fanout.add(publisher)
    job_id, agents = _open_round(coordinator, 2, min_agents=2, rounds=2)
    url = "mqtt://worker-w1:pw@127.0.0.1:1"
    bridge = MqttBridge(coordinator.fleet, url, shared_group="workers", worker_id="w1")
    bridge._uploads.start()
    chunked, whole = _uploads(coordinator, job_id, agents)
    assert len(split_frame(chunked.data, 200)) > 1
    try:
        for upload, parts in ((chunked, split_frame(chunked.data, 200)), (whole, [whole.data])):
            for part in parts:
                message = mqtt.MQTTMessage(topic=update_topic(job_id, 0, upload.agent_id).encode())
                message.payload = part
                bridge._on_message(bridge.client, None, message)
        _wait(lambda: len(publisher.receipts) >= len(split_frame(chunked.data, 200)) + 1)
    finally:
        bridge._uploads.stop()
    by_agent = {(r.agent_id, r.reason) for r in publisher.receipts}
    assert by_agent == {(chunked.agent_id, "chunked"), (whole.agent_id, "")}
    assert coordinator.metrics.uploads_refused.value(reason="chunked") >= 1
    assert coordinator.store.upload_agents(job_id, 0) == [whole.agent_id]
