"""The agent's install assets: edge_agent/install/install.sh (run for real with --dry-run, as
the current user), docker/agent.Dockerfile (checked statically: no Docker engine here) and
scripts/arm-selftest.sh (its options only: a real run takes root, qemu and twenty minutes)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_compose import dockerfile_instructions

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "edge_agent" / "install" / "install.sh"
DOCKERFILE = ROOT / "docker" / "agent.Dockerfile"
ARM_SELFTEST = ROOT / "scripts" / "arm-selftest.sh"

UNIT_PATH = "/etc/systemd/system/bitfleet-agent.service"
CONFIG = "/etc/bitfleet-agent/agent.json"
STATE_DIR = "/var/lib/bitfleet-agent/state"
# What a real run creates: a dry run must leave every one of these as it found it.
SYSTEM_PATHS = [Path(UNIT_PATH), Path("/etc/bitfleet-agent"), Path("/var/lib/bitfleet-agent")]

COORDINATOR = "http://coordinator.local:8000"
AGENT_ID = "pi-07"
SECRET = "-s3cr3t 'with' spaces"  # a leading "-" and quotes: must survive and never be shown


@dataclass
class DryRun:
    returncode: int
    stdout: str
    stderr: str

    def commands(self) -> list[list[str]]:
        """Every command the run shows, as its argv ("+ " lines, shell-quoted)."""
        return [
            shlex.split(line[2:])
            for line in self.stdout.splitlines()
            if line.startswith("+ ") and not line.startswith("+ write ")
        ]

    def command(self, *prefix: str) -> list[str]:
        found = [argv for argv in self.commands() if argv[: len(prefix)] == list(prefix)]
        assert len(found) == 1, f"expected one command starting {prefix}: {self.stdout}"
        return found[0]

    def file(self, path: str) -> str:
        """The content the run shows for a file it would write."""
        lines = self.stdout.splitlines()
        start = lines.index(f"----- BEGIN {path} -----")
        end = lines.index(f"----- END {path} -----")
        return "\n".join(lines[start + 1 : end]) + "\n"


def dry_run(*args: str, script: Path = SCRIPT) -> DryRun:
    done = subprocess.run(
        [str(script), "--dry-run", *args], capture_output=True, text=True, timeout=60
    )
    return DryRun(done.returncode, done.stdout, done.stderr)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys like Environment= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "board-data.npz"
    path.write_bytes(b"not really an npz: the dry run only copies it")
    return path


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    return tmp_path / "prefix"  # must still not exist after a dry run


def install_args(data: Path, prefix: Path, arch: str, *extra: str) -> list[str]:
    return [
        "--arch",
        arch,
        "--coordinator",
        COORDINATOR,
        "--agent-id",
        AGENT_ID,
        "--secret",
        SECRET,
        "--mqtt-url",
        "mqtt://broker.local:1883",
        "--data",
        str(data),
        "--prefix",
        str(prefix),
        *extra,
    ]


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_script_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_help_exits_0() -> None:
    done = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for option in ("--coordinator", "--agent-id", "--secret", "--data", "--dry-run", "--arch"):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("arch", "extras"),
    [
        ("arm64", "[agent,fast]"),
        ("aarch64", "[agent,fast]"),
        ("x86_64", "[agent,fast]"),
        ("armv7l", "[agent]"),
        ("armv6l", "[agent]"),
    ],
)
def test_dry_run_installs_the_extras_for_the_architecture(
    arch: str, extras: str, data_file: Path, prefix: Path
) -> None:
    run = dry_run(*install_args(data_file, prefix, arch))
    assert run.returncode == 0, run.stderr
    pip = run.command(f"{prefix}/bin/python", "-m", "pip", "install")
    assert pip[-1] == f"{ROOT}{extras}"  # by default, the checkout the script is in
    assert "--only-binary=numpy,numba,llvmlite" in pip
    apt = [argv for argv in run.commands() if "apt-get" in argv and "install" in argv]
    assert all("build-essential" not in argv for argv in apt)


@pytest.mark.parametrize("arch", ["arm64", "armv7l"])
def test_dry_run_unit_file(arch: str, data_file: Path, prefix: Path) -> None:
    run = dry_run(*install_args(data_file, prefix, arch, "--transport", "mqtt"))
    assert run.returncode == 0, run.stderr
    assert f"+ write {UNIT_PATH} (mode 0644, owner root:root)" in run.stdout
    unit = parse_unit(run.file(UNIT_PATH))
    assert set(unit) == {"Unit", "Service", "Install"}

    assert unit["Unit"]["Description"][0]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]

    service = unit["Service"]
    expected = {
        "Type": "simple",
        "User": "bitfleet",
        "Group": "bitfleet",
        "Restart": "always",
        "RestartSec": "5",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "30",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "ReadWritePaths": "/var/lib/bitfleet-agent",
        "PrivateTmp": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert "PYTHONUNBUFFERED=1" in service["Environment"]
    assert "MemoryDenyWriteExecute" not in service  # would break numba's JIT

    (exec_start,) = service["ExecStart"]
    assert shlex.split(exec_start) == [
        f"{prefix}/bin/bitfleet-agent",
        "run",
        "--config",
        CONFIG,
        "--data",
        f"/var/lib/bitfleet-agent/data/{data_file.name}",
        "--state-dir",
        STATE_DIR,
        "--transport",
        "mqtt",
    ]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, data_file: Path) -> None:
    # verify wants ExecStart's program to exist: a stand-in virtualenv.
    fake_prefix = tmp_path / "venv"
    (fake_prefix / "bin").mkdir(parents=True)
    (fake_prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    agent = fake_prefix / "bin" / "bitfleet-agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    run = dry_run(*install_args(data_file, fake_prefix, "arm64"))
    assert run.returncode == 0, run.stderr
    unit_file = tmp_path / "bitfleet-agent-verify.service"
    unit_file.write_text(run.file(UNIT_PATH))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt keys are only warnings: none may concern our unit.
    assert unit_file.name not in done.stderr, done.stderr


def test_dry_run_enrolls_as_the_service_user(data_file: Path, prefix: Path) -> None:
    run = dry_run(*install_args(data_file, prefix, "arm64"))
    assert run.returncode == 0, run.stderr
    enroll = run.command("runuser", "-u", "bitfleet", "--")
    agent = enroll[enroll.index("--") + 1 :]
    assert agent[:2] == [f"{prefix}/bin/bitfleet-agent", "enroll"]

    def value(option: str) -> str:
        return agent[agent.index(option) + 1]

    assert value("--coordinator") == COORDINATOR
    assert value("--agent-id") == AGENT_ID
    assert value("--mqtt-url") == "mqtt://broker.local:1883"
    assert value("--config") == CONFIG
    assert "--secret=********" in agent
    # The secret never appears, in any form.
    assert SECRET not in run.stdout + run.stderr
    assert "s3cr3t" not in run.stdout + run.stderr


def test_dry_run_changes_nothing(tmp_path: Path, data_file: Path, prefix: Path) -> None:
    before = {path: path.exists() for path in SYSTEM_PATHS}
    files_before = sorted(tmp_path.rglob("*"))
    run = dry_run(*install_args(data_file, prefix, "arm64"))
    assert run.returncode == 0, run.stderr
    # It would create the virtualenv and the directories, and copy the data...
    assert run.command("/usr/bin/python3", "-m", "venv")[-1] == str(prefix)
    assert run.command("install", "-m", "0640")[-2:] == [
        str(data_file),
        f"/var/lib/bitfleet-agent/data/{data_file.name}",
    ]
    # ...but did none of it.
    assert not prefix.exists()
    assert sorted(tmp_path.rglob("*")) == files_before
    assert {path: path.exists() for path in SYSTEM_PATHS} == before
    assert "dry run complete: nothing was changed" in run.stdout


def test_missing_coordinator_is_a_usage_error(data_file: Path, prefix: Path) -> None:
    args = install_args(data_file, prefix, "arm64")
    del args[args.index("--coordinator") : args.index("--coordinator") + 2]
    run = dry_run(*args)
    assert run.returncode == 2
    assert "missing --coordinator" in run.stderr
    assert "--help" in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--transport", "carrier-pigeon"], "--transport must be auto, mqtt or http"),
        (["--bogus"], "unknown option: --bogus"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--coordinator"], "--coordinator needs a value"),
    ],
)
def test_bad_options_are_usage_errors(
    extra: list[str], message: str, data_file: Path, prefix: Path
) -> None:
    run = dry_run(*install_args(data_file, prefix, "arm64"), *extra)
    assert run.returncode == 2
    assert message in run.stderr


def test_missing_data_on_a_first_install_is_a_usage_error(prefix: Path) -> None:
    if Path(UNIT_PATH).exists():
        pytest.skip("an agent is installed here: a re-run keeps its --data")
    run = dry_run("--skip-enroll", "--prefix", str(prefix))
    assert run.returncode == 2
    assert "missing --data" in run.stderr


def test_skip_enroll_and_a_local_wheel(tmp_path: Path, data_file: Path, prefix: Path) -> None:
    wheel = tmp_path / "bitfleet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    run = dry_run(
        "--skip-enroll",
        "--arch",
        "armv7l",
        "--package",
        str(wheel),
        "--data",
        str(data_file),
        "--prefix",
        str(prefix),
    )
    assert run.returncode == 0, run.stderr
    assert run.command(f"{prefix}/bin/python", "-m", "pip", "install")[-1] == f"{wheel}[agent]"
    assert not [argv for argv in run.commands() if "enroll" in argv]


def pip_target(run: DryRun, prefix: Path) -> str:
    assert run.returncode == 0, run.stderr
    return run.command(f"{prefix}/bin/python", "-m", "pip", "install")[-1]


def test_wheel(tmp_path: Path, data_file: Path, prefix: Path) -> None:
    wheel = tmp_path / "bitfleet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    run = dry_run(*install_args(data_file, prefix, "arm64", "--wheel", str(wheel)))
    assert pip_target(run, prefix) == f"{wheel}[agent,fast]"


def test_source(tmp_path: Path, data_file: Path, prefix: Path) -> None:
    source = tmp_path / "checkout"
    source.mkdir()
    (source / "pyproject.toml").write_text('[project]\nname = "bitfleet"\n')
    run = dry_run(*install_args(data_file, prefix, "armv7l", "--source", str(source)))
    assert pip_target(run, prefix) == f"{source}[agent]"


def test_package_spec_with_a_version(data_file: Path, prefix: Path) -> None:
    run = dry_run(*install_args(data_file, prefix, "arm64", "--package", "bitfleet==0.2.0"))
    assert pip_target(run, prefix) == "bitfleet[agent,fast]==0.2.0"


def copy_installer(top: Path, pyproject: str | None) -> Path:
    """install.sh alone at TOP/edge_agent/install/, TOP holding PYPROJECT if given."""
    script = top / "edge_agent" / "install" / "install.sh"
    script.parent.mkdir(parents=True)
    shutil.copy2(SCRIPT, script)
    if pyproject is not None:
        (top / "pyproject.toml").write_text(pyproject)
    return script


def test_default_is_the_checkout_the_script_is_in(
    tmp_path: Path, data_file: Path, prefix: Path
) -> None:
    top = tmp_path / "checkout"
    script = copy_installer(top, '[project]\nname = "bitfleet"\n')
    run = dry_run(*install_args(data_file, prefix, "arm64"), script=script)
    assert pip_target(run, prefix) == f"{top}[agent,fast]"


@pytest.mark.parametrize(
    "pyproject",
    [None, '[project]\nname = "someone-else"\n'],
    ids=["no-pyproject", "another-project"],
)
def test_no_default_outside_a_checkout(
    pyproject: str | None, tmp_path: Path, data_file: Path, prefix: Path
) -> None:
    script = copy_installer(tmp_path / "copy", pyproject)
    run = dry_run(*install_args(data_file, prefix, "arm64"), script=script)
    assert run.returncode == 2
    assert "nothing to install: pass --wheel FILE" in run.stderr
    assert "--source DIR" in run.stderr
    assert "--package SPEC" in run.stderr
    assert run.stdout == ""


def test_armhf_takes_numpy_from_debian(data_file: Path, prefix: Path) -> None:
    run = dry_run(*install_args(data_file, prefix, "armhf"))
    assert run.returncode == 0, run.stderr
    # apt-get installs whichever of them this machine lacks (the dry run asks dpkg).
    assert "==> system packages: python3-venv python3-numpy\n" in run.stdout
    venv = run.command("/usr/bin/python3", "-m", "venv")
    assert "--system-site-packages" in venv
    assert venv[-1] == str(prefix)
    # The pip step stays binary-only: with numpy already present, nothing is compiled.
    assert "--only-binary=numpy,numba,llvmlite" in run.command(f"{prefix}/bin/python", "-m", "pip")


def test_arm64_keeps_its_virtualenv_to_itself(data_file: Path, prefix: Path) -> None:
    run = dry_run(*install_args(data_file, prefix, "arm64"))
    assert run.returncode == 0, run.stderr
    assert "--system-site-packages" not in run.command("/usr/bin/python3", "-m", "venv")
    assert "==> system packages: python3-venv\n" in run.stdout


def fake_virtualenv(prefix: Path, system_site: bool) -> None:
    """A virtualenv as far as the installer looks: a working bin/python and pyvenv.cfg."""
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    flag = "true" if system_site else "false"
    (prefix / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = {flag}\n")


@pytest.mark.parametrize(
    ("arch", "system_site", "rebuilt"),
    [
        ("armhf", False, True),  # e.g. an install from before numpy came from Debian
        ("armhf", True, False),
        ("arm64", True, True),
        ("arm64", False, False),
    ],
)
def test_rerun_rebuilds_a_virtualenv_of_the_wrong_kind(
    arch: str, system_site: bool, rebuilt: bool, data_file: Path, prefix: Path
) -> None:
    fake_virtualenv(prefix, system_site)
    run = dry_run(*install_args(data_file, prefix, arch))
    assert run.returncode == 0, run.stderr
    venvs = [argv for argv in run.commands() if argv[:3] == ["/usr/bin/python3", "-m", "venv"]]
    assert bool(venvs) == rebuilt
    assert (f"reusing the virtualenv in {prefix}" in run.stdout) == (not rebuilt)


def test_no_service_installs_only_the_virtualenv(tmp_path: Path, prefix: Path) -> None:
    wheel = tmp_path / "bitfleet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    run = dry_run("--no-service", "--arch", "armhf", "--wheel", str(wheel), "--prefix", str(prefix))
    assert pip_target(run, prefix) == f"{wheel}[agent]"
    programs = {argv[0] for argv in run.commands()}
    # apt-get (through env) only for what this machine lacks: the rest always.
    assert {"/usr/bin/python3", f"{prefix}/bin/python"} <= programs
    assert programs <= {"apt-get", "env", "/usr/bin/python3", f"{prefix}/bin/python"}
    assert "+ write " not in run.stdout  # no unit
    assert "systemd is not running" not in run.stdout  # a chroot has none, and needs none
    assert f"{prefix}/bin/bitfleet-agent selftest" in run.stdout


@pytest.mark.parametrize(
    "extra", [["--data", "x.npz"], ["--coordinator", COORDINATOR], ["--skip-enroll"]]
)
def test_no_service_refuses_service_options(extra: list[str], prefix: Path) -> None:
    run = dry_run("--no-service", "--prefix", str(prefix), *extra)
    assert run.returncode == 2
    assert f"--no-service installs only the virtualenv: drop {extra[0]}" in run.stderr


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--wheel", "missing.whl", "--wheel {path}: no such file (build one with 'make dist')"),
        ("--wheel", "bitfleet.tar.gz", "--wheel {path}: not a wheel"),
        ("--source", "empty", "--source {path}: no pyproject.toml there"),
    ],
)
def test_bad_package_options_are_usage_errors(
    option: str, name: str, message: str, tmp_path: Path, data_file: Path, prefix: Path
) -> None:
    path = tmp_path / name
    if name != "missing.whl":
        path.mkdir() if name == "empty" else path.write_bytes(b"")
    run = dry_run(*install_args(data_file, prefix, "arm64", option, str(path)))
    assert run.returncode == 2
    assert message.format(path=path) in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def test_two_packages_are_a_usage_error(tmp_path: Path, data_file: Path, prefix: Path) -> None:
    run = dry_run(
        *install_args(data_file, prefix, "arm64", "--package", "bitfleet", "--source", str(ROOT))
    )
    assert run.returncode == 2
    assert "--package and --source both say what to install: give one" in run.stderr


def test_dry_run_uninstall(prefix: Path) -> None:
    run = dry_run("--uninstall", "--purge", "--prefix", str(prefix))
    assert run.returncode == 0, run.stderr
    commands = run.commands()
    assert ["rm", "-f", UNIT_PATH] in commands
    assert ["systemctl", "daemon-reload"] in commands
    assert ["rm", "-rf", str(prefix), "/etc/bitfleet-agent"] in commands
    assert ["rm", "-rf", "/var/lib/bitfleet-agent"] in commands


# --- docker/agent.Dockerfile ------------------------------------------------------------------


def test_agent_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    # Stages: FROM IMAGE [AS NAME]; the final stage's base resolved through stage names.
    bases: dict[str, str] = {}
    final_base = ""
    for keyword, args in instructions:
        if keyword == "FROM":
            words = args.split()
            image = bases.get(words[0], words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                bases[words[2]] = image
            final_base = image
    assert final_base.startswith("python:3.")
    assert final_base.endswith("-slim-bookworm")

    final_stage = instructions[
        max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM") :
    ]
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["bitfleet-agent"]') in final_stage
    assert ("CMD", '["--help"]') in final_stage
    volumes = " ".join(args for keyword, args in final_stage if keyword == "VOLUME")
    assert "/data" in volumes
    assert "/var/lib/bitfleet-agent" in volumes

    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    # The agent extra everywhere, numba only for the 64-bit platforms with wheels.
    assert "'[agent]'" in runs
    assert "amd64 | arm64) extras='[agent,fast]'" in " ".join(runs.split())
    assert "TARGETARCH" in runs
    # No compiler in the final image (the build stage may compile numpy for 32-bit ARM).
    final_runs = " ".join(args for keyword, args in final_stage if keyword == "RUN")
    for compiler in ("build-essential", "gcc", "g++"):
        assert compiler not in final_runs


# --- scripts/arm-selftest.sh ------------------------------------------------------------------


def test_arm_selftest_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ARM_SELFTEST)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_arm_selftest_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", str(ARM_SELFTEST)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_arm_selftest_help() -> None:
    done = subprocess.run([str(ARM_SELFTEST), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for option in ("--arch", "--workdir", "--wheel", "--data", "--samples", "--keep"):
        assert option in done.stdout


# Every case must be refused before anything runs: as root, valid options would start a
# twenty-minute emulated install.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "sparc"], "--arch must be arm64 or armhf, got 'sparc'"),
        (["--samples", "0"], "--samples must be a whole number"),
        (["--wheel", "/nonexistent/bitfleet.whl"], "--wheel /nonexistent/bitfleet.whl: no such"),
        (["--data", "/nonexistent.npz"], "--data /nonexistent.npz: no such file"),
        (["--workdir", str(ROOT / "arm")], "is inside the repository"),
        (["--workdir", "relative"], "--workdir must be an absolute path"),
        (["--mirror", "ftp://mirror"], "--mirror must be an http(s):// URL"),
        (["--arch"], "--arch needs a value"),
        (["--bogus"], "unknown option: --bogus"),
    ],
)
def test_arm_selftest_usage_errors(args: list[str], message: str) -> None:
    done = subprocess.run([str(ARM_SELFTEST), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "--help" in done.stderr
    assert done.stdout == ""
