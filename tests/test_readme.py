"""Every ``sh`` block of the README runs as written, or names the test that covers it.

The walker reads the README's command blocks, keyed by their heading, and handles each by an
entry of ``TABLE``: an unlisted block fails (a new block cannot go untested), and so does an
entry whose block is gone. A ``Runs`` entry runs its block with ``bash -euo pipefail`` in a
temporary directory against real parts (Mosquitto, coordinators, agent processes on
loopback, TLS from the session CA); the only changes are the entry's exact replacements,
each of which must occur in the block: host names and ports to loopback and the ports of
processes the test started, placeholders to real values, ``sudo`` dropped, bounding flags
for long training runs. A long-running command (``bitfleet coordinator``, ``bitfleet-agent
run``) is started in the background, waited on until it serves, then stopped by the end of
the script, and its exit status is the script's. A ``Covered`` entry names the tests that
cover a block that cannot run here (no Docker engine, no root systemd), and those tests
must exist.
"""

from __future__ import annotations

import ast
import contextlib
import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bitfleet
from bitfleet.datasets import load_dataset
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.modelfile import load_model
from bitfleet.server.tlsca import ThrowawayCa
from tests.cluster import Broker, Coordinator, free_port
from tests.manual import JOB, partition_files

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent

# The id of the newest job, for the README's JOB_ID (a job the block itself submitted).
NEWEST_JOB = (
    "\"$(bitfleet jobs list --json{url} | python -c 'import json, sys; "
    'print(json.load(sys.stdin)["jobs"][-1]["id"])\')"'
)


def readme_blocks(text: str) -> dict[str, str]:
    """The ``sh`` blocks of ``text`` as "heading #n" -> the block's lines."""
    blocks: dict[str, str] = {}
    heading, counts = "", dict[str, int]()
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("```"):
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            if line.strip() == "```sh":
                counts[heading] = counts.get(heading, 0) + 1
                blocks[f"{heading} #{counts[heading]}"] = "\n".join(body) + "\n"
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


@dataclass(frozen=True)
class Covered:
    """A block that cannot run here, and the tests (``path::function``) that cover it."""

    tests: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Runs:
    """A block the walker runs: ``walk`` sets up and checks; ``adapt`` is every change made
    to the block (exact old text -> new text, ``{name}`` filled with the walk's real
    values); ``background`` starts the long-running command that begins with it."""

    walk: Callable[[Walk], None]
    adapt: tuple[tuple[str, str], ...] = ()
    background: str | None = None
    stopped: int = 0  # the exit status of the background command stopped by SIGTERM
    elsewhere: tuple[str, ...] = ()  # tests of what an adaptation made a no-op (": cmd")


