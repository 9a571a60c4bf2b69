"""docker-compose.yml and the images of docker/, checked without a Docker engine.

No engine runs here. The files are checked statically against the real code, and against
what Docker does with them: at every container creation a named volume takes the owner and
mode of the image's directory where it is mounted, and where the image has no such
directory it stays as ``docker volume create`` made it, root's. The compose flow then runs
for real on loopback: every service's command as its container runs it, as uid 10001, with
its volumes laid out and owned as the images lay out and own them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitfleet.edge_agent import cli as agent_cli
from bitfleet.server import cli as server_cli
from bitfleet.server.cli.demo.cluster import free_port, mosquitto_binary, stop_process
from bitfleet.server.jobspec import JobSpec
from bitfleet.tls import ca_file_from_env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
VOLUMES = set(COMPOSE["volumes"])
AGENTS = sorted(name for name in SERVICES if name.startswith("agent-"))
SERVICE_UID = 10001  # every service's uid and gid, in both images and in the compose file

# The services' user, for the processes this test starts as root (the PDEATHSIG makes them
# die with the test, even a killed one).
AS_SERVICE_USER = [
    "setpriv",
    f"--reuid={SERVICE_UID}",
    f"--regid={SERVICE_UID}",
    "--clear-groups",
    "--pdeathsig=TERM",
    "--",
]


# --- the images, as far as a container sees them --------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped (also
    tests/test_install.py's reading of the agent's Dockerfile)."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


@dataclass
class Image:
    """What a container of a Dockerfile's final stage starts from."""

    base: str
    user: str = "root"
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Directories the image makes (install -d, useradd --create-home): path -> uid, gid, mode.
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    home: str = "/"


