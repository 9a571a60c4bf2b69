"""TLS end to end: HTTPS and mqtts:// verified against a private CA, mutual TLS for agents,
and no secret in clear off loopback unless the user says --insecure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bitfleet.edge_agent.cli import main as agent_main
from bitfleet.edge_agent.transports.mqtt import MqttTransport
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.protocol import AgentStatus
from bitfleet.server.cli import main as bitfleet_main
from bitfleet.server.tlsca import ThrowawayCa, create_ca
from tests.cluster import Broker, Coordinator


def test_clients_verify_the_coordinator_certificate(
    http_coordinator: Coordinator, tmp_path: Path
) -> None:
    assert http_coordinator.url.startswith("https://")
    assert http_coordinator.api.request("GET", "/healthz").json()["status"] == "ok"
    stranger_ca = create_ca(tmp_path / "other-ca")
    impostor = ApiClient(http_coordinator.url, http_coordinator.token, ca_file=str(stranger_ca.ca))
    with pytest.raises(ApiError) as refused:
        impostor.request("GET", "/healthz")
    assert refused.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_the_jobs_cli_speaks_https_with_a_ca_file(
    http_coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agents", "list", "--url", http_coordinator.url, "--token", http_coordinator.token]
    assert bitfleet_main([*argv, "--ca-file", str(http_coordinator.ca_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"agents": []}


def _connects(transport: MqttTransport) -> bool:
    transport.start(AgentStatus(transport.agent_id, "online"))
    try:
        return transport.connected.wait(5)
    finally:
        transport.close()


def test_a_mutual_tls_broker_admits_only_agents_with_a_client_certificate(
    tmp_path: Path, tls_ca: ThrowawayCa
) -> None:
    broker = Broker(tmp_path / "broker", tls=tls_ca, mutual_tls=True).start()
    coordinator = Coordinator(tmp_path / "coordinator", broker, tls=tls_ca).start()
    try:
        secret = coordinator.api.request(
            "POST", "/api/v1/agents", json_body={"agent_id": "pi-tls"}
        ).json()["secret"]
        pair = tls_ca.client("pi-tls")
        with_cert = MqttTransport(
            broker.agent_url,
            "pi-tls",
            secret,
            client_cert=str(pair.cert),
            client_key=str(pair.key),
        )
        assert _connects(with_cert)
        assert not _connects(MqttTransport(broker.agent_url, "pi-tls", secret))
        deadline = time.monotonic() + 20  # the coordinator's own link presents its certificate
        while coordinator.api.request("GET", "/healthz", ok=(200, 503)).status != 200:
            assert time.monotonic() < deadline, coordinator.log_path.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        coordinator.kill()
        broker.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--coordinator", "http://192.0.2.10:8080"],
        ["--coordinator", "https://192.0.2.10:8080", "--mqtt-url", "mqtt://192.0.2.10:1883"],
    ],
)
def test_an_agent_refuses_to_send_its_secret_in_clear_off_loopback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["run", "--data", "digits", "--agent-id", "pi-1", "--secret", "s"]
    common += ["--state-dir", str(tmp_path / "state"), *argv]
    assert agent_main(common) == 2
    assert "in clear" in capsys.readouterr().err


def test_the_coordinator_refuses_plaintext_off_loopback_without_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["coordinator", "--data-dir", str(tmp_path), "--admin-token", "t", "--host", "0.0.0.0"]
    assert bitfleet_main(argv) == 2
    assert "in clear" in capsys.readouterr().err
    broker = ["--host", "127.0.0.1", "--mqtt-url", "mqtt://c:p@192.0.2.10:1883"]
    assert bitfleet_main([*argv[:-2], *broker]) == 2
    assert "in clear" in capsys.readouterr().err


def test_the_admin_cli_refuses_to_send_its_token_in_clear_off_loopback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["jobs", "list", "--url", "http://192.0.2.10:8080", "--token", "t"]
    assert bitfleet_main(argv) == 2
    assert "in clear" in capsys.readouterr().err


def test_client_certificates_cannot_overwrite_the_ca(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir() if p.is_file()}
    for name in ("ca", "server"):
        pair = ca.client(name)
        assert pair.cert.parent == tmp_path / "ca" / "clients"
    after = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir() if p.is_file()}
    assert after == before