@dataclass
class Walk:
    """One block's run: its text, its entry, a fresh working directory and environment."""

    block: str
    entry: Runs
    cwd: Path
    request: pytest.FixtureRequest
    env: dict[str, str] = field(default_factory=dict)
    scripts: list[subprocess.Popen[str]] = field(default_factory=list)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def script(self, values: dict[str, str]) -> str:
        """The block with the entry's replacements made at once (none inside another)."""
        news = {old: new.format(**values) for old, new in self.entry.adapt}
        for old in news:
            assert old in self.block, f"the README block no longer says {old!r}:\n{self.block}"
        if not news:
            return self.block
        pattern = "|".join(re.escape(old) for old in sorted(news, key=len, reverse=True))
        return re.sub(pattern, lambda match: news[match.group(0)], self.block)

    def _bash(self, script: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        env.update({"HOME": str(self.cwd / "home"), **self.env})
        for name in ("BITFLEET_URL", "BITFLEET_ADMIN_TOKEN", "BITFLEET_MQTT_URL"):
            if name not in self.env:
                env.pop(name, None)
        (self.cwd / "home").mkdir(exist_ok=True)
        with (self.cwd / "stdout").open("w") as out, (self.cwd / "stderr").open("w") as errors:
            process = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=errors,
                text=True,
                start_new_session=True,  # its own process group: cleanup() reaches every child
            )
        self.scripts.append(process)
        return process

    def cleanup(self) -> None:
        """Stop what a failed block left running: the process group of each script."""
        for process in self.scripts:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)

    def output(self) -> str:
        return (self.cwd / "stdout").read_text()

    def _finished(self, process: subprocess.Popen[str], timeout: float) -> str:
        process.wait(timeout=timeout)
        errors = (self.cwd / "stderr").read_text()
        assert process.returncode == 0, f"exit {process.returncode}\n{self.output()}\n{errors}"
        assert "Traceback" not in errors, errors
        return self.output()

    def run(self, timeout: float = 300.0, **values: str) -> str:
        """Run the adapted block to its end; its standard output (exit status 0)."""
        return self._finished(self._bash(self.script(values)), timeout)

    def start(self, **values: str) -> Started:
        """Run the adapted block with its long-running command in the background: the rest
        of the script waits for ``Started.finish()``, and its end stops the command."""
        assert self.entry.background is not None
        script = self.script(values)
        start = script.index(self.entry.background)
        end = start
        while script[end : script.index("\n", end)].rstrip().endswith("\\"):
            end = script.index("\n", end) + 1
        end = script.index("\n", end)
        line_start = script.rindex("\n", 0, end) + 1
        comment = script.find("  #", line_start, end)
        command_end = end if comment < 0 else comment
        go = self.cwd / "ready"
        wait = f"\nbg=$!\nuntil [ -e {go} ]; do kill -0 $bg; sleep 0.1; done"
        script = f"{script[:command_end]} &{script[command_end:end]}{wait}{script[end:]}"
        stop = "kill -TERM $bg\nstatus=0\nwait $bg || status=$?\n"
        stop += f"test $status = {self.entry.stopped}\n"
        return Started(self, self._bash(script + stop), go)


