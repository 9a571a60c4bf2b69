"""``bitfleet jobs`` / ``bitfleet agents`` / ``bitfleet coordinator`` against a real coordinator."""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bitfleet.client import Client, Job
from bitfleet.edge_agent.cli import main as agent_main
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports.http import HttpTransport
from bitfleet.modelfile import load_model
from bitfleet.server.cli import main
from tests.agents import AgentProcess
from tests.cluster import Coordinator
from tests.manual import JOB, ManualAgent, enroll, partition_files, running, shards


def _cli(capsys: pytest.CaptureFixture[str], coordinator: Coordinator, *argv: str) -> dict:
    code = main([*argv, "--url", coordinator.url, "--token", coordinator.token, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _two_agent_job(tmp_path: Path) -> Path:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({**JOB, "agents_per_round": 2, "rounds": 2}))
    return spec


def _http_runtimes(coordinator: Coordinator, pairs: list[dict]) -> list[AgentRuntime]:
    """In-process agents over HTTP for the enrolled ``pairs``, each with its own shard."""
    return [
        AgentRuntime(
            p["agent_id"],
            p["secret"],
            x,
            y,
            HttpTransport(coordinator.url, p["agent_id"], p["secret"], poll_s=0.2),
        )
        for p, (x, y) in zip(pairs, shards(len(pairs)), strict=True)
    ]


def test_enroll_submit_watch_download_with_the_cli(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator, tmp_path: Path
) -> None:
    pairs = [(_cli(capsys, http_coordinator, "agents", "add", "--id", f"pi-{i}")) for i in range(2)]
    assert [p["agent_id"] for p in pairs] == ["pi-0", "pi-1"] and all(p["secret"] for p in pairs)
    spec = _two_agent_job(tmp_path)
    runtimes = _http_runtimes(http_coordinator, pairs)
    with running(runtimes):
        job = _cli(capsys, http_coordinator, "jobs", "submit", str(spec), "--watch")
    assert job["status"] == "completed" and len(job["metrics"]) == 2
    listed = _cli(capsys, http_coordinator, "jobs", "list")["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    agents = _cli(capsys, http_coordinator, "agents", "list")["agents"]
    assert {a["agent_id"]: a["rounds_contributed"] for a in agents} == {"pi-0": 2, "pi-1": 2}
    out = tmp_path / "model.bfm"
    downloaded = _cli(capsys, http_coordinator, "jobs", "download", job["id"], "--out", str(out))
    model, _ = load_model(out)
    assert downloaded["bytes"] == out.stat().st_size and model.layer_sizes == [64, 64, 10]
    assert main(["eval", str(out), "--dataset", "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(job["metrics"][-1]["test_accuracy"])


def test_human_output_and_errors(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator, tmp_path: Path
) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(JOB))
    base = ["--url", http_coordinator.url, "--token", http_coordinator.token]
    assert main(["jobs", "submit", str(spec), *base]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert main(["jobs", "show", job_id, *base]) == 0
    assert "digits-binary" in capsys.readouterr().out
    assert main(["jobs", "cancel", job_id, *base]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["jobs", "cancel", job_id, *base]) == 2
    assert "already cancelled" in capsys.readouterr().err
    assert main(["jobs", "list", "--url", http_coordinator.url, "--token", "wrong"]) == 2
    assert "admin token" in capsys.readouterr().err
    spec.write_text("{not json")
    assert main(["jobs", "submit", str(spec), *base]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["jobs", "list", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the coordinator" in capsys.readouterr().err


def test_coordinator_refuses_to_start_without_a_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BITFLEET_ADMIN_TOKEN", raising=False)
    assert main(["coordinator", "--data-dir", str(tmp_path)]) == 2
    assert "--admin-token" in capsys.readouterr().err


def test_live_view_prints_each_round_as_it_closes(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator, tmp_path: Path
) -> None:
    base = ["--url", http_coordinator.url, "--token", http_coordinator.token]
    pairs = [_cli(capsys, http_coordinator, "agents", "add") for _ in range(2)]
    spec = _two_agent_job(tmp_path)
    runtimes = _http_runtimes(http_coordinator, pairs)
    with running(runtimes):
        assert main(["jobs", "submit", str(spec), "--watch", *base]) == 0
    lines = capsys.readouterr().out.splitlines()
    rounds = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rounds] == [0, 1]
    assert all(0 < float(r[1]) <= 1 for r in rounds) and lines[-1] == "completed"


def test_a_second_agent_on_a_running_agents_state_directory_stops_with_exit_2(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator, tmp_path: Path
) -> None:
    """Two agents on one state directory used to race on status.json and stop uploading."""
    pair = _cli(capsys, http_coordinator, "agents", "add", "--id", "pi-lock")
    (x, y), _ = shards(2)
    data = tmp_path / "shard.npz"
    np.savez(data, X=x, y=y)
    state = tmp_path / "state"
    first = AgentProcess(
        "pi-lock", pair["secret"], http_coordinator.url, data, state, transport="http"
    ).start()
    try:
        first.wait_for_state("waiting")
        command = ["run", "--data", str(data), "--coordinator", http_coordinator.url]
        credentials = ["--agent-id", "pi-lock", f"--secret={pair['secret']}"]
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "bitfleet.edge_agent",
                *command,
                *credentials,
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2 and second.stdout == ""
        assert first.process is not None and second.stderr == (
            f"bitfleet-agent: error: state directory {state} is in use by another "
            f"bitfleet-agent (pid {first.process.pid}): stop it, or give this agent its own "
            "--state-dir\n"
        )
        assert agent_main(["status", "--state-dir", str(state), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "waiting"
    finally:
        assert first.stop() == 0


def test_watch_prints_its_header_once_while_the_job_waits_for_agents(
    http_coordinator: Coordinator, tmp_path: Path
) -> None:
    """The real CLI: ``--watch`` used to print the header again on every poll until the
    first round closed."""
    client = Client(http_coordinator.url, http_coordinator.token)
    pairs = [client.enroll(f"pi-{index}") for index in range(2)]
    command = [sys.executable, "-m", "bitfleet.server.cli", "jobs", "submit"]
    command += [str(_two_agent_job(tmp_path)), "--watch", "--url", http_coordinator.url]
    watch = subprocess.Popen(
        [*command, "--token", http_coordinator.token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agents: list[AgentProcess] = []
    try:
        assert watch.stdout is not None
        title, columns, waiting = (watch.stdout.readline() for _ in range(3))
        assert waiting == "pending: waiting for 2 agents, 0 online\n"
        data = partition_files(tmp_path / "parts", 2)
        agents = [
            AgentProcess(
                p.agent_id, p.secret, client.url, d, tmp_path / p.agent_id, transport="http"
            )
            for p, d in zip(pairs, data, strict=True)
        ]
        for agent in agents:
            agent.start()
        rest, errors = watch.communicate(timeout=120)
    finally:
        watch.kill()
        assert [agent.stop() for agent in agents] == [0] * len(agents)
    assert watch.returncode == 0 and errors == ""
    lines = rest.splitlines()
    assert [title, columns, waiting, *lines].count(columns) == 1  # though polled all along
    assert title.split()[1:] == ["digits-binary", "bitflip", "2", "rounds"]
    assert columns.split() == ["round", "accuracy", "loss", "uploads", "up", "KB", "seconds"]
    assert [line.split()[0] for line in lines if line[:5].strip().isdigit()] == ["0", "1"]
    assert lines[-1] == "completed"
    waits = [line for line in lines if not line[:5].strip().isdigit()][:-1]
    assert all(": waiting for 2 agents, " in line for line in waits), lines


def test_a_job_short_of_agents_says_what_it_waits_for(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator
) -> None:
    """The README's example waits for min_agents: the API, ``jobs show`` and the log say
    so, the log once per change rather than every tick."""
    client = Client(http_coordinator.url, http_coordinator.token)
    job = client.submit(JOB)
    waiting = _job_once(client, job.id, lambda j: j.reason is not None)
    assert (waiting.status, waiting.reason) == ("pending", "waiting for 2 agents, 0 online")
    ((agent_id, secret),) = enroll(http_coordinator, 1)
    ManualAgent(http_coordinator, agent_id, secret).declare(10)
    one = _job_once(client, job.id, lambda j: j.reason != waiting.reason)
    assert (one.status, one.reason) == ("pending", "waiting for 2 agents, 1 online")
    base = ["--url", http_coordinator.url, "--token", http_coordinator.token]
    assert main(["jobs", "show", job.id, *base]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pending: waiting for 2 agents, 1 online"
    assert main(["jobs", "show", job.id, "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "waiting for 2 agents, 1 online"
    client.cancel(job.id)
    assert client.job(job.id).reason == "cancelled by the operator"
    logged = [
        line.split(f"job {job.id} is ", 1)[1]
        for line in http_coordinator.log_path.read_text().splitlines()
        if f"job {job.id} is waiting" in line
    ]
    assert logged[:2] == ["waiting for 2 agents, 0 online", "waiting for 2 agents, 1 online"]
    assert all(a != b for a, b in itertools.pairwise(logged)), logged
    schema = client.api.request("GET", "/openapi.json").json()
    reason = schema["components"]["schemas"]["JobView"]["properties"]["reason"]
    assert "waits" in reason["description"]
    assert reason["examples"] == ["waiting for 3 agents, 1 online"]


def _job_once(client: Client, job_id: str, holds: Callable[[Job], bool]) -> Job:
    """The job as soon as ``holds`` is true of it (a minute at most)."""
    deadline = time.monotonic() + 60
    while not holds(job := client.job(job_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} never got there: {job}")
        time.sleep(0.05)
    return job


def test_per_round_metrics_come_out_as_csv_from_the_cli_and_the_client(
    capsys: pytest.CaptureFixture[str], http_coordinator: Coordinator, tmp_path: Path
) -> None:
    base = ["--url", http_coordinator.url, "--token", http_coordinator.token]
    pairs = [_cli(capsys, http_coordinator, "agents", "add") for _ in range(2)]
    spec = _two_agent_job(tmp_path)
    with running(_http_runtimes(http_coordinator, pairs)):
        job = _cli(capsys, http_coordinator, "jobs", "submit", str(spec))
        assert main(["jobs", "show", job["id"], "--watch", "--format", "csv", *base]) == 0
    watched = capsys.readouterr().out
    assert main(["jobs", "show", job["id"], "--format", "csv", *base]) == 0
    shown = capsys.readouterr().out
    assert watched == shown  # streamed row by row, or all at once: the same CSV
    rows = list(csv.DictReader(io.StringIO(shown)))
    assert list(rows[0]) == [
        "round", "test_accuracy", "loss", "uploads", "bytes_up", "bytes_down", "seconds"
    ]  # fmt: skip
    metrics = Client(http_coordinator.url, http_coordinator.token).job(job["id"]).metrics
    assert [int(r["round"]) for r in rows] == [m.round for m in metrics] == [0, 1]
    for row, closed in zip(rows, metrics, strict=True):
        assert float(row["test_accuracy"]) == closed.test_accuracy
        assert int(row["uploads"]) == closed.uploads == 2
        assert int(row["bytes_up"]) == closed.bytes_up > 0
    client = Client(http_coordinator.url, http_coordinator.token)
    assert client.metrics_csv(job["id"]) == shown
    assert main(["jobs", "show", job["id"], "--format", "csv", "--json", *base]) == 2
    assert "choose one of --json and --format csv" in capsys.readouterr().err
