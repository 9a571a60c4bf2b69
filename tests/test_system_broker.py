"""The coordinator beside Debian's packaged Mosquitto, as docs/system-broker.md sets it up.

The broker is /usr/sbin/mosquitto with the package's own mosquitto.conf (its paths moved
under a temporary root), started as root as systemd starts it, with ``user mosquitto``: it
runs as user mosquitto. The coordinator runs as another non-root user (uid 10001), writes
the broker's files group-readable by mosquitto into a setgid directory, and its
--broker-reload-command is ``systemctl reload mosquitto``: no systemd runs here, so that
``systemctl`` is a stand-in that asks this (root) test to do what the unit's
``ExecReload=/bin/kill -HUP $MAINPID`` does.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bitfleet.httpclient import ApiError
from bitfleet.server import cli as server_cli
from bitfleet.server.cli.demo.cluster import (
    Coordinator,
    free_port,
    mosquitto_binary,
    spawn,
    stop_process,
    wait_for_port,
)
from bitfleet.server.tlsca import ThrowawayCa
from bitfleet.tls import mqtt_tls_options
from tests.agents import AgentProcess
from tests.test_compose import AS_SERVICE_USER, SERVICE_UID, reachable_tmp, require_service_user

PACKAGED_CONF = Path("/etc/mosquitto/mosquitto.conf")
BROKER_USER = "mosquitto"

# The stand-in for systemctl: it sends its arguments to the test's socket and exits with
# the answer, as systemctl reports the reload job's result. Debian's own python3 runs it
# (the standard library is all it needs): the coordinator's user may not reach ours.
SYSTEMCTL = """#!/usr/bin/python3
import socket, sys
with socket.socket(socket.AF_UNIX) as connection:
    connection.connect({socket!r})
    connection.sendall(" ".join(sys.argv[1:]).encode() + b"\\n")
    sys.exit(int(connection.recv(16) or b"1"))
"""


@dataclass
class Debian:
    """A Debian layout under ``root``: /etc/mosquitto, /run/mosquitto, /var/lib/mosquitto."""

    root: Path

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def conf(self) -> Path:
        return self.path("/etc/mosquitto/mosquitto.conf")

    @property
    def bitfleet_dir(self) -> Path:
        return self.path("/etc/mosquitto/bitfleet")

    @property
    def pid_file(self) -> Path:
        return self.path("/run/mosquitto/mosquitto.pid")


def _install_dir(path: Path, user: int, group: int, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user, group)
    path.chmod(mode)


def _install_file(source: Path, target: Path, user: int, group: int, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chown(target, user, group)
    target.chmod(mode)


@pytest.fixture
def debian(tls_ca: ThrowawayCa) -> Iterator[Debian]:
    require_service_user()
    with reachable_tmp() as root:
        yield _debian(root, tls_ca)


def _debian(root: Path, tls_ca: ThrowawayCa) -> Debian:
    """The package's files, the unit's ExecStartPre directories, and the steps of
    docs/system-broker.md: the coordinator's directory, the conf.d link, the certificate."""
    if not PACKAGED_CONF.is_file():
        pytest.skip("Debian's mosquitto package is not installed")
    try:
        broker = pwd.getpwnam(BROKER_USER)
    except KeyError:
        pytest.skip("no user mosquitto (Debian's mosquitto package creates it)")
    layout = Debian(root)
    # The package's configuration, its absolute paths under our root.
    lines = []
    for line in PACKAGED_CONF.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            line = re.sub(r"(?<=\s)/", f"{root}/", line)
        lines.append(line)
    layout.conf.parent.mkdir(parents=True)
    layout.conf.write_text(f"user {BROKER_USER}\n" + "\n".join(lines) + "\n")
    assert f"include_dir {layout.path('/etc/mosquitto/conf.d')}" in layout.conf.read_text()
    layout.path("/etc/mosquitto/conf.d").mkdir()
    for directory in ("/run/mosquitto", "/var/log/mosquitto"):  # ExecStartPre
        _install_dir(layout.path(directory), broker.pw_uid, 0, 0o740)
    _install_dir(layout.path("/var/lib/mosquitto"), broker.pw_uid, broker.pw_gid, 0o755)
    # docs/system-broker.md, step by step.
    gid = grp.getgrnam(BROKER_USER).gr_gid
    _install_dir(layout.bitfleet_dir, SERVICE_UID, gid, 0o2750)
    layout.path("/etc/mosquitto/conf.d/bitfleet.conf").symlink_to("../bitfleet/bitfleet.conf")
    certs = layout.path("/etc/mosquitto/certs")
    _install_file(tls_ca.server.cert, certs / "bitfleet.pem", 0, 0, 0o644)
    _install_file(tls_ca.server.key, certs / "bitfleet.key", 0, gid, 0o640)
    etc = layout.path("/etc/bitfleet")
    _install_file(tls_ca.ca, etc / "ca.pem", 0, 0, 0o644)
    _install_file(tls_ca.server.cert, etc / "server.pem", 0, 0, 0o644)
    _install_file(tls_ca.server.key, etc / "server.key", SERVICE_UID, SERVICE_UID, 0o600)
    _install_dir(layout.path("/var/lib/bitfleet"), SERVICE_UID, SERVICE_UID, 0o700)
    return layout