@dataclass
class Started:
    walk: Walk
    process: subprocess.Popen[str]
    go: Path

    def until(self, holds: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        """Poll ``holds`` while the script runs; fail if the script ends first."""
        deadline = time.monotonic() + timeout
        while not holds():
            if self.process.poll() is not None or time.monotonic() > deadline:
                errors = (self.walk.cwd / "stderr").read_text()
                pytest.fail(f"{what}: exit {self.process.returncode}\n{errors[-3000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float = 120.0) -> str:
        """Let the rest of the script run and stop the command; the script's output."""
        self.go.touch()
        return self.walk._finished(self.process, timeout)


@dataclass
class Cluster:
    broker: Broker
    coordinator: Coordinator
    parts: list[Path]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tls_ca: ThrowawayCa) -> Iterator[Cluster]:
    """One TLS broker and coordinator for the blocks that talk to a fleet."""
    directory = tmp_path_factory.mktemp("readme-cluster")
    broker = Broker(directory / "broker", tls=tls_ca).start()
    coordinator = Coordinator(directory / "coordinator", broker, tls=tls_ca)
    try:
        coordinator.start()
        yield Cluster(broker, coordinator, partition_files(directory / "parts", 2))
    finally:
        coordinator.kill()
        broker.stop()


def _healthy(url: str, ca_file: str | None) -> bool:
    try:
        ApiClient(url, None, ca_file=ca_file).request("GET", "/healthz")
    except ApiError:
        return False
    return True


def _json_values(text: str) -> list[Any]:
    """The JSON values printed one after another in ``text``, other lines skipped."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := next((i for i in range(at, len(text)) if text[i] in "{["), -1)) >= 0:
        try:
            value, at = decoder.raw_decode(text, at)
            values.append(value)
        except json.JSONDecodeError:
            at += 1
    return values


def walk_tls(w: Walk) -> None:
    out = w.run()
    assert "created a CA in tls" in out and "client certificate for pi-kitchen" in out
    assert (w.cwd / "tls" / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")


def walk_coordinator(w: Walk) -> None:
    """Beside a broker of the test's (Debian's packaged one and its reload are
    tests/test_system_broker.py's): the config it writes, the link it makes."""
    if os.geteuid() != 0:
        pytest.skip("a directory of group mosquitto (--broker-group) takes root to make")
    tls: ThrowawayCa = w.fixture("tls_ca")
    broker = Broker(w.cwd / "broker", tls=tls).start()  # its own: one coordinator per user
    config = w.cwd / "etc" / "mosquitto" / "bitfleet"
    config.mkdir(parents=True)
    os.chown(config, -1, grp.getgrnam("mosquitto").gr_gid)  # docs/system-broker.md's setup
    config.chmod(0o2750)
    systemctl = w.cwd / "usr" / "bin" / "systemctl"  # no systemd here: it notes the reload
    systemctl.parent.mkdir(parents=True)
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {w.cwd / "reloads"}\n')
    systemctl.chmod(0o755)
    port = free_port()
    values = {"tmp": str(w.cwd), "port": str(port), "ca": str(tls.ca)}
    values |= {"cert": str(tls.server.cert), "key": str(tls.server.key)}
    started = w.start(**values, broker_password=broker.password, broker_port=str(broker.port))
    try:
        url = f"https://127.0.0.1:{port}"
        started.until(lambda: _healthy(url, str(tls.ca)), "the coordinator never got healthy")
        listener = (config / "bitfleet.conf").read_text()
        assert f"listener {broker.port} 0.0.0.0\n" in listener and "password_file" in listener
        assert (w.cwd / "reloads").read_text().splitlines()[0] == "reload mosquitto"
        with pytest.raises(ApiError) as refused:
            ApiClient(url, "not-the-token", ca_file=str(tls.ca)).request("GET", "/api/v1/jobs")
        assert refused.value.status == 403
        started.finish()
    finally:
        broker.stop()


def walk_jobs(w: Walk) -> None:
    """With two agent processes online the README's job.json (a tiny digits job) ends."""
    cluster: Cluster = w.fixture("cluster")
    coordinator = cluster.coordinator
    (w.cwd / "job.json").write_text(json.dumps({**JOB, "rounds": 2, "agents_per_round": 2}))
    agents = [
        coordinator.start_agent(f"jobs-{i}", part, w.cwd / f"jobs-{i}", cluster.broker.agent_url)
        for i, part in enumerate(cluster.parts)
    ]
    try:
        coordinator.wait_online(2, agents=agents)
        w.env["BITFLEET_ADMIN_TOKEN"] = coordinator.token
        out = w.run(url=coordinator.url, job_id=NEWEST_JOB.format(url=""))
    finally:
        stopped = [agent.stop() for agent in agents]
    assert stopped == [0, 0]
    lines = out.splitlines()
    assert lines[0] == "agent_id pi-kitchen" and "completed" in lines
    assert re.fullmatch(r"wrote model\.bfm \(\d+ bytes\)", lines[lines.index("completed") + 3])
    model, _ = load_model(w.cwd / "model.bfm")
    assert model.layer_sizes == [64, 64, 10]
    rounds = (w.cwd / "rounds.csv").read_text().splitlines()
    assert rounds[0].startswith("round,test_accuracy,") and len(rounds) == 1 + 2
    header = max(i for i, line in enumerate(lines) if line.split()[:2] == ["agent", "state"])
    listed = {line.split()[0]: line.split()[1] for line in lines[header + 1 :]}
    assert listed["pi-kitchen"] == "offline" and listed["jobs-0"] == "online", lines


def walk_curl(w: Walk) -> None:
    """The README's plaintext URL: a coordinator without TLS, on loopback only."""
    coordinator = Coordinator(w.cwd / "coordinator").start()
    try:
        w.env["BITFLEET_ADMIN_TOKEN"] = coordinator.token
        newest = NEWEST_JOB.format(url=f" --url {coordinator.url}")
        out = w.run(port=str(coordinator.port), job_id=newest)
        job_id = _json_values(out)[0]["id"]
        deadline = time.monotonic() + 60
        while (job := coordinator.job(job_id))["reason"] is None:  # until the engine's tick
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    finally:
        coordinator.kill()
    submitted, shown = _json_values(out)
    assert submitted["status"] == shown["status"] == "pending" and shown["id"] == submitted["id"]
    assert job["reason"] == "waiting for 3 agents, 0 online"
    # A job that never started has a current model already: round 0's random bits.
    model, _ = load_model(w.cwd / "model.bfm")
    assert model.layer_sizes == [784, 512, 10]


def _wheel_name(block: str) -> str:
    """The wheel the block names, checked against the version this checkout builds."""
    (name,) = set(re.findall(r"dist/(bitfleet-[^-]+-py3-none-any\.whl)", block))
    assert name == f"bitfleet-{bitfleet.__version__}-py3-none-any.whl", name
    return name


def walk_installer(w: Walk) -> None:
    wheel = w.cwd / "dist" / _wheel_name(w.block)
    wheel.parent.mkdir()
    wheel.write_bytes(b"")  # the dry run checks that it exists, and never reads it
    shutil.copyfile(w.fixture("cluster").parts[0], w.cwd / "data.npz")
    out = w.run(root=str(ROOT))
    assert "-m pip install " in out and f"{wheel}[agent,fast]" in out, out
    assert "dry run complete: nothing was changed" in out


def walk_agent_by_hand(w: Walk) -> None:
    _wheel_name(w.block)
    cluster: Cluster = w.fixture("cluster")
    coordinator = cluster.coordinator
    shutil.copyfile(cluster.parts[0], w.cwd / "data.npz")
    shutil.copyfile(os.environ["BITFLEET_CA_FILE"], w.cwd / "ca.pem")
    secret = coordinator.api.request("POST", "/api/v1/agents", json_body={"agent_id": "pi-hall"})
    started = w.start(
        url=coordinator.url, secret=secret.json()["secret"], mqtt_url=cluster.broker.agent_url
    )

    def online() -> bool:
        agents = coordinator.api.request("GET", "/api/v1/agents").json()
        return any(a["agent_id"] == "pi-hall" and a["online"] for a in agents)

    started.until(online, "the agent never came online")
    lines = started.finish().splitlines()
    assert lines[0].startswith(f"enrolled pi-hall with {coordinator.url}; config written to")
    assert lines[1] == "agent pi-hall: waiting (mqtt transport)"  # status, while it runs
    assert lines[3].split(maxsplit=1) == ["layers", "[64, 512, 10]"]  # the selftest's round


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), fmt="%d", delimiter=",", header=header, comments="")


