"""Every user mistake on a command line: exit 2, one clear error line, never a traceback.

The contract of :mod:`bitfleet.cliargs` for ``bitfleet`` and ``bitfleet-agent``: one line
``PROG: error: ...`` on stderr (argparse may print its usage above it) and, with ``--json``,
one JSON error object on stdout and nothing else. The table runs in-process through
``main(argv)``, each case once as written and once more with ``--json`` where the command
takes it; what needs a process of its own (the console scripts, a port in use, a missing
server extra, a state directory another agent holds) runs as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bitfleet.datasets import MAX_CLASSES
from bitfleet.edge_agent import cli as agent_cli
from bitfleet.edge_agent.journal import Journal
from bitfleet.frames import Tensor, decode_frame, encode_frame
from bitfleet.server import cli as server_cli

ERROR_LINE = re.compile(r"^bitfleet(-agent)?( [a-z]+)*: error: \S")
UNREACHABLE = "http://127.0.0.1:9"  # loopback discard port: refused at once, no network
S, A = "bitfleet", "bitfleet-agent"
D = ["--dataset", "digits"]
PARTITION = ["data", "partition", *D, "--scheme", "iid", "--seed", "0"]
FORWARD = ["train", "--algo", "forward", "--init", "{d}/fixed.bfm", *D, "--epochs", "1"]
LASTMILE = ["lastmile", "--shift", "rotate30", *D, "--samples", "100", "--val-size", "50"]
WORKER = ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--port"]
AGENT = ["--coordinator", UNREACHABLE, "--agent-id", "pi-1", "--secret", "s"]
RUN = ["run", "--data", "digits", *AGENT]

# (CLI, argv, a fragment the error line must hold). "{d}" is the directory of the files
# below, "{state}" a fresh directory for each case.
CASES: list[tuple[str, list[str], str]] = [
    # A label of 10^9 in a user data file used to allocate 954 GiB.
    (S, ["train", "--dataset", "{d}/huge.npz", "--epochs", "1"], f"0 to {MAX_CLASSES - 1}"),
    (S, ["train", "--dataset", "{d}/huge.csv", "--epochs", "1"], "remap the classes"),
    (S, ["pretrain", "--dataset", "{d}/huge.npz", "--out", "{state}/m.bfm"], "1000000000"),
    (S, ["data", "info", "--dataset", "{d}/huge.npz"], "at most 4096 classes"),
    (
        S,
        [
            "data",
            "partition",
            "--dataset",
            "{d}/huge.csv",
            "--agents",
            "2",
            "--scheme",
            "iid",
            "--seed",
            "0",
            "--out",
            "{state}",
        ],
        "1000000000",
    ),
    (S, ["eval", "{d}/bit.bfm", "--dataset", "{d}/huge.npz"], "huge.npz"),
    (A, ["selftest", "--data", "{d}/huge.npz"], "0 to 4095"),
    (A, [*RUN[:2], "{d}/huge.npz", *RUN[3:], "--state-dir", "{state}"], "0 to 4095"),
    # Malformed model files.
    (S, ["eval", "{d}/empty.bfm", *D], "empty.bfm"),
    (S, ["eval", "{d}/garbage.bfm", *D], "garbage.bfm"),
    (S, ["eval", "{d}/truncated.bfm", *D], "truncated.bfm"),
    (S, ["eval", "{d}/flipped.bfm", *D], "flipped.bfm"),
    (S, ["eval", "{d}/mean2d.bfm", *D], ""),
    (S, ["eval", "{d}/martian.bfm", *D], ""),
    (S, ["eval", "{d}/missing.bfm", *D], "missing.bfm does not exist"),
    (S, ["eval", "{d}", *D], "Is a directory"),
    (S, ["eval", "{d}/bit.bfm", "--dataset", "{d}/missing.npz"], "not found"),
    (S, [*FORWARD[:4], "{d}/bit.bfm", *FORWARD[5:]], "fixed-point model"),
    # Coordinator URLs.
    (S, ["jobs", "list", "--url", "not a url"], "http:// or https://"),
    (S, ["jobs", "list", "--url", "ftp://example.com"], "http:// or https://"),
    (S, ["jobs", "list", "--url", "http://"], "names no host"),
    (S, ["jobs", "list", "--url", "http://127.0.0.1:99999"], "out of range"),
    (S, ["jobs", "list", "--url", "http://[::1"], "IPv6"),
    (S, ["jobs", "show", "j1", "--url", "localhost:8080"], "http://HOST:PORT"),
    (S, ["jobs", "cancel", "j1", "--url", "http://a host"], "spaces"),
    (S, ["agents", "list", "--url", "not a url"], "--url"),
    (S, ["agents", "add", "--url", "127.0.0.1"], "http:// or https://"),
    (S, ["agents", "revoke", "pi-1", "--url", "http://h/?x=1"], "query"),
    (S, ["jobs", "list", "--url", UNREACHABLE], "cannot reach the coordinator"),
    (A, ["enroll", "--coordinator", "not a url", "--agent-id", "a", "--secret", "s"], "http://"),
    (A, ["enroll", "--coordinator", "http://:80", "--agent-id", "a", "--secret", "s"], "host"),
    (
        A,
        [
            "run",
            "--data",
            "digits",
            "--coordinator",
            "not a url",
            "--agent-id",
            "a",
            "--secret",
            "s",
            "--state-dir",
            "{state}",
        ],
        "http:// or https://",
    ),
    # Ids that end up in URLs and topics.
    (S, ["jobs", "show", "a b", "--url", UNREACHABLE], "job id 'a b' is not valid"),
    (S, ["jobs", "download", "../x", "--url", UNREACHABLE], "job id"),
    (S, ["agents", "add", "--id", "Bad Id!", "--url", UNREACHABLE], "agent id"),
    (
        A,
        [
            "run",
            "--data",
            "digits",
            "--coordinator",
            UNREACHABLE,
            "--agent-id",
            "Bad Id!",
            "--secret",
            "s",
            "--state-dir",
            "{state}",
        ],
        "agent id",
    ),
    # Files named on the command line.
    (
        S,
        [
            "jobs",
            "submit",
            "{d}/job.json",
            "--initial-model",
            "{d}/missing.bfm",
            "--url",
            UNREACHABLE,
        ],
        "--initial-model",
    ),
    (
        S,
        ["jobs", "submit", "{d}/job.json", "--initial-model", "{d}", "--url", UNREACHABLE],
        "is not a file",
    ),
    (S, ["jobs", "submit", "{d}/missing.json", "--url", UNREACHABLE], "cannot read job file"),
    (S, ["jobs", "submit", "{d}/huge.csv", "--url", UNREACHABLE], "not valid JSON"),
    (S, ["train", *D, "--epochs", "1", "--out", "/proc/x/m.bfm"], "/proc/x does not exist"),
    (S, ["train", *D, "--epochs", "1", "--out", "{d}"], "is a directory"),
    (S, ["pretrain", *D, "--out", "/proc/x/m.bfm"], "/proc/x does not exist"),
    (S, ["jobs", "download", "j1", "--out", "/proc/x/m.bfm", "--url", UNREACHABLE], "/proc/x"),
    (S, ["train", "--dataset", "{d}/missing.npz"], "not found"),
    (S, ["train", "--dataset", "digits:bogus"], "unknown shift"),
    (S, ["train", "--algo", "forward", "--init", "{d}/missing.bfm", *D], "does not exist"),
    (S, ["train", "--algo", "float", "--init", "{d}/fixed.bfm", *D], "goes with --algo forward"),
    (S, [*LASTMILE, "--init", "{d}/missing.bfm"], "does not exist"),
    (S, ["data", "partition", *PARTITION[2:], "--agents", "2", "--out", "{d}/afile"], "afile"),
    (S, ["data", "info", "--dataset", "{d}/huge.csv", "--label-column", "nope"], "'nope'"),
    (S, ["train", "--dataset", "{d}/huge.csv", "--label-column", "9"], "label column 9"),
    (A, ["selftest", "--data", "{d}/missing.npz"], "not found"),
    (A, ["status", "--state-dir", "{d}/afile"], "not a directory"),
    (A, ["status", "--state-dir", "{state}", "--config", "{d}/job.json"], "chmod 600"),
    # Agent state directories that cannot be used.
    (A, [*RUN, "--state-dir", "/proc/x"], "state directory /proc/x"),
    (A, [*RUN, "--state-dir", "{d}/afile"], "--state-dir"),
    (A, [*RUN, "--state-dir", "{d}/afile/sub"], "afile/sub"),
    # Counts, sizes and numbers: zero or negative where they make no sense.
    (S, ["train", *D, "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (S, ["train", *D, "--epochs", "-1"], "--epochs"),
    (S, ["train", *D, "--epochs", "many"], "'many' is not a whole number"),
    (S, ["train", *D, "--batch-size", "0"], "--batch-size"),
    (S, ["train", *D, "--state-bits", "0", "--epochs", "1"], "use 1..16"),
    (S, ["train", *D, "--state-bits", "99", "--epochs", "1"], "state_bits 99"),
    (S, ["train", *D, "--val-size", "-1"], "--val-size: must be at least 0"),
    (S, ["train", *D, "--val-size", "100000", "--epochs", "1"], "validation size"),
    (S, ["train", *D, "--lr", "0"], "--lr: must be a number above 0"),
    (S, ["train", *D, "--lr", "nan"], "--lr"),
    (S, ["train", *D, "--lr", "-inf"], "--lr"),
    (S, ["train", *D, "--seed", "-1"], "--seed"),
    (S, ["train", *D, "--layers", "64,0,10", "--epochs", "1"], "layer sizes"),
    (S, ["train", *D, "--layers", "64,x,10"], "comma-separated"),
    (S, [*FORWARD, "--perturbations", "0"], "--perturbations"),
    (S, [*FORWARD, "--density", "0"], "density must be in (0, 1]"),
    (S, [*FORWARD, "--density", "1.5"], "density"),
    (S, [*FORWARD, "--eps", "0"], "eps 0 is out of range"),
    (S, [*FORWARD, "--train-layers", "-1"], "train_layers must be 0 (all) to 2"),
    (S, [*FORWARD, "--train-layers", "9"], "train_layers"),
    (S, ["pretrain", *D, "--out", "{state}/m.bfm", "--epochs", "0"], "--epochs"),
    (S, ["pretrain", *D, "--out", "{state}/m.bfm", "--batch-size", "0"], "--batch-size"),
    (S, ["pretrain", *D, "--out", "{state}/m.bfm", "--lr", "0"], "--lr"),
    (S, ["pretrain", *D, "--out", "{state}/m.bfm", "--val-size", "-5"], "--val-size"),
    (S, ["pretrain", *D, "--out", "{state}/m.bfm", "--seed", "-1"], "--seed"),
    (S, [*LASTMILE[:5], "--samples", "0"], "--samples"),
    (S, [*LASTMILE[:5], "--val-size", "0"], "--val-size"),
    (S, [*LASTMILE[:5], "--samples", "5000"], "leave pretraining data out"),
    (S, [*LASTMILE, "--epochs", "0"], "--epochs"),
    (S, [*LASTMILE, "--hidden", "0"], "--hidden"),
    (S, [*LASTMILE, "--batch-size", "-3"], "--batch-size"),
    (S, [*LASTMILE, "--lr", "0"], "--lr"),
    (S, [*LASTMILE[:1], "--shift", "bogus", *D], "unknown shift"),
    (S, [*PARTITION, "--agents", "0", "--out", "{state}"], "use between 1 and 1438 agents"),
    (S, [*PARTITION, "--agents", "-3", "--out", "{state}"], "across -3 agents"),
    (S, [*PARTITION, "--agents", "100000", "--out", "{state}"], "100000 agents"),
    (
        S,
        [
            *PARTITION[:5],
            "shards",
            "--seed",
            "0",
            "--agents",
            "2",
            "--shards-per-agent",
            "0",
            "--out",
            "{state}",
        ],
        "shards per agent",
    ),
    (
        S,
        [
            *PARTITION[:5],
            "dirichlet",
            "--seed",
            "0",
            "--agents",
            "2",
            "--alpha",
            "0",
            "--out",
            "{state}",
        ],
        "--alpha: must be a number above 0",
    ),
    (S, [*PARTITION[:7], "-1", "--agents", "2", "--out", "{state}"], "--seed"),
    (S, [*PARTITION, "--agents", "2", "--alpha", "inf", "--out", "{state}"], "--alpha"),
    (S, ["bench", "kernels", "--repeats", "0"], "--repeats"),
    (S, ["bench", "aggregate", "--payloads", "0"], "--payloads"),
    (S, ["bench", "aggregate", "--weights", "0"], "--weights: must be from 1 to"),
    (S, ["bench", "aggregate", "--repeats", "-1"], "--repeats"),
    (S, ["jobs", "download", "j1", "--round", "-1", "--url", UNREACHABLE], "--round"),
    (S, ["demo", "--agents", "0", "--workdir", "{state}"], "--agents"),
    (S, ["demo", "--rounds", "0", "--workdir", "{state}"], "--rounds"),
    (A, [*RUN, "--max-memory", "0", "--state-dir", "{state}"], "--max-memory"),
    (A, [*RUN, "--max-memory", "-5", "--state-dir", "{state}"], "--max-memory"),
    (A, ["selftest", "--data", "digits", "--samples", "0"], "--samples"),
    (A, ["selftest", "--data", "digits", "--samples", "-1"], "--samples"),
    (A, ["selftest", "--data", "digits", "--hidden", "0"], "--hidden"),
    # The coordinator's address.
    (S, ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--port", "99999"], "--port"),
    (S, ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--port", "0"], "--port"),
    (S, ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--port", "-1"], "--port"),
    (S, ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--port", "http"], "--port"),
    (
        S,
        ["coordinator", "--data-dir", "{state}", "--no-admin-token", "--host", "192.0.2.1"],
        "would travel in clear",
    ),
    (
        S,
        [
            *["coordinator", "--data-dir", "{state}", "--no-admin-token"],
            *["--insecure", "--host", "192.0.2.1"],
        ],
        "cannot listen on 192.0.2.1",
    ),
    (
        S,
        [
            *["coordinator", "--data-dir", "{state}", "--no-admin-token"],
            *["--tls-cert", "/nothere", "--tls-key", "/nothere"],
        ],
        "--tls-cert /nothere: no such file",
    ),
    # Several workers: what they share and how they log in (each case its own port: the
    # coordinator checks it can listen before it reads the rest).
    (S, [*WORKER, "59871", "--shared-subscription", "g"], "add --store postgresql://"),
    (
        S,
        [*WORKER, "59872", "--shared-subscription", "g", "--store", "postgresql://u@127.0.0.1:1/d"],
        "add --worker-id",
    ),
    (S, [*WORKER, "59873", "--worker-id", "Not An Id"], "--worker-id 'Not An Id' is not valid"),
    (S, [*WORKER, "59874", "--store", "postgresql://u:pw@127.0.0.1:1/d"], "cannot connect"),
    *[
        (S, [*WORKER, str(59875 + i), "--broker-worker-logins", f"{{d}}/{name}"], expect)
        for i, (name, expect) in enumerate(
            [
                ("logins-not-json.json", "expected a JSON list"),
                ("logins-object.json", "expected a JSON list"),
                ("logins-nested.json", "expected a JSON list"),
                ("logins-huge.json", "larger than 1048576 bytes"),
                ("logins-bad-user.json", "broker user 'Root User' is not valid"),
                ("logins-missing.json", "No such file"),
            ]
        )
    ],
    # argparse's own usage errors.
    (S, ["jobs", "frobnicate"], "invalid choice"),
    (S, ["train"], "--dataset"),
    (S, ["--json"], "COMMAND"),
    (S, ["train", *D, "--no-such-option"], "unrecognized arguments"),
    (A, ["frobnicate"], "invalid choice"),
    (A, ["run"], "--data"),
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _takes_json(cli: str, argv: list[str]) -> bool:
    """Whether the command ``argv`` names has a --json option."""
    parser = (server_cli if cli == S else agent_cli).build_parser()
    for word in argv:
        child = _subparsers(parser).get(word)
        if child is None:
            break
        parser = child
    return "--json" in parser._option_string_actions


def _table() -> list[object]:
    params: list[object] = []
    for cli, argv, expect in CASES:
        name = f"{cli} {' '.join(argv)}"
        params.append(pytest.param(cli, argv, expect, id=name))
        if "--json" not in argv and _takes_json(cli, argv):
            params.append(pytest.param(cli, [*argv, "--json"], expect, id=f"{name} --json"))
    return params


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad (and a few good) inputs: huge labels, malformed model files, a plain file."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, size=(50, 4)), rng.integers(0, 3, size=50)
    y[3] = 10**9
    np.savez(d / "huge.npz", X=x, y=y)
    np.savetxt(d / "huge.csv", np.column_stack([x, y]), fmt="%d", delimiter=",")
    (d / "job.json").write_text(json.dumps({"name": "j", "algorithm": "bitflip"}))
    (d / "afile").write_text("not a directory\n")
    (d / "logins-not-json.json").write_text("[{not json")
    (d / "logins-object.json").write_text('{"user": "w2", "password": "p"}')
    (d / "logins-nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "logins-huge.json").write_text(json.dumps([{"user": "w2", "password": "p" * (2 << 20)}]))
    (d / "logins-bad-user.json").write_text(json.dumps([{"user": "Root User", "password": "p"}]))
    small = ["--layers", "64,8,10", "--epochs", "1", "--json"]
    for command, name in (("train", "bit"), ("pretrain", "fixed")):
        assert server_cli.main([command, *D, *small, "--out", str(d / f"{name}.bfm")]) == 0
    assert server_cli.main(["train", "--algo", "float", *D, *small, "--out", str(d / "f.bfm")]) == 0
    good = (d / "bit.bfm").read_bytes()
    flipped = bytearray(good)
    flipped[40] ^= 0xFF
    (d / "empty.bfm").write_bytes(b"")
    (d / "garbage.bfm").write_bytes(bytes(rng.integers(0, 256, size=300, dtype=np.uint8)))
    (d / "truncated.bfm").write_bytes(good[: len(good) // 2])
    (d / "flipped.bfm").write_bytes(bytes(flipped))
    floats = decode_frame((d / "f.bfm").read_bytes())
    mean2d = Tensor("input_mean", "float32", (64, 1), np.zeros((64, 1), np.float32))
    tensors = [mean2d, *(t for n, t in floats.tensors.items() if n != "input_mean")]
    (d / "mean2d.bfm").write_bytes(encode_frame(floats.kind, floats.meta, tensors))
    bits = decode_frame(good)
    martian = {**bits.meta, "model_type": "martian"}
    (d / "martian.bfm").write_bytes(encode_frame(bits.kind, martian, [*bits.tensors.values()]))
    return d


def _run_in_process(
    cli: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = (server_cli.main if cli == S else agent_cli.main)(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, out: str, err: str, expect: str, as_json: bool) -> None:
    """Exit 2; one error line holding ``expect`` (argparse's usage may stand above it,
    nothing else); under --json exactly one JSON error object on stdout."""
    assert "Traceback" not in out + err
    assert code == 2, (out, err)
    lines = err.splitlines()
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, err
    assert expect in errors[0], errors[0]
    usage = [line for line in lines if line not in errors]
    assert all(line.startswith(("usage:", " ")) for line in usage), err
    if not as_json:
        assert out == "", out
        return
    assert not usage, err
    assert len(out.splitlines()) == 1, out
    payload = json.loads(out)
    assert set(payload) == {"error"} and set(payload["error"]) == {"type", "message"}
    assert errors[0].endswith(payload["error"]["message"])


@pytest.mark.parametrize("cli, argv, expect", _table())
def test_a_bad_command_line_is_one_clear_error(
    cli: str,
    argv: list[str],
    expect: str,
    files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.replace("{d}", str(files)).replace("{state}", str(tmp_path)) for a in argv]
    code, out, err = _run_in_process(cli, argv, capsys)
    assert_user_error(code, out, err, expect, "--json" in argv)


def test_the_table_covers_enough_bad_command_lines() -> None:
    assert len(CASES) >= 60 and len(_table()) >= 2 * 60


def _console(cli: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The real console entry point: ``python -m`` on the CLI module of either side."""
    module = "bitfleet.server.cli" if cli == S else "bitfleet.edge_agent"
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "cli, argv, expect",
    [
        (S, ["jobs", "list", "--url", "not a url", "--json"], "--url"),
        (S, ["train", *D, "--epochs", "0"], "--epochs"),
        (A, [*RUN, "--state-dir", "/proc/x", "--log-level", "debug"], "/proc/x"),
        (A, ["selftest", "--data", "digits", "--samples", "0", "--json"], "--samples"),
    ],
)
def test_the_console_scripts_keep_the_contract(cli: str, argv: list[str], expect: str) -> None:
    result = _console(cli, argv)
    assert_user_error(result.returncode, result.stdout, result.stderr, expect, "--json" in argv)