class SystemdStandIn(socketserver.ThreadingUnixStreamServer):
    """Answers ``systemctl reload mosquitto`` as systemd does: SIGHUP to the main pid."""

    def __init__(self, socket_path: Path, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.reloads = 0
        super().__init__(str(socket_path), _Reload)
        os.chown(socket_path, SERVICE_UID, SERVICE_UID)


class _Reload(socketserver.StreamRequestHandler):
    server: SystemdStandIn

    def handle(self) -> None:
        asked = self.rfile.readline().decode().split()
        code = 1
        if asked == ["reload", "mosquitto"] and self.server.pid_file.exists():
            os.kill(int(self.server.pid_file.read_text()), signal.SIGHUP)
            self.server.reloads += 1
            code = 0
        self.wfile.write(str(code).encode())


@pytest.fixture
def systemd(debian: Debian) -> Iterator[SystemdStandIn]:
    server = SystemdStandIn(debian.path("/run/systemd-stand-in.sock"), debian.pid_file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    systemctl = debian.path("/usr/bin/systemctl")
    systemctl.parent.mkdir(parents=True)
    socket_path = str(debian.path("/run/systemd-stand-in.sock"))
    systemctl.write_text(SYSTEMCTL.format(socket=socket_path))
    systemctl.chmod(0o755)
    yield server
    server.shutdown()
    server.server_close()


def login(port: int, user: str, password: str) -> bool:
    """Whether the broker accepts this user name and password (its CONNACK)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        accepted.append(not reason.is_failure)
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.tls_set(**mqtt_tls_options())
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(10), "the broker did not answer"
        return accepted[0]
    finally:
        client.disconnect()
        client.loop_stop()


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until ``predicate()`` holds (a reload lands between two CONNECTs)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _healthy(coordinator: Coordinator, statuses: tuple[int, ...]) -> bool:
    assert coordinator.process is not None and coordinator.process.poll() is None, (
        coordinator.log_path.read_text()[-2000:]
    )
    try:
        coordinator.api.request("GET", "/healthz", ok=statuses)
    except ApiError:
        return False
    return True


def test_the_packaged_mosquitto_serves_enrolled_agents_through_the_reload(
    debian: Debian, systemd: SystemdStandIn, tls_ca: ThrowawayCa, tmp_path: Path
) -> None:
    broker_port = free_port()
    coordinator = Coordinator(debian.path("/var/lib/bitfleet"), tls=tls_ca)
    files = debian.bitfleet_dir
    command = [
        *AS_SERVICE_USER,
        sys.executable,
        "-m",
        "bitfleet.server.cli",
        "coordinator",
        "--data-dir",
        str(coordinator.data_dir),
        "--port",
        str(coordinator.port),
        "--admin-token",
        coordinator.token,
        "--tls-cert",
        str(debian.path("/etc/bitfleet/server.pem")),
        "--tls-key",
        str(debian.path("/etc/bitfleet/server.key")),
        "--ca-file",
        str(debian.path("/etc/bitfleet/ca.pem")),
        "--mqtt-url",
        f"mqtts://coordinator:broker-pw@127.0.0.1:{broker_port}",
        "--broker-config-dir",
        str(files),
        "--broker-group",
        BROKER_USER,
        "--broker-listen-host",
        "127.0.0.1",
        "--broker-tls-cert",
        str(debian.path("/etc/mosquitto/certs/bitfleet.pem")),
        "--broker-tls-key",
        str(debian.path("/etc/mosquitto/certs/bitfleet.key")),
        "--broker-reload-command",
        f"{shlex.quote(str(debian.path('/usr/bin/systemctl')))} reload mosquitto",
        "--presence-timeout",
        "5",
    ]
    # The home of the system user docs/system-broker.md creates (numba caches kernels there).
    home = {"HOME": str(coordinator.data_dir)}
    coordinator.process = spawn(command, coordinator.log_path, home)
    broker = agent = None
    try:
        eventually(lambda: _healthy(coordinator, (200, 503)), "the coordinator did not start")
        gid = grp.getgrnam(BROKER_USER).gr_gid
        for name in ("passwords", "acl", "bitfleet.conf"):
            info = (files / name).stat()
            assert (info.st_uid, info.st_gid) == (SERVICE_UID, gid), name
            assert stat.S_IMODE(info.st_mode) == 0o640, name
        # As systemd starts the unit: root, the packaged configuration.
        broker = spawn([mosquitto_binary(), "-c", str(debian.conf)], tmp_path / "mosquitto.log")
        assert wait_for_port(broker_port), (tmp_path / "mosquitto.log").read_text()
        status = Path(f"/proc/{broker.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{pwd.getpwnam(BROKER_USER).pw_uid}\s", status, re.M)
        eventually(lambda: _healthy(coordinator, (200,)), "the coordinator never logged in")

        reloads = systemd.reloads
        secret = coordinator.api.request(
            "POST", "/api/v1/agents", json_body={"agent_id": "pi-01"}
        ).json()["secret"]
        assert systemd.reloads > reloads  # the enrollment reached the broker by a reload
        data = tmp_path / "p" / "agent-0.npz"
        partition = ["data", "partition", "--dataset", "digits", "--agents", "1", "--scheme"]
        partition += ["iid", "--seed", "0"]
        assert server_cli.main([*partition, "--out", str(data.parent)]) == 0
        agent = AgentProcess(
            "pi-01",
            secret,
            coordinator.url,
            data,
            tmp_path / "state",
            mqtt_url=f"mqtts://127.0.0.1:{broker_port}",
            transport="mqtt",
            extra=["--ca-file", str(tls_ca.ca)],
        ).start()
        coordinator.wait_online(1, timeout=60, agents=[agent])
        assert not login(broker_port, "pi-01", "not-" + secret)
        agent.stop()

        reloads = systemd.reloads
        coordinator.api.request("POST", "/api/v1/agents/pi-01/revoke")
        assert systemd.reloads > reloads
        eventually(lambda: not login(broker_port, "pi-01", secret), "revoked, still admitted")
    finally:
        if agent is not None:
            agent.stop()
        coordinator.stop()
        stop_process(broker)


def _coordinator_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line error of a coordinator that refuses to start (exit 2)."""
    common = ["coordinator", "--data-dir", "DATA", "--port", str(free_port())]
    assert server_cli.main([*common, "--admin-token", "t", *argv]) == 2
    return capsys.readouterr().err


def test_broker_file_options_refuse_what_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = ["--mqtt-url", "mqtt://coordinator:pw@127.0.0.1:1883"]
    files = ["--broker-config-dir", str(tmp_path / "broker")]
    said = _coordinator_error([*url, *files, "--broker-group", "no-such-group-x"], capsys)
    assert "no such group" in said
    group = grp.getgrgid(os.getgid()).gr_name
    said = _coordinator_error([*url, *files, "--broker-group", group], capsys)
    assert f"-g {group} -m 2750 {tmp_path / 'broker'}" in said
    reload = ["--broker-reload-command", "no-such-systemctl reload mosquitto"]
    assert "no-such-systemctl: no such command" in _coordinator_error(
        [*url, *files, *reload], capsys
    )
    both = ["--broker-reload-command", "true", "--broker-pid-file", "x.pid"]
    assert "not both" in _coordinator_error([*url, *files, *both], capsys)
    assert "give one of those" in _coordinator_error([*url, "--broker-group", group], capsys)
    assert "Traceback" not in capsys.readouterr().err