def walk_training(w: Walk) -> None:
    """The README's own data files (mine.csv, new-rows.csv) are digits, as CSV."""
    digits = load_dataset("digits")
    _csv(w.cwd / "mine.csv", digits.x_train, digits.y_train)
    _csv(w.cwd / "new-rows.csv", digits.x_test, digits.y_test)
    out = w.run()
    bitflip, floats, mine, forward, lastmile = _json_values(out)
    assert (bitflip["state_bits"], bitflip["model_path"], floats["algo"]) == (8, "m.bfm", "float")
    assert re.search(r"^m\.bfm: test accuracy 0\.\d+ on 10000 samples", out, re.M)
    assert (mine["model"], mine["split"], mine["test_samples"]) == ("mine.bfm", "whole", 359)
    assert len(list((w.cwd / "partitions").glob("agent-*.npz"))) == 5
    assert forward["init"] == "pre.bfm" and forward["dataset"] == "fashion-mnist:rotate30"
    assert lastmile["shift"] == "rotate30" and 0 < lastmile["forward_accuracy"] <= 1


def walk_simulating(w: Walk) -> None:
    out = w.run()
    majority, fleet, mine, bench = _json_values(out)
    assert re.search(r"^final test accuracy 0\.\d+ after 1 rounds", out, re.M)
    assert majority["hyperparameters"]["aggregation"] == "majority"
    assert fleet["agents"] == 10 and fleet["hostile"] == 3 and fleet["attack"] == "invert-last"
    assert mine["agents"] == 3 and len(mine["rounds"]) == 5 and mine["final_test_accuracy"] > 0
    sides = bench["fedavg"], bench["bitfleet"]
    assert sides[0]["bytes_per_agent_round_up"] > sides[1]["bytes_per_agent_round_up"]


