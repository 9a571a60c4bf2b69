"""The ``bitfleet`` CLI contract: JSON fields scripts rely on, exit codes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitfleet.datasets import load_dataset
from bitfleet.server.cli import build_parser, main

TRAIN_FIELDS = {
    "test_accuracy",
    "train_accuracy",
    "epochs",
    "state_bits",
    "train_seconds",
    "samples_per_second",
    "params",
    "model_bytes",
}


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_every_command_has_help() -> None:
    parser = build_parser()
    commands = [
        [],
        ["train"],
        ["eval"],
        ["data"],
        ["data", "partition"],
        ["data", "info"],
        ["bench"],
        ["bench", "kernels"],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*command, "--help"])
        assert exit_info.value.code == 0


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bitfleet.server.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("bitfleet ")


@pytest.mark.parametrize(
    "algo, extra", [("bitflip", ["--weights", "ternary", "--state-bits", "2"]), ("float", [])]
)
def test_train_json_contract_then_eval_the_written_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, algo: str, extra: list[str]
) -> None:
    out = tmp_path / "digits.bfm"
    argv = [
        "train",
        "--algo",
        algo,
        *extra,
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    summary = _run_json(capsys, argv)
    assert summary.keys() >= TRAIN_FIELDS
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert summary["epochs"] == 3 and summary["layers"] == [64, 512, 10]
    assert summary["model_bytes"] == out.stat().st_size
    evaluated = _run_json(capsys, ["eval", str(out), "--dataset", "digits", "--json"])
    assert evaluated["test_accuracy"] == summary["test_accuracy"]
    assert evaluated["split"] == "held-out" and evaluated["test_samples"] == 359


def test_train_on_the_users_own_npz(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(4, 36))
    y = rng.integers(0, 4, size=600)
    x = np.clip(prototypes[y] + rng.integers(-50, 51, size=(600, 36)), 0, 255).reshape(600, 6, 6)
    np.savez(tmp_path / "mine.npz", X=x.astype(np.uint8), y=y)
    summary = _run_json(
        capsys, ["train", "--dataset", str(tmp_path / "mine.npz"), "--epochs", "3", "--json"]
    )
    assert summary["layers"] == [36, 512, 4] and summary["test_accuracy"] > 0.9


def test_default_bitflip_lands_within_8_points_of_float_on_another_image_task(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The defaults generalize: 8x8 digits, saved as the user's own .npz, default flags."""
    digits = load_dataset("digits")
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        X=digits.x_train.reshape(-1, 8, 8),
        y=digits.y_train,
        X_test=digits.x_test.reshape(-1, 8, 8),
        y_test=digits.y_test,
    )
    bits = _run_json(capsys, ["train", "--dataset", str(path), "--json"])
    floats = _run_json(capsys, ["train", "--algo", "float", "--dataset", str(path), "--json"])
    assert floats["test_accuracy"] > 0.9
    assert bits["test_accuracy"] >= floats["test_accuracy"] - 0.08


def test_a_corrupted_model_file_is_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.bfm"
    bad.write_bytes(b"BFLT" + b"\0" * 40)
    assert main(["eval", str(bad), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "bad.bfm" in err and "Traceback" not in err


def test_wrong_layers_is_exit_2_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "digits", "--layers", "784,10", "--epochs", "1"]) == 2
    assert "--layers 64" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--layers", "64,x,10"]) == 2
    assert "comma-separated" in capsys.readouterr().err


def test_bench_kernels_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_json(capsys, ["bench", "kernels", "--repeats", "2", "--json"])
    for key in ("binary_dense_speedup", "bitflip_samples_per_second", "float_samples_per_second"):
        assert result[key] > 0
    assert set(result["bitflip_step_ms"]) == {"forward", "error", "votes", "update"}
    assert all(ms > 0 for ms in result["bitflip_step_ms"].values())