def parse_image(path: Path) -> Image:
    stages: dict[str, Image] = {}
    image = Image("scratch")
    for keyword, args in dockerfile_instructions(path):
        if keyword == "FROM":
            words = args.split()
            image = copy.deepcopy(stages[words[0]]) if words[0] in stages else Image(words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = image
        elif keyword == "USER":
            image.user = args
        elif keyword == "WORKDIR":
            image.workdir = args
        elif keyword == "ENTRYPOINT":
            image.entrypoint = json.loads(args)
        elif keyword == "ENV":
            image.env.update(pair.partition("=")[::2] for pair in shlex.split(args))
        elif keyword == "RUN":
            for command in re.split(r"&&|;", args):
                _record_dirs(image, shlex.split(command))
    return image


def _record_dirs(image: Image, words: list[str]) -> None:
    """The directories (and their owners) one shell command of a RUN makes."""
    if words[:1] == ["useradd"] and "--create-home" in words:
        ids = int(words[words.index("--uid") + 1]), int(words[words.index("--gid") + 1])
        image.home = f"/home/{words[-1]}"
        image.dirs[image.home] = (*ids, 0o700)
    if words[:2] != ["install", "-d"]:
        return
    options = {"-o": "0", "-g": "0", "-m": "0755"}
    paths: list[str] = []
    rest = iter(words[2:])
    for word in rest:
        if word in options:
            options[word] = next(rest)
        else:
            paths.append(word)
    owner = int(options["-o"]), int(options["-g"]), int(options["-m"], 8)
    image.dirs.update(dict.fromkeys(paths, owner))


BUILT = {
    name: parse_image(ROOT / service["build"]["context"] / service["build"]["dockerfile"])
    for name, service in SERVICES.items()
    if "build" in service
}


def named_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(volume, target, writable) for each named volume of a service."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *options = entry.split(":")
        if source in VOLUMES:
            mounts.append((source, target, "ro" not in options))
    return mounts


# --- static checks ---------------------------------------------------------------------------


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
        assert (ROOT / build["context"]).is_dir(), name
        assert BUILT[name].base == "python:3.11-slim-bookworm", name


def test_every_service_runs_as_uid_10001() -> None:
    for name, service in SERVICES.items():
        user = service.get("user") or BUILT[name].user
        assert user == f"{SERVICE_UID}:{SERVICE_UID}", name
    for dockerfile in ("Dockerfile", "agent.Dockerfile"):
        runs = " ".join(a for k, a in dockerfile_instructions(ROOT / "docker" / dockerfile))
        assert f"groupadd --gid {SERVICE_UID} bitfleet" in runs
        assert f"useradd --uid {SERVICE_UID} --gid {SERVICE_UID}" in runs


def test_every_volume_is_mounted_on_a_directory_the_image_gives_uid_10001() -> None:
    """Else Docker mounts it root's (0755) and uid 10001 cannot write it; and since each
    creation of a container gives the volume its image directory's owner and mode, every
    image mounting a shared volume must agree on them."""
    owners: dict[str, set[tuple[int, int, int]]] = {}
    for name, service in SERVICES.items():
        for volume, target, _ in named_mounts(service):
            if name not in BUILT:
                # eclipse-mosquitto has no directory there: the volume stays as the
                # bitfleet images (below) leave it.
                continue
            owner = BUILT[name].dirs.get(target)
            assert owner is not None, f"{name}: {target} is not made by its image"
            assert owner[:2] == (SERVICE_UID, SERVICE_UID), f"{name}: {target} is {owner}"
            owners.setdefault(volume, set()).add(owner)
    assert set(owners) == VOLUMES
    assert all(len(found) == 1 for found in owners.values()), owners


def test_every_command_is_the_real_cli_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        for key, value in (service.get("environment") or {}).items():
            monkeypatch.setenv(key, str(value))
        agent = BUILT[name].entrypoint == ["bitfleet-agent"]
        assert BUILT[name].entrypoint == ["bitfleet-agent" if agent else "bitfleet"]
        parser = (agent_cli if agent else server_cli).build_parser()
        parsed = parser.parse_args(service["command"])
        assert callable(parsed.func), name
        with pytest.raises(SystemExit) as shown:
            parser.parse_args([service["command"][0], "--help"])
        assert shown.value.code == 0
        for key in service.get("environment") or {}:
            monkeypatch.delenv(key)


def test_each_environment_variable_sets_an_option_of_its_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsed with the service's environment, each variable's value lands in an option that
    differs without it: the variable is read, not merely named somewhere."""
    for name, service in SERVICES.items():
        environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        if "build" not in service or not environment:
            continue
        agent = BUILT[name].entrypoint == ["bitfleet-agent"]
        cli = agent_cli if agent else server_cli
        for key in environment:
            monkeypatch.delenv(key, raising=False)
        bare = vars(cli.build_parser().parse_args(service["command"]))
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        given = vars(cli.build_parser().parse_args(service["command"]))
        # The agent resolves its CA when it connects (--ca-file, else the variable).
        if "ca_file" in given:
            given["ca_file"] = ca_file_from_env(given["ca_file"])
        for key, value in environment.items():
            options = [o for o, v in given.items() if v == value and bare.get(o) != value]
            assert options, f"{name}: {key}={value!r} sets no option of {service['command']}"
        for key in environment:
            monkeypatch.delenv(key)


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
    data = SERVICES["data"]["command"]
    out = data[data.index("--out") + 1]
    assert ("partitions", out, True) in named_mounts(SERVICES["data"])
    partitions = {f"agent-{i}.npz" for i in range(int(data[data.index("--agents") + 1]))}
    read = set()
    for name in AGENTS:
        command = SERVICES[name]["command"]
        directory, _, file = command[command.index("--data") + 1].rpartition("/")
        assert ("partitions", directory, False) in named_mounts(SERVICES[name])
        read.add(file)
    assert read == partitions
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


# --- the compose flow, service by service, as its containers run it -------------------------


@contextlib.contextmanager
def reachable_tmp() -> Iterator[Path]:
    """A temporary directory other users can reach (pytest's belong to our user alone)."""
    path = Path(tempfile.mkdtemp(prefix="bitfleet-test-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    with reachable_tmp() as path:
        yield path


def require_service_user() -> None:
    """Skip unless this test can run processes as uid 10001 that import bitfleet."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run the services as uid 10001")
    probe = [*AS_SERVICE_USER, sys.executable, "-c", "import bitfleet.server.cli"]
    if subprocess.run(probe, capture_output=True, check=False, timeout=60).returncode != 0:
        pytest.skip(f"uid {SERVICE_UID} cannot run {sys.executable} (an unreadable checkout)")


def _make_dir(path: Path, owner: tuple[int, int, int]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner[0], owner[1])
    path.chmod(owner[2])


def _dependency_order() -> list[str]:
    """The order docker compose creates the containers in."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dependency in SERVICES[name].get("depends_on") or {}:
            visit(dependency)
        if name not in order:
            order.append(name)

    for name in sorted(SERVICES):
        visit(name)
    return order


class Container:
    """A service of the compose file run as a process here: its paths map to the volumes
    (directories of the test), its host names and published ports to loopback ports."""

    def __init__(self, root: Path, name: str, binds: dict[str, Path], ports: dict[str, str]):
        self.service = SERVICES[name]
        self.image = BUILT.get(name)
        self.ports = ports
        self.log = root / "logs" / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        rootfs = root / "containers" / name
        self.mounts: dict[str, Path] = {}
        for entry in self.service.get("volumes", []):
            source, target = entry.split(":")[:2]
            if source in VOLUMES:
                self.mounts[target] = root / "volumes" / source
                self._populate(self.mounts[target], target)
            else:
                self.mounts[target] = binds.get(source, ROOT / source)
        # The image's own directories outside its volumes (its user's home).
        for path, owner in (self.image.dirs if self.image else {}).items():
            if self._mount_of(path) is None:
                self.mounts[path] = rootfs / path.lstrip("/")
                _make_dir(self.mounts[path], owner)

    def _populate(self, volume: Path, target: str) -> None:
        """What Docker does to a named volume when it creates this container: an empty
        volume gets the image's content there; every volume, its owner and mode."""
        dirs = self.image.dirs if self.image else {}
        if target not in dirs:
            return
        if not any(volume.iterdir()):
            for path, owner in sorted(dirs.items()):
                if path.startswith(target + "/"):
                    _make_dir(volume / path[len(target) + 1 :], owner)
        _make_dir(volume, dirs[target])

    def _mount_of(self, path: str) -> str | None:
        found = [t for t in self.mounts if path == t or path.startswith(t.rstrip("/") + "/")]
        return max(found, key=len) if found else None

    def translate(self, text: str) -> str:
        """A word of the container's world in ours: paths, host names, ports."""
        if text in self.ports:
            return self.ports[text]
        for port, ours in self.ports.items():
            for host in ("127.0.0.1", *SERVICES):
                text = text.replace(f"{host}:{port}", f"127.0.0.1:{ours}")
        text = text.replace("0.0.0.0", "127.0.0.1")  # loopback only

        def host_path(match: re.Match[str]) -> str:
            path = match.group()
            target = self._mount_of(path)
            return path if target is None else f"{self.mounts[target]}{path[len(target) :]}"

        return re.sub(r"(?<![\w.:/-])/[\w./-]*", host_path, text)

    def environment(self) -> dict[str, str]:
        # The image's programs (bitfleet, python, mosquitto) are ours.
        bins = [Path(sys.executable).parent, Path(mosquitto_binary()).parent]
        path = dict.fromkeys([*map(str, bins), "/usr/local/bin", "/usr/bin", "/bin"])
        env = {"PATH": ":".join(path)}
        env["HOME"] = self.image.home if self.image else "/"
        env.update(self.image.env if self.image else {})
        env.update({k: str(v) for k, v in (self.service.get("environment") or {}).items()})
        return {key: self.translate(value) for key, value in env.items()}

    def command(self, extra: list[str]) -> list[str]:
        entrypoint = self.service.get("entrypoint") or (self.image.entrypoint if self.image else [])
        words = [*entrypoint, *self.service.get("command", []), *extra]
        return [self.translate(word) for word in words]

    def start(self, extra: list[str] | None = None) -> None:
        self.log.parent.mkdir(exist_ok=True)
        workdir = self.translate(self.image.workdir if self.image else "/")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*AS_SERVICE_USER, *self.command(extra or [])],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=workdir,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        test = self.service["healthcheck"]["test"]
        assert test[0] == "CMD"
        check = [*AS_SERVICE_USER, *(self.translate(word) for word in test[1:])]
        ran = subprocess.run(check, env=self.environment(), capture_output=True, timeout=60)
        return ran.returncode == 0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""


def _compose_up(containers: dict[str, Container], done: str, timeout: float) -> None:
    """Start each service once its depends_on conditions hold, as docker compose does,
    until ``done`` exits; a service that stops on its own must have exited 0 and be a
    one-shot (no restart policy)."""
    healthy: set[str] = set()
    deadline = time.monotonic() + timeout

    def ready(name: str) -> bool:
        for dependency, rule in (SERVICES[name].get("depends_on") or {}).items():
            process = containers[dependency].process
            if rule["condition"] == "service_completed_successfully":
                ok = process is not None and process.poll() == 0
            elif rule["condition"] == "service_healthy":
                ok = dependency in healthy
            else:
                ok = process is not None
            if not ok:
                return False
        return True

    def finished() -> int | None:
        process = containers[done].process
        return None if process is None else process.poll()

    while finished() is None:
        assert time.monotonic() < deadline, f"{done} did not finish: {_tails(containers)}"
        for name, container in containers.items():
            if container.process is None and ready(name):
                # The broker's entrypoint script reads /broker unless told: tell it ours.
                container.start(["/broker"] if name == "broker" else [])
            elif container.process is not None and container.process.poll() is not None:
                one_shot = SERVICES[name].get("restart", "no") == "no"
                assert one_shot and container.process.returncode == 0, (
                    f"{name} exited {container.process.returncode}: {_tails(containers)}"
                )
            checked = container.process is not None and "healthcheck" in SERVICES[name]
            if checked and name not in healthy and container.healthy():
                healthy.add(name)
        time.sleep(0.5)
    assert finished() == 0, _tails(containers)


def _tails(containers: dict[str, Container]) -> str:
    return "".join(f"\n--- {name}\n{c.tail()}" for name, c in containers.items() if c.process)


def test_the_compose_flow_runs_as_uid_10001(shared_tmp: Path) -> None:
    """tls makes a CA, data the partitions, the coordinator (healthy by the compose
    healthcheck) writes the broker config and provisions the agents, the broker runs from
    that config, the agents join over mqtts:// and the submitter follows the demo job (one
    round of a small model here) to its end: every one as uid 10001."""
    require_service_user()
    demo = shared_tmp / "demo"
    demo.mkdir()
    shutil.copy(ROOT / "docker/demo/agents.json", demo)
    job = json.loads((ROOT / "docker/demo/job.json").read_text())
    job.update(rounds=1, model={**job["model"], "layers": [784, 32, 10]})
    (demo / "job.json").write_text(json.dumps(job))
    ports = {
        container: str(free_port())
        for service in SERVICES.values()
        for container in (p.split(":")[-1] for p in service.get("ports", []))
    }
    for volume in VOLUMES:
        (shared_tmp / "volumes" / volume).mkdir(parents=True)  # docker volume create
    containers = {
        name: Container(shared_tmp, name, {"./docker/demo": demo}, ports)
        for name in _dependency_order()
    }
    try:
        _compose_up(containers, "submit", timeout=300)
        assert "completed" in containers["submit"].tail()
    finally:
        for container in reversed(containers.values()):
            stop_process(container.process)
    for written in ("tls/ca.pem", "partitions/agent-0.npz", "broker-config/passwords"):
        assert (shared_tmp / "volumes" / written).stat().st_uid == SERVICE_UID, written
    for volume in ("coordinator-data", *(f"{name}-state" for name in AGENTS)):
        files = [p for p in (shared_tmp / "volumes" / volume).rglob("*") if p.is_file()]
        assert files and {p.stat().st_uid for p in files} == {SERVICE_UID}, volume