def walk_export(w: Walk) -> None:
    """The README's m.bfm and pre.bfm, small: a digits bit network and fixed-point model."""
    for args in (["train", "--out", "m.bfm"], ["pretrain", "--out", "pre.bfm"]):
        done = subprocess.run(
            [str(VENV_BIN / "bitfleet"), *args, "--dataset", "digits", "--epochs", "1"],
            cwd=w.cwd,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    out = w.run()
    assert re.search(r"^wrote firmware/bitfleet_model\.c \(\d+ bytes\)", out, re.M)
    assert (w.cwd / "firmware/bitfleet_model.o").stat().st_size > 0
    assert (w.cwd / "linux-board/bitfleet_model.h").exists()
    assert (w.cwd / "arrays/bitfleet_model.npz").exists()
    (bench,) = _json_values(out)
    assert set(bench["models"]) == {"binary", "ternary", "int16"}


def walk_speed(w: Walk) -> None:
    kernels, aggregate = _json_values(w.run())
    assert kernels["layer"] == "784->512" and kernels["binary_dense_speedup"] > 0
    assert aggregate["identical"] is True and aggregate["payloads"] == 20


TABLE: dict[str, Covered | Runs] = {
    "Quick start #1": Covered(
        (
            "tests/test_demo.py::test_demo_runs_a_job_end_to_end_and_cleans_up",
            "tests/test_docs.py::test_readme_names_the_two_setup_commands_and_they_exist",
        ),
        "make demo installs packages and trains for minutes; make test is CI itself (.ci/run)",
    ),
    "Installing #1": Covered(
        (
            "tests/test_packaging.py::test_the_sdist_carries_the_sources_license_and_readme",
            "tests/test_packaging.py::test_the_wheel_has_one_import_root_and_its_metadata",
            "tests/test_packaging.py::test_the_installed_wheel_works_away_from_the_checkout",
        ),
        "make dist builds with isolation (an index); the test builds the same wheel offline "
        "and installs it in a new virtualenv without an index",
    ),
    "Coordinator and broker #1": Runs(
        walk_coordinator,
        (
            ("/var/lib/bitfleet", "{tmp}/var/lib/bitfleet"),
            ("--host 0.0.0.0", "--host 127.0.0.1"),
            ("--port 8080", "--port {port}"),
            ("/etc/bitfleet/server.pem", "{cert}"),
            ("/etc/bitfleet/server.key", "{key}"),
            ("BROKER_PASSWORD", "{broker_password}"),
            ("broker.example:8883", "127.0.0.1:{broker_port}"),
            ("/etc/bitfleet/ca.pem", "{ca}"),
            ("/etc/mosquitto/bitfleet", "{tmp}/etc/mosquitto/bitfleet"),
            ("/etc/mosquitto/certs/bitfleet.pem", "{cert}"),
            ("/etc/mosquitto/certs/bitfleet.key", "{key}"),
            ("sudo -n /usr/bin/systemctl", "{tmp}/usr/bin/systemctl"),
        ),
        background="bitfleet coordinator",
        stopped=128 + signal.SIGTERM,  # uvicorn re-raises the signal after a clean shutdown
    ),
    "TLS #1": Runs(walk_tls),
    "Jobs and agents from the command line #1": Runs(
        walk_jobs,
        (("https://coordinator:8080", "{url}"), ("JOB_ID", "{job_id}")),
    ),
    "With curl #1": Runs(
        walk_curl,
        (("http://localhost:8080", "http://localhost:{port}"), ("JOB_ID", "{job_id}")),
    ),
    "An agent on a Raspberry Pi #1": Runs(
        walk_installer,
        (
            ("make dist", ": make dist"),  # a stand-in wheel: the dry run only checks it exists
            ("sudo edge_agent/install/install.sh", "{root}/edge_agent/install/install.sh"),
            ("--data data.npz", "--data data.npz --dry-run"),
        ),
        elsewhere=(
            "tests/test_packaging.py::test_the_wheel_has_one_import_root_and_its_metadata",
            "tests/test_install.py::test_unit_passes_systemd_analyze_verify",
        ),
    ),
    "An agent on a Raspberry Pi #2": Runs(
        walk_agent_by_hand,
        (
            ("pip install", ": pip install"),  # the checkout's venv has bitfleet[agent]
            ("https://HOST:8080", "{url}"),
            ("--agent-id ID", "--agent-id pi-hall"),
            ("SECRET", "{secret}"),
            ("mqtts://HOST:8883", "{mqtt_url}"),
        ),
        background="bitfleet-agent run",
        elsewhere=(
            "tests/test_packaging.py::test_the_installed_wheel_works_away_from_the_checkout",
        ),
    ),
    "docker-compose #1": Covered(
        ("tests/test_compose.py::test_the_compose_flow_runs_as_uid_10001",),
        "no Docker engine runs here: the test runs each service's command as its container",
    ),
    "Training on one machine #1": Runs(
        walk_training,
        (
            ("--out m.bfm --json", "--out m.bfm --json --epochs 1"),
            (
                "--algo float --dataset fashion-mnist --json",
                "--algo float --dataset fashion-mnist --json --epochs 1",
            ),
            ("--out pre.bfm", "--out pre.bfm --epochs 1"),
            ("fashion-mnist:rotate30 --json", "fashion-mnist:rotate30 --json --epochs 1"),
            ("--shift rotate30 --json", "--shift rotate30 --json --samples 1000 --epochs 1"),
        ),
    ),
    "Simulating a fleet #1": Runs(
        walk_simulating,
        (
            ("--rounds 20 --seed 0 --workers", "--rounds 1 --layers 784,32,10 --seed 0 --workers"),
            (
                "--rounds 20 --hp aggregation='\"majority\"' --json",
                "--rounds 1 --hp aggregation='\"majority\"' --json --layers 784,32,10",
            ),
            ("--rounds 20 --json\n", "--rounds 1 --json --layers 784,32,10\n"),
            ("--rounds 20 --json   #", "--rounds 1 --json --layers 784,32,10   #"),
        ),
    ),
    "On a device: C source, or plain arrays #1": Runs(
        walk_export,
        (("bench export --json", "bench export --json --samples 20"),),
    ),
    "Speed #1": Runs(
        walk_speed,
        (
            ("bench kernels --json", "bench kernels --json --repeats 1"),
            ("bench aggregate --json", "bench aggregate --json --payloads 20 --weights 100000"),
        ),
    ),
}


def test_every_block_is_in_the_table_and_every_entry_has_its_block() -> None:
    blocks = set(readme_blocks(README.read_text()))
    assert not blocks - set(TABLE), "README blocks no entry handles"
    assert not set(TABLE) - blocks, "entries whose README block is gone"


@pytest.mark.parametrize(
    "key", [k for k, e in TABLE.items() if isinstance(e, Covered) or e.elsewhere], ids=str
)
def test_a_block_that_cannot_run_here_names_tests_that_exist(key: str) -> None:
    entry = TABLE[key]
    for test in entry.tests if isinstance(entry, Covered) else entry.elsewhere:
        path, name = test.split("::")
        tree = ast.parse((ROOT / path).read_text())
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        why = entry.why if isinstance(entry, Covered) else "an adaptation made it a no-op"
        assert name in functions, f"{test} does not exist; it covers {key}: {why}"


@pytest.mark.parametrize("key", [k for k, e in TABLE.items() if isinstance(e, Runs)], ids=str)
def test_the_block_runs_as_written(
    key: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    entry = TABLE[key]
    assert isinstance(entry, Runs)
    block = readme_blocks(README.read_text()).get(key)
    assert block is not None, f"no README block {key}"
    walk = Walk(block, entry, tmp_path, request)
    try:
        entry.walk(walk)
    finally:
        walk.cleanup()
