"""Agents ride out a coordinator outage on both transports, and log it once.

The real-process test kills a real coordinator (SIGKILL) in the middle of a job and keeps
it down for a real 30 s while an HTTP agent and an MQTT agent (real processes, real
Mosquitto, TLS) wait; restarted on the same port and data directory, the job completes with
both agents in every round, and each agent's log names the outage once when it starts and
once when it ends. The unit tests step the backoff schedule with an injected random source
and clock, without sleeping.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bitfleet.edge_agent.backoff import Backoff, GaveUp, Outage
from bitfleet.edge_agent.config import AgentConfig
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports.http import HttpTransport
from bitfleet.errors import ConfigError
from bitfleet.server.tlsca import ThrowawayCa
from tests.agents import AgentProcess
from tests.cluster import Broker, Coordinator, free_port
from tests.manual import partition_files

OUTAGE_S = 30.0  # the stated target: a real 30 s outage
ROUNDS = 8
JOB = {
    "name": "outage",
    "algorithm": "bitflip",
    "model": {"layers": [64, 32, 10], "weights": "binary"},
    "dataset": "digits",
    "rounds": ROUNDS,
    "agents_per_round": 2,
    "min_agents": 2,
    "round_deadline_s": 600,  # the outage must not close a round: both agents are needed
    "local_epochs": 1,
    "seed": 11,
}
UNREACHABLE = "coordinator unreachable"
BACK = "coordinator reachable again"


def _wait_for_log(agent: AgentProcess, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{agent.agent_id} never logged {text!r}: {agent.log()[-2000:]}")
        time.sleep(0.1)


def test_an_http_and_an_mqtt_agent_ride_out_a_30_s_coordinator_outage(
    tmp_path: Path, broker: Broker, tls_ca: ThrowawayCa
) -> None:
    partitions = partition_files(tmp_path / "partitions", 2)
    coordinator = Coordinator(tmp_path / "coordinator", broker, tls=tls_ca).start()
    agents = [
        coordinator.start_agent(
            f"out-{transport}",
            data,
            tmp_path / "agents" / transport,
            mqtt_url=broker.agent_url,
            transport=transport,
            kind=AgentProcess,
        )
        for transport, data in zip(("http", "mqtt"), partitions, strict=True)
    ]
    try:
        coordinator.wait_online(2, agents=agents)
        job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=JOB).json()["id"]
        coordinator.wait_for(job_id, round_index=2, timeout=120)
        coordinator.kill(signal.SIGKILL)
        killed = time.monotonic()
        for agent in agents:  # each notices while the coordinator is down
            _wait_for_log(agent, UNREACHABLE, timeout=OUTAGE_S)
        time.sleep(max(0.0, killed + OUTAGE_S - time.monotonic()))
        down_s = time.monotonic() - killed
        for agent in agents:
            assert agent.process is not None and agent.process.poll() is None, agent.log()
        coordinator.start()
        resumed = coordinator.job(job_id)
        done = coordinator.wait_for(job_id, timeout=300)
        for agent in agents:
            _wait_for_log(agent, BACK)
        listed = coordinator.api.request("GET", "/api/v1/agents").json()
    finally:
        codes = [agent.stop() for agent in agents]
        coordinator.kill()
    print(f"coordinator down {down_s:.1f} s; resumed at round {resumed['round']}")
    print("round seconds:", [m["seconds"] for m in done["metrics"]])
    assert codes == [0, 0], [a.log()[-2000:] for a in agents]
    # Killed mid-job: the round it resumed at, and at least one whole round after it, closed
    # after the outage.
    assert resumed["status"] == "running" and resumed["round"] < ROUNDS - 1, resumed
    assert done["status"] == "completed", done
    # Both agents in every round: the rounds from the resumed one on closed after the outage.
    assert [m["uploads"] for m in done["metrics"]] == [2] * ROUNDS, done["metrics"]
    contributed = {entry["agent_id"]: entry["rounds_contributed"] for entry in listed}
    assert contributed == {a.agent_id: ROUNDS for a in agents}, listed
    for agent in agents:
        log = agent.log()
        assert log.count(UNREACHABLE) == 1 and log.count(BACK) == 1, (agent.agent_id, log)
        assert "Traceback" not in log


# The same without processes: an HTTP agent facing a port nobody listens on.


def test_the_runtime_logs_an_outage_once_and_gives_up_when_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Many polls against a refused port are one log line; give_up_after_s ends the run.
    The outage's clock ticks a second per look, so the run gives up after ten looks."""
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}", "pi-1", "secret")
    ticks = itertools.count()
    runtime = AgentRuntime(
        "pi-1",
        "secret",
        np.zeros((4, 64), np.uint8),
        np.zeros(4, np.int64),
        transport,
        backoff=Backoff(max_s=1.0, random=lambda: 0.0),
        outage=Outage(give_up_after_s=10.0, clock=lambda: float(next(ticks))),
    )
    caplog.set_level(logging.INFO, logger="bitfleet.agent")
    with pytest.raises(GaveUp, match="unreachable for 10 s"):
        runtime.run()
    assert runtime.backoff.attempts >= 4  # it polled again and again ...
    assert caplog.text.count(UNREACHABLE) == 1  # ... and said so once