def test_a_port_in_use_is_exit_2_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["coordinator", "--data-dir", str(tmp_path / "state"), "--no-admin-token"]
        result = _console(S, [*argv, "--host", "127.0.0.1", "--port", str(port)])
    message = f"port {port} on 127.0.0.1 is in use: stop the other process or pass --port"
    assert result.returncode == 2 and result.stderr == f"bitfleet: error: {message}\n"
    assert not (tmp_path / "state").exists()


BLOCK_SERVER_EXTRA = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("fastapi", "uvicorn"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from bitfleet.server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_coordinator_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    argv = ["coordinator", "--data-dir", str(tmp_path), "--no-admin-token"]
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER_EXTRA, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_user_error(result.returncode, result.stdout, result.stderr, "", as_json=False)
    assert "the coordinator needs the server extra: pip install 'bitfleet[server]'" in (
        result.stderr
    )


HOLD_LOCK = """
import sys
from pathlib import Path
from bitfleet.edge_agent.journal import Journal

Journal(Path(sys.argv[1])).lock()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_state_directory_is_held_by_one_agent_and_status_still_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        second = _console(A, [*RUN, "--state-dir", str(state)])
        assert_user_error(second.returncode, second.stdout, second.stderr, "--state-dir", False)
        assert f"state directory {state} is in use" in second.stderr
        assert f"(pid {holder.pid})" in second.stderr
        assert agent_cli.main(["status", "--state-dir", str(state), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "never run"
    finally:
        holder.communicate("", timeout=30)
    # The lock died with its holder: the agent gets as far as the (unreachable) coordinator.
    after = _console(A, [*RUN, "--state-dir", str(state), "--give-up-after", "0"])
    assert after.returncode == 1 and "cannot reach the coordinator" in after.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_state_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    code, out, err = _run_in_process(A, [*RUN, "--state-dir", str(state)], capsys)
    assert_user_error(code, out, err, f"state directory {state} is not usable", False)


def test_status_writes_from_two_writers_never_collide(tmp_path: Path) -> None:
    """The fixed ``status.json.tmp`` name made two writers crash on each other's rename."""
    errors: list[BaseException] = []

    def write(journal: Journal) -> None:
        try:
            for index in range(200):
                journal.write_status({"state": "waiting", "index": index})
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(Journal(tmp_path),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert Journal(tmp_path).read_status() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
