"""docker-compose.yml, checked without a Docker engine: files, commands, variables, flow.

No engine runs here, so the compose file is validated statically against the real code,
and the compose flow itself (coordinator-written broker config, provisioned agents,
credentials from the environment) runs with real processes on loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitfleet.edge_agent import cli as agent_cli
from bitfleet.server import cli as server_cli
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.localcluster import (
    Coordinator,
    free_port,
    mosquitto_binary,
    spawn,
    stop_process,
    wait_for_port,
)
from bitfleet.server.tlsca import load_ca
from tests.agents import AgentProcess

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
AGENTS = sorted(name for name in SERVICES if name.startswith("agent-"))


def _source_text() -> str:
    return "\n".join(
        p.read_text() for d in ("server", "edge_agent", "shared") for p in (ROOT / d).rglob("*.py")
    )


def test_services_and_their_build_contexts_exist() -> None:
    assert (
        set(SERVICES) == {"tls", "broker", "data", "coordinator", "submit", *AGENTS}
        and len(AGENTS) == 3
    )
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            assert service["image"].startswith("eclipse-mosquitto:2"), name
            continue
        context = ROOT / build["context"]
        assert context.is_dir(), name
        dockerfile = (context / build["dockerfile"]).read_text()
        assert "python:3.11-slim-bookworm" in dockerfile and re.search(
            r"^USER (?!root)", dockerfile, re.M
        )


def test_every_command_is_the_real_cli_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        for key, value in (service.get("environment") or {}).items():
            monkeypatch.setenv(key, str(value))
        agent = service["build"]["dockerfile"].endswith("agent.Dockerfile")
        parser = (agent_cli if agent else server_cli).build_parser()
        parsed = parser.parse_args(service["command"])
        assert callable(parsed.func), name
        with pytest.raises(SystemExit) as shown:
            parser.parse_args([service["command"][0], "--help"])
        assert shown.value.code == 0
        for key in service.get("environment") or {}:
            monkeypatch.delenv(key)


def test_environment_variables_are_the_ones_the_code_reads() -> None:
    source = _source_text()
    for name, service in SERVICES.items():
        for key in service.get("environment") or {}:
            assert f'"{key}"' in source, f"{name}: {key} is not read by bitfleet"


def test_mounted_files_exist_and_are_valid() -> None:
    job = JobSpec.model_validate(json.loads((ROOT / "docker/demo/job.json").read_text()))
    assert job.agents_per_round == len(AGENTS)
    provisioned = {
        a["agent_id"]: a["secret"]
        for a in json.loads((ROOT / "docker/demo/agents.json").read_text())
    }
    for name in AGENTS:
        env = SERVICES[name]["environment"]
        assert provisioned[env["BITFLEET_AGENT_ID"]] == env["BITFLEET_AGENT_SECRET"]
    partitions = {f"/partitions/agent-{i}.npz" for i in range(int(SERVICES["data"]["command"][5]))}
    assert {SERVICES[n]["command"][2] for n in AGENTS} == partitions
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    entrypoint = ROOT / "docker/broker/entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(entrypoint)], check=False).returncode == 0
    port = SERVICES["coordinator"]["command"][
        SERVICES["coordinator"]["command"].index("--port") + 1
    ]
    assert f"127.0.0.1:{port}/healthz" in " ".join(SERVICES["coordinator"]["healthcheck"]["test"])
    assert f"{port}:{port}" in SERVICES["coordinator"]["ports"]


def test_the_compose_flow_runs_on_loopback(tmp_path: Path) -> None:
    """The tls service makes a CA; the coordinator serves HTTPS, writes the broker config
    (with its TLS listener) and provisions agents; the broker runs from that config; an
    agent with credentials from its environment joins over mqtts:// and trains a round."""
    broker_dir = tmp_path / "broker"
    port = free_port()
    provisioned = tmp_path / "agents.json"
    provisioned.write_text(json.dumps([{"agent_id": "agent-1", "secret": "-s3cret-agent-1"}]))
    tls_dir = tmp_path / "tls"
    assert server_cli.main(["tls", "init", "--dir", str(tls_dir), "--json"]) == 0
    ca = load_ca(tls_dir)
    coordinator = Coordinator(
        tmp_path / "coordinator",
        extra_args=[
            "--mqtt-url",
            f"mqtts://coordinator:pw@127.0.0.1:{port}",
            "--broker-config-dir",
            str(broker_dir),
            "--broker-listen-host",
            "127.0.0.1",
            "--broker-tls-cert",
            str(ca.server.cert),
            "--broker-tls-key",
            str(ca.server.key),
            "--provision-agents",
            str(provisioned),
        ],
        tls=ca,
    ).start()
    broker = spawn(
        [mosquitto_binary(), "-c", str(broker_dir / "mosquitto.conf")], tmp_path / "broker.log"
    )
    agent = None
    try:
        assert wait_for_port(port)
        assert coordinator.api.request("GET", "/api/v1/agents").json()[0]["agent_id"] == "agent-1"
        data = tmp_path / "part.npz"
        assert (
            server_cli.main(
                [
                    "data",
                    "partition",
                    "--dataset",
                    "digits",
                    "--agents",
                    "1",
                    "--scheme",
                    "iid",
                    "--seed",
                    "0",
                    "--out",
                    str(tmp_path / "p"),
                ]
            )
            == 0
        )
        (tmp_path / "p" / "agent-0.npz").rename(data)
        agent = AgentProcess(
            "agent-1",
            "-s3cret-agent-1",
            coordinator.url,
            data,
            tmp_path / "state",
            mqtt_url=f"mqtts://127.0.0.1:{port}",
            transport="mqtt",
            extra=["--ca-file", str(ca.ca)],
        ).start()
        spec = {
            "name": "flow",
            "model": {"layers": [64, 32, 10]},
            "dataset": "digits",
            "rounds": 1,
            "agents_per_round": 1,
            "round_deadline_s": 60,
        }
        job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=spec).json()["id"]
        job = coordinator.wait_for(job_id, timeout=90)
        assert job["status"] == "completed" and job["metrics"][0]["uploads"] == 1
    finally:
        if agent is not None:
            agent.stop()
        coordinator.stop()
        stop_process(broker)