def test_give_up_after_ends_run_and_enroll_with_exit_1_and_one_clear_line(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    agent = ["--coordinator", refused, "--agent-id", "pi-1", "--secret", "s"]
    command = [sys.executable, "-m", "bitfleet.edge_agent"]
    limits = ["--give-up-after", "0.5", "--max-backoff", "1", "--state-dir", str(tmp_path)]
    run = subprocess.run(
        [*command, "run", "--data", "digits", *agent, *limits],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.count(UNREACHABLE) == 1 and "Traceback" not in run.stderr
    assert "bitfleet-agent: error: gave up: the coordinator stayed unreachable" in run.stderr
    assert "cannot reach the coordinator" in run.stderr.splitlines()[-1]
    enroll = subprocess.run(
        [*command, "enroll", *agent, "--give-up-after", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert enroll.returncode == 1, enroll.stderr
    assert json.loads(enroll.stdout)["error"]["type"] == "GaveUp"


def test_an_agent_waiting_for_the_coordinator_at_start_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    """By default the agent waits for an unreachable coordinator (as a fleet's boards
    must, booted before it); systemd's stop still ends it at once, with exit 0."""
    argv = ["run", "--data", "digits", "--coordinator", f"http://127.0.0.1:{free_port()}"]
    argv += ["--agent-id", "pi-1", "--secret", "s", "--state-dir", str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "bitfleet.edge_agent", *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert any(UNREACHABLE in line for line in process.stderr)  # stops at the first
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "option, value, expect",
    [
        ("--max-backoff", "0", "from 1 to 3600 seconds"),
        ("--max-backoff", "99999", "from 1 to 3600 seconds"),
        ("--max-backoff", "nan", "from 1 to 3600 seconds"),
        ("--give-up-after", "-1", "at least 0 seconds"),
        ("--give-up-after", "soon", "'soon' is not a number of seconds"),
    ],
)
def test_backoff_options_out_of_range_are_a_usage_error(
    option: str, value: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitfleet.edge_agent.cli import main

    argv = ["run", "--data", "digits", "--coordinator", "http://127.0.0.1:9", option, value]
    assert main([*argv, "--agent-id", "a", "--secret", "s"]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and expect in err


def test_the_config_file_carries_the_backoff_settings_and_they_are_checked() -> None:
    config = AgentConfig("https://h:8080", "pi-1", "s", max_backoff_s=5, give_up_after_s=600)
    assert (config.max_backoff_s, config.give_up_after_s) == (5, 600)
    assert AgentConfig("https://h:8080", "pi-1", "s").give_up_after_s is None  # never
    for bad in ({"max_backoff_s": "10"}, {"max_backoff_s": True}, {"give_up_after_s": -1.0}):
        with pytest.raises(ConfigError, match="seconds"):
            AgentConfig("https://h:8080", "pi-1", "s", **bad)  # type: ignore[arg-type]


# Backoff and Outage, stepped with an injected random source and clock.


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_jitter_doubles_to_the_cap_and_reset_starts_over() -> None:
    top = Backoff(initial_s=1.0, max_s=10.0, random=lambda: 1.0)  # the top of each range
    assert [top.failed() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    top.reset()
    assert top.attempts == 0 and top.failed() == 1.0
    assert [Backoff(random=lambda: 0.0).failed() for _ in range(3)] == [0.0] * 3
    half = Backoff(initial_s=0.5, max_s=3.0, random=lambda: 0.5)
    assert [half.failed() for _ in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_full_jitter_stays_in_its_range_and_spreads() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, random=random.Random(1).random)
    for attempt in range(200):
        assert 0.0 <= backoff.failed() <= min(30.0, 2.0**attempt)
    # A fleet that lost its coordinator at once does not come back in step.
    fleet = [Backoff(max_s=30.0, random=random.Random(seed).random) for seed in range(50)]
    for member in fleet:
        for _ in range(4):
            member.failed()
    fifth = [member.failed() for member in fleet]  # drawn from [0, 16)
    assert all(0.0 <= d < 16.0 for d in fifth) and len({round(d, 2) for d in fifth}) > 40


def test_decorrelated_jitter_stays_between_initial_and_three_times_the_last() -> None:
    top = Backoff(initial_s=1.0, max_s=20.0, jitter="decorrelated", random=lambda: 1.0)
    assert [top.failed() for _ in range(5)] == [3.0, 9.0, 20.0, 20.0, 20.0]
    bottom = Backoff(initial_s=1.0, max_s=20.0, jitter="decorrelated", random=lambda: 0.0)
    assert [bottom.failed() for _ in range(4)] == [1.0] * 4
    real = Backoff(initial_s=1.0, max_s=20.0, jitter="decorrelated")
    previous = 1.0
    for _ in range(200):
        delay = real.failed()
        assert 1.0 <= delay <= min(20.0, 3 * previous)
        previous = delay


def test_due_follows_the_injected_clock_and_fresh_schedules_are_independent() -> None:
    clock = Clock()
    backoff = Backoff(initial_s=2.0, max_s=8.0, random=lambda: 1.0, clock=clock)
    assert backoff.due()  # nothing failed yet
    assert backoff.failed() == 2.0
    other = backoff.fresh()
    assert other.due() and other.attempts == 0 and other.max_s == 8.0
    clock.now += 1.999
    assert not backoff.due()
    clock.now += 0.001
    assert backoff.due()
    backoff.failed()  # 4 s from now
    backoff.reset()
    assert backoff.due()


def test_a_backoff_that_cannot_work_is_refused() -> None:
    for bad in ({"initial_s": 0.0}, {"initial_s": 5.0, "max_s": 1.0}, {"max_s": float("inf")}):
        with pytest.raises(ConfigError, match="backoff"):
            Backoff(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="jitter"):
        Backoff(jitter="none")  # type: ignore[arg-type]


def test_an_outage_is_logged_once_each_way_and_given_up_on_when_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bitfleet.agent")
    clock = Clock()
    outage = Outage(give_up_after_s=30.0, clock=clock)
    assert outage.update(None) is False  # no outage: nothing to say
    for _ in range(20):
        assert outage.update("refused") is False
        clock.now += 1.0
    assert outage.update(None) is True
    assert outage.update(None) is False
    assert caplog.text.count(UNREACHABLE) == 1
    assert caplog.text.count(BACK) == 1 and "after 20 s" in caplog.text
    outage.update("refused")
    clock.now += 29.9
    outage.update("refused")
    clock.now += 0.1
    with pytest.raises(GaveUp, match="unreachable for 30 s"):
        outage.update("refused")
    with pytest.raises(GaveUp):
        Outage(give_up_after_s=0.0, clock=clock).update("refused")  # 0: at the first failure
    assert Outage(clock=clock).give_up_after_s is None  # never, by default
