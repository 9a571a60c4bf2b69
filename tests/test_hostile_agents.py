"""Hostile agents over real MQTT and HTTP: a minority of bad agents can neither stop the
service, nor act as someone else, nor move the model more than their fair share.

Each test is a finding of the outside probe, replayed against a real Mosquitto and a real
coordinator process.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from bitfleet.chunks import split_frame
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports.mqtt import MqttTransport
from bitfleet.frames import FORMAT_VERSION, KIND_UPDATE, MAGIC
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.protocol import (
    MAX_SAMPLES,
    TOPIC_ROOT,
    Task,
    parse_message,
    round_model_topic,
    update_topic,
)
from bitfleet.sealing import unseal
from bitfleet.server.tlsca import ThrowawayCa
from tests.cluster import Broker, Coordinator
from tests.manual import enroll, enroll_as, global_values, manual_round, running, shards, submit
from tests.mqttraw import raw_client


def _header_bomb_frame(digits: int) -> bytes:
    """An unsigned frame whose JSON header holds an integer of ``digits`` digits."""
    header = b'{"meta": {"samples": ' + b"9" * digits + b'}, "tensors": []}'
    body = struct.pack("<4sBBHI", MAGIC, FORMAT_VERSION, KIND_UPDATE, 0, len(header)) + header
    return body + struct.pack("<I", zlib.crc32(body))


def _metric(coordinator: Coordinator, name: str) -> float:
    """The sum of a metric over all its labels."""
    lines = coordinator.api.request("GET", "/metrics").body.decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def _online(coordinator: Coordinator, agent_id: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agents = coordinator.api.request("GET", "/api/v1/agents").json()
        if any(a["agent_id"] == agent_id and a["online"] for a in agents):
            return True
        time.sleep(0.1)
    return False


def test_hostile_frames_on_an_upload_topic_never_stop_the_mqtt_side(
    coordinator: Coordinator, broker: Broker
) -> None:
    secret = enroll_as(coordinator, "mallory")
    with raw_client(broker, "mallory", secret, "mallory") as (client, _, _):
        topic = update_topic("job-doesnotexist", 0, "mallory")
        for payload in (_header_bomb_frame(5000), b"BFLT" + b"\xff" * 5000, b"\x00" * 5000):
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        status = {"agent_id": "mallory", "state": "online", "capabilities": {"samples": 5}}
        client.publish(
            f"{TOPIC_ROOT}/agents/mallory/status", json.dumps(status), qos=1, retain=True
        )
        # The bridge still reads: the status after the bombs arrives.
        assert _online(coordinator, "mallory")
    refused = _metric(coordinator, "bitfleet_uploads_refused_total")
    assert refused >= 3
    health = coordinator.api.request("GET", "/healthz").json()
    assert health["status"] == "ok" and health["links"]["mqtt"] == "connected", health


def test_a_stolen_client_id_cannot_knock_others_off_the_broker(
    coordinator: Coordinator, broker: Broker
) -> None:
    victim = enroll_as(coordinator, "victim")
    thief = enroll_as(coordinator, "thief")
    with raw_client(broker, "victim", victim, "victim") as (_, _, victim_dropped):
        for stolen in ("bitfleet-coordinator", "victim", "bitfleet-victim"):
            with raw_client(broker, "thief", thief, stolen):
                time.sleep(0.5)
        assert not victim_dropped.is_set()
    health = coordinator.api.request("GET", "/healthz").json()
    assert health["links"]["mqtt"] == "connected"
    assert "disconnected from the broker" not in coordinator.log_path.read_text()


def test_reserved_agent_ids_are_refused(coordinator: Coordinator, broker: Broker) -> None:
    for reserved in ("coordinator", broker.user, "admin", "Coordinator", "-x", "a" * 65):
        with pytest.raises(ApiError) as refused:
            coordinator.api.request("POST", "/api/v1/agents", json_body={"agent_id": reserved})
        assert refused.value.status == 422, reserved
    # The coordinator's broker login still works (nothing overwrote it).
    with raw_client(broker, broker.user, broker.password, "probe-coordinator-login"):
        pass


def test_an_agent_learns_only_the_models_of_rounds_it_was_selected_for(
    coordinator: Coordinator, broker: Broker
) -> None:
    """Every agent may read a round's sealed model, but only the selected agents' tasks
    (on their own topics, which no other agent may read) carry the key that opens it."""
    chosen = enroll_as(coordinator, "chosen")
    snoop = enroll_as(coordinator, "snoop")
    status = {"agent_id": "chosen", "state": "online", "capabilities": {"samples": 10}}
    with (
        raw_client(broker, "chosen", chosen, "chosen") as (chosen_client, chosen_seen, _),
        raw_client(broker, "snoop", snoop, "snoop") as (snoop_client, snoop_seen, _),
    ):
        snoop_client.subscribe([(f"{TOPIC_ROOT}/agents/+/tasks", 1), (f"{TOPIC_ROOT}/jobs/#", 1)])
        chosen_client.subscribe(
            [(f"{TOPIC_ROOT}/agents/chosen/#", 1), (f"{TOPIC_ROOT}/jobs/+/rounds/+/model", 1)]
        )
        chosen_client.publish(
            f"{TOPIC_ROOT}/agents/chosen/status", json.dumps(status), qos=1, retain=True
        )
        assert _online(coordinator, "chosen")
        job_id = submit(coordinator, agents_per_round=1, min_agents=1, rounds=1)
        model_topic = round_model_topic(job_id, 0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any(t == model_topic for t, _ in snoop_seen)
            and any(t.endswith("/tasks") for t, _ in chosen_seen)
        ):
            time.sleep(0.1)
        time.sleep(0.5)
    model = coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model?round=0").body
    task = next(parse_message(Task, p) for t, p in chosen_seen if t.endswith("/tasks"))
    sealed = next(p for t, p in chosen_seen if t == model_topic)
    assert unseal(sealed, task.model_key, task.model_sha256) == model
    # The snoop got the sealed bytes and nothing else: no task, no model it can open.
    assert {t for t, _ in snoop_seen} == {model_topic}
    assert all(p == sealed and model[:64] not in p for _, p in snoop_seen)
    snoop_api = ApiClient(coordinator.url, f"snoop:{snoop}")
    with pytest.raises(ApiError) as hidden:
        snoop_api.request("GET", f"/api/v1/fleet/jobs/{job_id}/rounds/0/model")
    assert hidden.value.status == 404


def test_an_absurd_weight_claim_moves_the_vote_no_more_than_its_cap(
    http_coordinator: Coordinator,
) -> None:
    """One liar declares and claims the most samples an update may (2**31 - 1) against four
    honest agents of 100:
    its vote is capped at a third of the round (200 of 600), so the honest majority wins
    every weight; without the cap the liar would have inverted the model."""
    job_id, agents = manual_round(
        http_coordinator,
        5,
        declared=[MAX_SAMPLES, 100, 100, 100, 100],
        agents_per_round=5,
        min_agents=5,
        rounds=2,
    )
    liar, *honest = agents
    assert liar.upload(job_id, 0, liar.update(job_id, 0, flip=True, samples=MAX_SAMPLES))[
        "accepted"
    ]
    for agent in honest:
        assert agent.upload(job_id, 0, agent.update(job_id, 0, flip=False, samples=100))["accepted"]
    http_coordinator.wait_for(job_id, round_index=1)
    for old, new in zip(
        global_values(http_coordinator, job_id, 0),
        global_values(http_coordinator, job_id, 1),
        strict=True,
    ):
        np.testing.assert_array_equal(new, old)


def test_a_sample_count_beyond_the_bound_is_refused(http_coordinator: Coordinator) -> None:
    job_id, (agent,) = manual_round(http_coordinator, 1, agents_per_round=1, min_agents=1, rounds=1)
    for samples in (MAX_SAMPLES + 1, 2**62, 2**63):
        receipt = agent.upload(job_id, 0, agent.update(job_id, 0, flip=False, samples=samples))
        assert (receipt["accepted"], receipt["reason"]) == (False, "samples"), receipt
    # The coordinator stored nothing it could not restart with.
    http_coordinator.kill()
    http_coordinator.start()
    assert http_coordinator.job(job_id)["status"] == "running"
    assert agent.upload(job_id, 0, agent.update(job_id, 0, flip=False, samples=5))["accepted"]
    assert http_coordinator.wait_for(job_id)["status"] == "completed"


def test_a_chunk_flood_from_one_agent_leaves_the_others_uploads_working(
    tmp_path: Path, broker: Broker, tls_ca: ThrowawayCa
) -> None:
    """Mallory opens 64 chunked transfers that never finish (before the fix: every slot
    of the coordinator, for 300 s); an honest agent's chunked uploads still get through."""
    coordinator = Coordinator(
        tmp_path / "chunked", broker, extra_args=["--max-message-bytes", "1024"], tls=tls_ca
    ).start()
    try:
        mallory = enroll_as(coordinator, "mallory")
        ((honest, secret),) = enroll(coordinator, 1)
        with raw_client(broker, "mallory", mallory, "mallory") as (client, _, _):
            topic = update_topic("job-any", 0, "mallory")
            for _ in range(64):  # the first chunk of 64 different 8-chunk transfers
                client.publish(topic, split_frame(bytes(7000), 1024)[0], qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 30  # PUBACK is the broker's: wait for the bridge
        while _metric(coordinator, "bitfleet_uploads_refused_total") < 60:  # "busy"
            assert time.monotonic() < deadline, "the flood was not refused"
            time.sleep(0.1)
        ((x, y),) = shards(1)
        runtime = AgentRuntime(
            honest, secret, x, y, MqttTransport(broker.agent_url, honest, secret, 1024)
        )
        model = {"layers": [64, 256, 10], "weights": "binary"}  # updates need chunks
        with running([runtime]):
            job_id = submit(coordinator, model=model, agents_per_round=1, min_agents=1, rounds=2)
            job = coordinator.wait_for(job_id)
    finally:
        coordinator.kill()
    assert job["status"] == "completed", job
    assert all(m["uploads"] == 1 and m["bytes_up"] > 2048 for m in job["metrics"])
