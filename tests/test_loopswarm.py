"""The load generator's single-loop MQTT agents against a real mosquitto, with a bare client
playing the coordinator: they announce, take a task, open the sealed model, upload a signed
echo update, report the receipt, resend an upload left unanswered, and survive a message
they cannot read."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfleet.bitmlp import BitMLP, PackedLayer
from bitfleet.edge_agent.loopswarm import LoopSwarm
from bitfleet.frames import decode_frame
from bitfleet.modelfile import bitmlp_to_frame
from bitfleet.protocol import (
    TOPIC_ROOT,
    Task,
    UploadReceipt,
    agent_events_topic,
    agent_tasks_topic,
    encode_message,
    parse_mqtt_url,
    parse_update_topic,
    round_model_topic,
)
from bitfleet.sealing import seal
from tests.cluster import Broker
from tests.mqttraw import raw_client

AGENTS = ["sim-a", "sim-b", "sim-c"]


def _model() -> bytes:
    rng = np.random.default_rng(0)
    layers = [
        PackedLayer.from_values(rng.choice([-1, 1], size=(8, 16)), "binary"),
        PackedLayer.from_values(rng.choice([-1, 1], size=(3, 8)), "binary"),
    ]
    return bitmlp_to_frame(BitMLP(layers, np.zeros(16, np.uint8)))


def _until(holds: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not holds():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_loop_agents_run_a_round_and_resend_what_was_not_answered(
    tmp_path: Path, tls_ca: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path / "broker", worker_users=AGENTS, tls=tls_ca).start()
    logins = [(agent, broker.worker_passwords[agent]) for agent in AGENTS]
    swarm = LoopSwarm(
        logins, parse_mqtt_url(broker.agent_url), 50, 1 << 20, {"ca_file": None}, receipt_wait_s=1.0
    )
    stop = threading.Event()
    loop = threading.Thread(target=swarm.run, args=(stop,))
    try:
        with raw_client(broker, broker.user, broker.password, "coordinator") as (coord, seen, _):
            coord.subscribe([(f"{TOPIC_ROOT}/agents/+/status", 1), (f"{TOPIC_ROOT}/jobs/#", 1)])
            time.sleep(0.3)
            loop.start()
            online = {f"{TOPIC_ROOT}/agents/{a}/status" for a in AGENTS}
            _until(lambda: online <= {t for t, p in seen if b'"online"' in p})
            # A message no agent can read costs that agent nothing but an event.
            coord.publish(agent_tasks_topic("sim-b"), b"not json", qos=1).wait_for_publish(5)
            sealed = seal(_model())
            coord.publish(round_model_topic("job-1", 0), sealed.sealed, qos=1, retain=True)
            task = Task(
                "job-1",
                0,
                "bitflip",
                time.time() + 600,
                model_key=sealed.key,
                model_sha256=sealed.sha256,
            )
            for agent in AGENTS:
                coord.publish(agent_tasks_topic(agent), encode_message(task), qos=1, retain=True)

            def uploads() -> list[tuple[str, bytes]]:
                return [(t, p) for t, p in seen if "/updates/" in t]

            _until(lambda: len({t for t, _ in uploads()}) == 3)
            for topic, frame in uploads()[:3]:
                agent = parse_update_topic(topic)[2]
                secret = broker.worker_passwords[agent].encode()
                update = decode_frame(frame, secret_for=lambda _, key=secret: key)
                assert update.meta["agent_id"] == agent and update.meta["samples"] == 50
            answered = AGENTS[:2]
            for agent in answered:
                receipt = UploadReceipt("job-1", 0, agent, True)
                coord.publish(agent_events_topic(agent), encode_message(receipt), qos=1)
            # The third got no receipt: it sends its upload again after the wait.
            _until(lambda: sum(t.endswith("/sim-c") for t, _ in uploads()) >= 2)
            assert all(sum(t.endswith(f"/{a}") for t, _ in uploads()) == 1 for a in answered)
            # The same task again (a reconnect's retained copy) is not served twice.
            coord.publish(agent_tasks_topic("sim-a"), encode_message(task), qos=1, retain=True)
            time.sleep(0.5)
            assert sum(t.endswith("/sim-a") for t, _ in uploads()) == 1
    finally:
        stop.set()
        loop.join(10)
        broker.stop()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = {(e["event"], e["agent"]) for e in events}
    for agent in AGENTS:
        assert {("task", agent), ("model", agent), ("upload", agent)} <= kinds
    assert {a for kind, a in kinds if kind == "receipt"} == set(answered)
    assert ("failed", "sim-b") in kinds
