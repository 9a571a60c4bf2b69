"""The coordinator against real parts: uvicorn process, Mosquitto, SQLite, protocol agents.

The agents here are the agent runtime (``bitfleet.edge_agent.runtime``) in threads, or hand-built
uploads through ``shared/`` where a test needs exact control of what is sent.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from bitfleet.datasets import load_dataset
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports.http import HttpTransport
from bitfleet.edge_agent.transports.mqtt import MqttTransport
from bitfleet.federated import update_frame
from bitfleet.frames import KIND_UPDATE, Tensor, decode_frame, encode_frame
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.modelfile import bitmlp_from_frame
from bitfleet.server.tlsca import ThrowawayCa
from bitfleet.tls import mqtt_tls_options
from tests.cluster import Broker, Coordinator
from tests.manual import (
    JOB,
    ManualAgent,
    enroll,
    global_values,
    manual_round,
    running,
    shards,
    submit,
)


def test_three_round_bitflip_job_over_mqtt(coordinator: Coordinator, broker: Broker) -> None:
    pairs = enroll(coordinator, 3)
    runtimes = [
        AgentRuntime(agent_id, secret, x, y, MqttTransport(broker.agent_url, agent_id, secret))
        for (agent_id, secret), (x, y) in zip(pairs, shards(3), strict=True)
    ]
    with running(runtimes):
        job_id = submit(coordinator)
        job = coordinator.wait_for(job_id)
    assert job["status"] == "completed", job
    assert [m["round"] for m in job["metrics"]] == [0, 1, 2]
    assert all(m["uploads"] >= 2 for m in job["metrics"])
    assert job["metrics"][-1]["test_accuracy"] > 0.7
    model = coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model").body
    network = bitmlp_from_frame(decode_frame(model))
    data = load_dataset("digits")
    assert network.accuracy(data.x_test, data.y_test) == pytest.approx(
        job["metrics"][-1]["test_accuracy"]
    )
    agents = coordinator.api.request("GET", "/api/v1/agents").json()
    assert sum(a["rounds_contributed"] for a in agents) == sum(m["uploads"] for m in job["metrics"])
    metrics = coordinator.api.request("GET", "/metrics").body.decode()
    assert 'bitfleet_uploads_accepted_total{transport="mqtt"}' in metrics


def test_three_round_bitflip_job_over_http(http_coordinator: Coordinator) -> None:
    pairs = enroll(http_coordinator, 2)
    runtimes = [
        AgentRuntime(
            agent_id,
            secret,
            x,
            y,
            HttpTransport(http_coordinator.url, agent_id, secret, poll_s=0.2),
        )
        for (agent_id, secret), (x, y) in zip(pairs, shards(2), strict=True)
    ]
    with running(runtimes):
        job_id = submit(http_coordinator, agents_per_round=2)
        job = http_coordinator.wait_for(job_id)
    assert job["status"] == "completed", job
    assert len(job["metrics"]) == 3 and job["metrics"][-1]["uploads"] == 2


def test_auth_refusals_and_clear_errors(http_coordinator: Coordinator) -> None:
    anonymous = ApiClient(http_coordinator.url)
    with pytest.raises(ApiError) as missing:
        anonymous.request("GET", "/api/v1/jobs")
    assert missing.value.status == 401
    with pytest.raises(ApiError) as wrong:
        ApiClient(http_coordinator.url, "not-the-token").request("GET", "/api/v1/jobs")
    assert wrong.value.status == 403
    with pytest.raises(ApiError) as agent:
        ApiClient(http_coordinator.url, "a0:guess").request("GET", "/api/v1/fleet/task")
    assert agent.value.status == 403 and "enroll" in str(agent.value)
    api = http_coordinator.api
    with pytest.raises(ApiError) as bad_spec:
        api.request("POST", "/api/v1/jobs", json_body={**JOB, "min_agents": 9})
    assert bad_spec.value.status == 422 and "min_agents" in str(bad_spec.value)
    with pytest.raises(ApiError) as bad_layers:
        api.request("POST", "/api/v1/jobs", json_body={**JOB, "model": {"layers": [784, 10]}})
    assert bad_layers.value.status == 422 and "64 features" in str(bad_layers.value)
    with pytest.raises(ApiError) as missing_job:
        api.request("GET", "/api/v1/jobs/job-nothere")
    assert missing_job.value.status == 404
    job_id = submit(http_coordinator)
    api.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    with pytest.raises(ApiError) as again:
        api.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert again.value.status == 409
    enroll(http_coordinator, 1)
    with pytest.raises(ApiError) as taken:
        api.request("POST", "/api/v1/agents", json_body={"agent_id": "a0"})
    assert taken.value.status == 409


def test_a_tie_keeps_the_previous_global_weights(http_coordinator: Coordinator) -> None:
    job_id, (a, b) = manual_round(http_coordinator, 2, agents_per_round=2, min_agents=2, rounds=2)
    assert a.upload(job_id, 0, a.update(job_id, 0, flip=True, samples=5))["accepted"]
    assert b.upload(job_id, 0, b.update(job_id, 0, flip=False, samples=5))["accepted"]
    http_coordinator.wait_for(job_id, round_index=1)
    for before, after in zip(
        global_values(http_coordinator, job_id, 0),
        global_values(http_coordinator, job_id, 1),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("weighted", [True, False])
def test_votes_are_weighted_by_samples(http_coordinator: Coordinator, weighted: bool) -> None:
    job_id, (a, b, c) = manual_round(
        http_coordinator,
        3,
        declared=[10, 1, 1],
        agents_per_round=3,
        min_agents=3,
        rounds=2,
        weighted_votes=weighted,
        max_vote_share=1.0,
        max_vote_ratio=None,
    )
    assert a.upload(job_id, 0, a.update(job_id, 0, flip=True, samples=10))["accepted"]
    for agent in (b, c):
        assert agent.upload(job_id, 0, agent.update(job_id, 0, flip=False, samples=1))["accepted"]
    http_coordinator.wait_for(job_id, round_index=1)
    before = global_values(http_coordinator, job_id, 0)
    after = global_values(http_coordinator, job_id, 1)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(new, -old if weighted else old)


def test_bad_frames_are_refused_with_reasons_and_counted(http_coordinator: Coordinator) -> None:
    job_id, (a, b, c) = manual_round(
        http_coordinator, 3, agents_per_round=2, min_agents=2, quorum=2
    )
    selected = [agent for agent in (a, b, c) if agent.task() is not None]
    outsider = next(agent for agent in (a, b, c) if agent not in selected)
    first, second = selected
    good = first.update(job_id, 0, flip=False, samples=3)
    cases = {
        "truncated": good[:20],
        "checksum": good[:-1] + bytes([good[-1] ^ 1]),
        "forged": _resigned(good, first.agent_id, b"wrong-secret"),
        "unsigned": encode_frame(
            KIND_UPDATE, decode_frame(good).meta, list(decode_frame(good).tensors.values())
        ),
        "version": good[:4] + bytes([9]) + good[5:],
        "shape": update_frame(
            [Tensor("dense_0", "binary", (3, 64), np.zeros((1, 3, 1), np.uint64))],
            {"samples": 3, "round": 0, "job_id": job_id},
            first.agent_id,
            first.secret.encode(),
        ),
        "wrong_round": first.update(job_id, 0, False, 3),
    }
    for reason, frame in cases.items():
        round_index = 1 if reason == "wrong_round" else 0
        if reason == "wrong_round":
            frame = _with_round(frame, first, 1)
        receipt = first.upload(job_id, round_index, frame)
        assert receipt["accepted"] is False and receipt["reason"] == reason, (reason, receipt)
    model = http_coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model").body
    outsider_update = outsider.update(job_id, 0, False, 3, model=model)
    assert outsider.upload(job_id, 0, outsider_update)["reason"] == "not_selected"
    assert first.upload(job_id, 0, good)["accepted"] is True
    resent = first.upload(job_id, 0, good)  # a resend after a lost receipt: idempotent
    assert (resent["accepted"], resent["reason"]) == (True, "resent")
    assert second.upload(job_id, 0, second.update(job_id, 0, False, 3))["accepted"] is True
    http_coordinator.wait_for(job_id, round_index=1)
    assert first.upload(job_id, 0, good)["reason"] == "resent"  # counted before the close
    assert outsider.upload(job_id, 0, outsider_update)["reason"] == "late"
    metrics = http_coordinator.api.request("GET", "/metrics").body.decode()
    for reason in [*cases, "not_selected", "late"]:
        assert f'bitfleet_uploads_refused_total{{reason="{reason}"}}' in metrics, reason
    assert 'bitfleet_uploads_resent_total{transport="http"} 2' in metrics


def _resigned(frame: bytes, agent_id: str, secret: bytes) -> bytes:
    decoded = decode_frame(frame)
    return update_frame(list(decoded.tensors.values()), decoded.meta, agent_id, secret)


def _with_round(frame: bytes, agent: ManualAgent, round_index: int) -> bytes:
    decoded = decode_frame(frame)
    meta = {**decoded.meta, "round": round_index}
    return update_frame(list(decoded.tensors.values()), meta, agent.agent_id, agent.secret.encode())


def test_sigkill_mid_round_loses_nothing_and_counts_nothing_twice(
    http_coordinator: Coordinator,
) -> None:
    job_id, agents = manual_round(http_coordinator, 3, agents_per_round=3, min_agents=3, rounds=2)
    a, b, c = agents
    frame_a = a.update(job_id, 0, flip=True, samples=4)
    assert a.upload(job_id, 0, frame_a)["accepted"]
    http_coordinator.kill(signal.SIGKILL)
    http_coordinator.start()
    for agent in agents:
        agent.task()
    assert a.upload(job_id, 0, frame_a)["reason"] == "resent"
    for agent in (b, c):
        assert agent.upload(job_id, 0, agent.update(job_id, 0, flip=False, samples=3))["accepted"]
    job = http_coordinator.wait_for(job_id, round_index=1)
    assert job["metrics"][0]["uploads"] == 3
    before = global_values(http_coordinator, job_id, 0)
    after = global_values(http_coordinator, job_id, 1)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(new, old)  # 4 < 3 + 3 once; counted twice, 8 would win


@pytest.mark.parametrize("policy", ["fail", "retry"])
def test_a_round_short_of_min_agents_is_retried_or_fails(
    http_coordinator: Coordinator, policy: str
) -> None:
    job_id, (a, _) = manual_round(
        http_coordinator,
        2,
        agents_per_round=2,
        min_agents=2,
        round_deadline_s=1.5,
        on_insufficient=policy,
        max_retries=1,
    )
    assert a.upload(job_id, 0, a.update(job_id, 0, flip=False, samples=3))["accepted"]
    if policy == "fail":
        job = http_coordinator.wait_for(job_id, timeout=30)
        assert job["status"] == "failed" and "fewer than min_agents=2" in job["reason"]
        return
    metrics = ""
    for _ in range(100):  # the retry opens the round again: a's upload no longer counts
        metrics = http_coordinator.api.request("GET", "/metrics").body.decode()
        if "bitfleet_rounds_retried_total 1" in metrics:
            break
        threading.Event().wait(0.1)
    assert "bitfleet_rounds_retried_total 1" in metrics
    assert (
        http_coordinator.api.request("GET", f"/api/v1/jobs/{job_id}").json()["status"] == "running"
    )
    a.task()
    assert a.upload(job_id, 0, a.update(job_id, 0, flip=False, samples=3))["accepted"]


def test_openapi_documents_the_job_example_and_every_endpoint(
    http_coordinator: Coordinator,
) -> None:
    schema = ApiClient(http_coordinator.url).request("GET", "/openapi.json").json()
    paths = set(schema["paths"])
    for path in (
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/model",
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}/revoke",
        "/api/v1/fleet/task",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    assert "fmnist-binary" in str(schema["paths"]["/api/v1/jobs"]["post"])


def test_revoked_agent_is_refused_everywhere(http_coordinator: Coordinator) -> None:
    ((agent_id, secret),) = enroll(http_coordinator, 1)
    agent = ManualAgent(http_coordinator, agent_id, secret)
    assert agent.task() is None
    revoked = http_coordinator.api.request("POST", f"/api/v1/agents/{agent_id}/revoke").json()
    assert revoked["revoked"] is True
    with pytest.raises(ApiError) as refused:
        agent.task()
    assert refused.value.status == 403
    with pytest.raises(ApiError) as missing:
        http_coordinator.api.request("POST", "/api/v1/agents/nobody/revoke")
    assert missing.value.status == 404


def test_the_broker_keeps_each_agent_under_its_own_id(
    coordinator: Coordinator, broker: Broker
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from bitfleet.protocol import update_topic

    (a0, s0), (a1, _) = enroll(coordinator, 2)
    outcomes: dict[str, object] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv5)
    client.tls_set(**mqtt_tls_options())
    client.username_pw_set(a0, s0)
    client.on_publish = lambda c, u, mid, reason, props: (
        outcomes.update(reason=reason),
        done.set(),
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(update_topic("job-x", 0, a1), b"forged", qos=1)
        assert done.wait(10)
        assert outcomes["reason"].is_failure  # type: ignore[attr-defined]  # not authorized
    finally:
        client.disconnect()
        client.loop_stop()
    answered = threading.Event()
    stranger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stranger", protocol=mqtt.MQTTv5)
    stranger.tls_set(**mqtt_tls_options())
    stranger.username_pw_set(a0, "wrong-secret")
    stranger.on_connect = lambda c, u, f, reason, p: (outcomes.update(login=reason), answered.set())
    stranger.connect("127.0.0.1", broker.port)
    stranger.loop_start()
    try:
        assert answered.wait(10)
        assert outcomes["login"].is_failure  # type: ignore[attr-defined]  # bad username/password
    finally:
        stranger.loop_stop()


def test_forward_job_votes_signs_of_change_onto_a_pretrained_model(
    http_coordinator: Coordinator,
) -> None:
    import base64

    from bitfleet.floatmlp import FloatConfig
    from bitfleet.modelfile import fixedmlp_from_frame, fixedmlp_to_frame
    from bitfleet.pretraining import pretrain

    data = load_dataset("digits")
    _, pretrained = pretrain(data.x_train, data.y_train, [64, 32, 10], 16, FloatConfig(epochs=1))
    spec = {
        **JOB,
        "name": "digits-forward",
        "algorithm": "forward",
        "rounds": 2,
        "agents_per_round": 2,
        "model": {"layers": [64, 32, 10], "weights": "int16"},
        "hyperparameters": {"perturbations": 4, "train_layers": 1},
    }
    with pytest.raises(ApiError) as missing:
        http_coordinator.api.request("POST", "/api/v1/jobs", json_body=spec)
    assert missing.value.status == 422 and "pretrained" in str(missing.value)
    initial = fixedmlp_to_frame(pretrained)
    spec["initial_model"] = base64.b64encode(initial).decode()
    pairs = enroll(http_coordinator, 2)
    runtimes = [
        AgentRuntime(a, s, x, y, HttpTransport(http_coordinator.url, a, s, poll_s=0.2))
        for (a, s), (x, y) in zip(pairs, shards(2), strict=True)
    ]
    with running(runtimes):
        job_id = http_coordinator.api.request("POST", "/api/v1/jobs", json_body=spec).json()["id"]
        job = http_coordinator.wait_for(job_id)
    assert job["status"] == "completed", job
    assert [m["uploads"] for m in job["metrics"]] == [2, 2]
    final = fixedmlp_from_frame(
        decode_frame(http_coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model").body)
    )
    assert not np.array_equal(final.layers[-1].weights, pretrained.layers[-1].weights)
    np.testing.assert_array_equal(final.layers[0].weights, pretrained.layers[0].weights)  # frozen
    assert job["metrics"][-1]["test_accuracy"] > 0.5


def test_frames_larger_than_the_message_limit_travel_in_chunks(
    tmp_path: Path, broker: Broker, tls_ca: ThrowawayCa
) -> None:
    coordinator = Coordinator(
        tmp_path / "chunked", broker, extra_args=["--max-message-bytes", "1024"], tls=tls_ca
    ).start()
    try:
        pairs = enroll(coordinator, 2)
        runtimes = [
            AgentRuntime(a, s, x, y, MqttTransport(broker.agent_url, a, s, max_message_bytes=1024))
            for (a, s), (x, y) in zip(pairs, shards(2), strict=True)
        ]
        model = {"layers": [64, 256, 10], "weights": "binary"}
        with running(runtimes):
            job_id = submit(coordinator, model=model, agents_per_round=2, rounds=2)
            job = coordinator.wait_for(job_id)
    finally:
        coordinator.kill()
    assert job["status"] == "completed", job
    assert all(m["uploads"] == 2 and m["bytes_up"] > 2 * 2048 for m in job["metrics"])
