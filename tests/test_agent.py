"""``bitfleet-agent`` processes against a real Mosquitto and a real coordinator."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitfleet.edge_agent.cli import main as agent_main
from tests.agents import AgentProcess
from tests.cluster import Broker, Coordinator
from tests.manual import JOB as DIGITS_JOB
from tests.manual import partition_files

JOB = {**DIGITS_JOB, "name": "digits-agents", "round_deadline_s": 30, "seed": 3}


@pytest.fixture
def partitions(tmp_path: Path) -> list[Path]:
    return partition_files(tmp_path / "partitions", 3)


def _agents(
    coordinator: Coordinator,
    broker: Broker | None,
    partitions: list[Path],
    tmp_path: Path,
    transports: list[str],
    extra: list[str] | None = None,
    first_index: int = 0,
) -> list[AgentProcess]:
    pairs = enumerate(zip(partitions, transports, strict=False), start=first_index)
    return [
        coordinator.start_agent(
            f"pi-{index}",
            data,
            tmp_path / "agents" / f"pi-{index}",
            mqtt_url=broker.agent_url if broker else None,
            transport=transport,
            extra=extra,
            kind=AgentProcess,
        )
        for index, (data, transport) in pairs
    ]


def _submit(coordinator: Coordinator, **changes: object) -> str:
    return str(
        coordinator.api.request("POST", "/api/v1/jobs", json_body={**JOB, **changes}).json()["id"]
    )


def _stop_all(agents: list[AgentProcess]) -> None:
    for agent in agents:
        assert agent.stop() in (0, None), agent.log()


def test_three_agents_over_mqtt_and_one_over_http_complete_a_job(
    coordinator: Coordinator, broker: Broker, partitions: list[Path], tmp_path: Path
) -> None:
    agents = _agents(coordinator, broker, partitions, tmp_path, ["mqtt", "mqtt", "http"])
    try:
        coordinator.wait_online(3)
        job = coordinator.wait_for(_submit(coordinator), timeout=120)
    finally:
        _stop_all(agents)
    assert job["status"] == "completed", job
    assert [m["uploads"] for m in job["metrics"]] == [3, 3, 3]
    listed = {a["agent_id"]: a for a in coordinator.api.request("GET", "/api/v1/agents").json()}
    assert listed["pi-2"]["transport"] == "http" and listed["pi-0"]["transport"] == "mqtt"
    assert all(a["rounds_contributed"] == 3 for a in listed.values())
    assert not any(a["online"] for a in listed.values() if a["transport"] == "mqtt")  # said offline
    journal = agents[0].journal()
    assert [e["event"] for e in journal] == ["started", "uploaded"] * 3
    assert all(e["outcome"] == "accepted" for e in journal if e["event"] == "uploaded")
    assert "INFO bitfleet.agent job" in agents[0].log()


def test_kill_9_mid_round_the_round_closes_at_quorum_and_the_agent_rejoins(
    coordinator: Coordinator, broker: Broker, partitions: list[Path], tmp_path: Path
) -> None:
    agents = _agents(coordinator, broker, partitions, tmp_path, ["mqtt"] * 3)
    victim, leaver, _ = agents
    try:
        coordinator.wait_online(3)
        job_id = _submit(coordinator, rounds=20, quorum=2, local_epochs=40, round_deadline_s=10)
        victim.wait_for_state("training")
        victim.signal(signal.SIGKILL)
        coordinator.wait_for(job_id, round_index=1, timeout=60)
        victim.start()
        victim.wait_for_state("waiting")
        assert leaver.stop() == 0  # from now on the round needs the restarted victim
        job = coordinator.wait_for(job_id, timeout=180)
    finally:
        _stop_all(agents)
    assert job["status"] == "completed", job
    assert all(m["uploads"] >= 2 for m in job["metrics"])
    events = [(e["round"], e["event"]) for e in victim.journal()]
    assert events[:2] == [(0, "started"), (0, "abandoned")]  # interrupted, never uploaded
    assert not any(event == "uploaded" and r == 0 for r, event in events)
    assert any(event == "uploaded" and r > 0 for r, event in events), events  # rejoined


def test_broker_restart_mid_job_everyone_reconnects(
    coordinator: Coordinator, broker: Broker, partitions: list[Path], tmp_path: Path
) -> None:
    agents = _agents(coordinator, broker, partitions, tmp_path, ["mqtt"] * 3)
    try:
        coordinator.wait_online(3)
        job_id = _submit(coordinator, rounds=4, round_deadline_s=15)
        coordinator.wait_for(job_id, round_index=1, timeout=60)
        broker.stop()
        time.sleep(1.0)
        broker.start()
        job = coordinator.wait_for(job_id, timeout=180)
    finally:
        _stop_all(agents)
    assert job["status"] == "completed", job
    assert len(job["metrics"]) == 4
    assert "disconnected from the broker" in agents[1].log()
    coordinator_log = coordinator.log_path.read_text()
    assert coordinator_log.count("connected to broker") >= 2


def test_an_agent_with_a_wrong_secret_is_refused_and_logged(
    coordinator: Coordinator, broker: Broker, partitions: list[Path], tmp_path: Path
) -> None:
    coordinator.api.request("POST", "/api/v1/agents", json_body={"agent_id": "pi-x"})
    agent = AgentProcess(
        "pi-x",
        "not-the-secret",
        coordinator.url,
        partitions[0],
        tmp_path / "agents" / "pi-x",
        mqtt_url=broker.agent_url,
    ).start()
    assert agent.process is not None and agent.process.wait(timeout=60) == 2
    assert "refused agent pi-x" in agent.log()
    listed = coordinator.api.request("GET", "/api/v1/agents").json()
    assert listed[0]["online"] is False


def test_a_job_too_big_for_the_board_is_declined_and_recorded(
    http_coordinator: Coordinator, partitions: list[Path], tmp_path: Path
) -> None:
    agents = _agents(http_coordinator, None, partitions[:2], tmp_path, ["http", "http"])
    small = _agents(
        http_coordinator,
        None,
        partitions[2:],
        tmp_path,
        ["http"],
        ["--max-memory", "1"],
        first_index=2,
    )[0]
    agents.append(small)
    big = {"layers": [64, 4096, 10], "weights": "binary"}
    try:
        http_coordinator.wait_online(3)
        job = http_coordinator.wait_for(_submit(http_coordinator, model=big, rounds=2), timeout=120)
    finally:
        _stop_all(agents)
    assert job["status"] == "completed", job
    assert [d["agent_id"] for d in job["declines"]] == ["pi-2"]
    assert "MiB" in job["declines"][0]["reason"]
    assert all(m["uploads"] == 2 for m in job["metrics"])
    assert [e["event"] for e in small.journal()] == ["started", "declined"]


def test_enroll_writes_a_private_config_and_status_reports(
    http_coordinator: Coordinator,
    partitions: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    enrolled = http_coordinator.api.request(
        "POST", "/api/v1/agents", json_body={"agent_id": "pi-e"}
    ).json()
    config = tmp_path / "conf" / "agent.json"
    argv = [
        "enroll",
        "--coordinator",
        http_coordinator.url,
        "--agent-id",
        "pi-e",
        "--secret",
        enrolled["secret"],
        "--config",
        str(config),
        "--json",
    ]
    assert agent_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["agent_id"] == "pi-e"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved = json.loads(config.read_text())  # the outage settings are there to edit
    assert (saved["max_backoff_s"], saved["give_up_after_s"]) == (10.0, None)
    assert agent_main([*argv[:5], "--secret", "wrong", "--config", str(config)]) == 2
    assert "refused agent pi-e" in capsys.readouterr().err
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bitfleet.edge_agent",
            "run",
            "--config",
            str(config),
            "--data",
            str(partitions[0]),
            "--state-dir",
            str(state),
        ]
    )
    try:
        agent = AgentProcess("pi-e", "", http_coordinator.url, partitions[0], state)
        agent.wait_for_state("waiting", timeout=60)
        assert agent_main(["status", "--state-dir", str(state), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["state"] == "waiting" and status["transport"] == "http"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert agent_main(["status", "--state-dir", str(state)]) == 0
    assert "pi-e: stopped" in capsys.readouterr().out


def test_selftest_reports_speed_and_memory(
    partitions: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["selftest", "--data", str(partitions[0]), "--hidden", "32", "--json"]
    assert agent_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 480 and result["layers"] == [64, 32, 10]
    assert result["peak_rss_mb"] > 0 and result["samples_per_second"] > 0
