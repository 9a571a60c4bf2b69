"""``bitfleet bench fleet``: a real broker, coordinator and swarm processes of agents that
speak the whole protocol without training; the figures it reports are the rounds it ran."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitfleet.edge_agent.cli import main as agent_main
from bitfleet.server.cli.local.bench_fleet import MAX_EVENT_BYTES, EventLog

MODEL_BYTES = 50_000  # a 784-512-10 binary model is 50,816 bytes of weight bits alone


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bitfleet.server.cli", "bench", "fleet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("transport", ["mqtt", "http"])
def test_every_agent_of_every_round_gets_the_model_and_a_receipt(transport: str) -> None:
    result = _bench(
        "--agents", "4", "--rounds", "2", "--processes", "2", "--transport", transport, "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["agents"], report["processes"], report["transport"]) == (4, 2, transport)
    assert [entry["round"] for entry in report["rounds"]] == [0, 1]
    for entry in report["rounds"]:
        assert entry["agents_with_model"] == entry["accepted_uploads"] == 4
        assert 0 <= entry["fanout_s"] <= entry["overhead_s"]
        assert entry["close_s"] >= 0 and entry["uploads_per_s"] > 0
        assert entry["payload_bytes_down"] > 4 * MODEL_BYTES
        assert entry["payload_bytes_up"] > 4 * MODEL_BYTES
        if transport == "mqtt":  # the broker carried them, framed and encrypted
            assert entry["broker_bytes_out"] > entry["payload_bytes_down"]
            assert entry["broker_bytes_in"] > entry["payload_bytes_up"]
    assert report["coordinator_peak_rss_mb"] > 50
    assert (report["broker_peak_rss_mb"] is None) == (transport == "http")


def test_two_workers_on_postgresql_split_the_uploads_of_each_round(postgres_url: str) -> None:
    result = _bench(
        "--agents", "6", "--rounds", "2", "--workers", "2", "--store", postgres_url, "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["workers"], report["store"]) == (2, "postgresql")
    for entry in report["rounds"]:
        assert entry["agents_with_model"] == entry["accepted_uploads"] == 6
    assert sum(report["uploads_per_worker"]) == 12
    assert min(report["uploads_per_worker"]) > 0, report["uploads_per_worker"]
    assert report["state_bytes_after"] > report["state_bytes_before"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "10001"], "above 10000"),
        (["--agents", "3", "--processes", "4"], "--processes must be at most 3"),
        (["--agents", "3", "--rounds", "101"], "above 100"),
        (["--agents", "3", "--selected", "4"], "--selected 4 is more than --agents 3"),
        (["--agents", "3", "--enrolled", "2"], "--enrolled must be between --agents (3)"),
        (["--agents", "0"], "must be at least 1, got 0"),
        (["--agents", "3", "--workers", "2"], "add --store postgresql://"),
        (["--agents", "3", "--workers", "9"], "--workers 9 is above 8"),
    ],
)
def test_impossible_loads_are_refused_before_anything_starts(args: list[str], message: str) -> None:
    result = _bench(*args, "--json", timeout=60)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_swarm_refuses_an_agents_file_it_cannot_read_line_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "agents"
    listing.write_text("sim-1 secret\nsim-2\n")
    code = agent_main(
        ["swarm", "--agents-file", str(listing), "--coordinator", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert f"{listing}:2: expected 'AGENT_ID SECRET'" in capsys.readouterr().err


def test_a_swarm_refuses_an_agents_file_larger_than_any_swarm_before_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "agents"
    listing.write_bytes(b"sim-1 secret\n" * 100_000)
    code = agent_main(
        ["swarm", "--agents-file", str(listing), "--coordinator", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "more agents than one swarm runs" in capsys.readouterr().err


def test_a_round_of_a_few_selected_among_more_enrolled_and_online_is_measured_on_those() -> None:
    result = _bench(
        "--enrolled", "9", "--agents", "6", "--selected", "3", "--rounds", "1", "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["enrolled"], report["agents"], report["selected"]) == (9, 6, 3)
    (entry,) = report["rounds"]
    assert entry["agents_with_model"] == entry["accepted_uploads"] == 3


def test_a_swarm_refuses_an_agents_file_that_is_not_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "agents"
    listing.write_bytes(b"sim-1 \xff\xfe\n")
    code = agent_main(
        ["swarm", "--agents-file", str(listing), "--coordinator", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "is not text" in capsys.readouterr().err


def test_the_bench_keeps_only_well_formed_events_from_its_swarms() -> None:
    good = b'{"event": "model", "agent": "sim-1", "t": 1.5, "round": 0, "bytes": 9}\n'
    junk = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"event": "model", "agent": "sim-1", "round": 0}\n',  # no time
        b'{"event": "model", "agent": "sim-1", "t": "soon", "round": 0}\n',
        b'{"event": "model", "agent": "sim-1", "t": 1, "round": "0"}\n',
        b'{"event": "model", "agent": "sim-1", "t": 1, "round": 0, "bytes": []}\n',
        b'{"event": "model", "agent": "' + b"x" * (2 * MAX_EVENT_BYTES) + b'", "t": 1}\n',
        b'{"a": ' * 100_000 + b"\n",  # longer than the bound: cut, then refused
        b"[" * 4000 + b"]" * 4000 + b"\n",  # nested deeper than json's recursion
    ]
    log = EventLog()
    log.read(io.BytesIO(b"".join([*junk, good])))
    assert log.events == [json.loads(good)]
    assert log.of("model", 0) == [json.loads(good)]
