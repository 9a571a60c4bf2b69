"""``bitfleet demo`` end to end (small), and that it leaves no process behind, even on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the demo's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command:
            found.append(int(entry.name))
    return found


def _demo(workdir: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "bitfleet.server.cli",
        "demo",
        "--agents",
        "2",
        "--rounds",
        "2",
        "--hidden",
        "64",
        "--workdir",
        str(workdir),
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_demo_runs_a_job_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    process = _demo(workdir, "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    summary = json.loads(out)
    for key in ("final_test_accuracy", "rounds", "agents", "bytes_up", "bytes_down", "seconds"):
        assert key in summary, key
    assert summary["rounds"] == 2 and summary["agents"] == 2
    assert 0.5 < summary["final_test_accuracy"] <= 1.0
    assert summary["bytes_up"] > 0 and Path(summary["model_path"]).exists()
    assert sorted(p.name for p in (workdir / "partitions").glob("*.npz")) == [
        "agent-0.npz",
        "agent-1.npz",
    ]
    time.sleep(0.5)
    assert _processes_mentioning(str(workdir)) == []


def test_ctrl_c_shuts_the_cluster_down(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    process = _demo(workdir)
    assert process.stdout is not None
    for line in process.stdout:
        if "submitted" in line:
            break
    assert _processes_mentioning(str(workdir))  # broker, coordinator, agents are up
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    time.sleep(0.5)
    assert _processes_mentioning(str(workdir)) == []


def test_forward_demo_pretrains_then_adapts_on_the_shifted_domain(tmp_path: Path) -> None:
    process = _demo(tmp_path / "demo", "--algorithm", "forward", "--rounds", "1", "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["algorithm"] == "forward" and summary["dataset"] == "fashion-mnist:rotate30"
    assert summary["clean_accuracy"] > summary["zero_shot_accuracy"] > 0.1
    assert summary["rounds"] == 1 and summary["bytes_up"] > 0
