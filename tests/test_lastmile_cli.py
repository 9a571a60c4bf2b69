"""CLI contracts of the last mile: pretrain, train --algo forward, eval, lastmile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitfleet.datasets import load_dataset
from bitfleet.server.cli import build_parser, main

TRAIN_FIELDS = {
    "test_accuracy",
    "train_accuracy",
    "val_accuracy",
    "epochs",
    "best_epoch",
    "state_bits",
    "train_seconds",
    "samples_per_second",
    "params",
    "model_bytes",
}
FORWARD_FIELDS = {
    "zero_shot_accuracy",
    "forward_passes",
    "peak_training_bytes",
    "peak_inference_bytes",
}
LASTMILE_FIELDS = {
    "zero_shot_accuracy",
    "forward_accuracy",
    "backprop_accuracy",
    "forward_passes",
    "peak_training_bytes",
    "peak_inference_bytes",
    "seconds",
}
TINY_LASTMILE = ["--dataset", "digits", "--samples", "300", "--val-size", "100"]
TINY_LASTMILE += ["--epochs", "8", "--perturbations", "4"]


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "digits-fixed.bfm"
    assert main(["pretrain", "--dataset", "digits", "--epochs", "4", "--out", str(path)]) == 0
    return path


def test_new_commands_have_help() -> None:
    parser = build_parser()
    for command in (["pretrain"], ["lastmile"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*command, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.parametrize("bits", ["16", "8"])
def test_pretrain_reports_the_quantization_loss_and_eval_reads_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bits: str
) -> None:
    out = tmp_path / "m.bfm"
    argv = ["pretrain", "--dataset", "digits", "--weight-bits", bits, "--out", str(out), "--json"]
    summary = _run_json(capsys, argv)
    assert summary["layers"] == [64, 128, 10] and summary["weight_bits"] == int(bits)
    assert summary["float_test_accuracy"] > 0.9
    assert summary["quantization_loss"] == pytest.approx(
        summary["float_test_accuracy"] - summary["fixed_test_accuracy"], abs=1e-6
    )
    assert abs(summary["quantization_loss"]) < 0.02
    assert summary["model_bytes"] == out.stat().st_size
    evaluated = _run_json(capsys, ["eval", str(out), "--dataset", "digits", "--json"])
    assert evaluated["model_type"] == "fixedmlp"
    assert evaluated["test_accuracy"] == summary["fixed_test_accuracy"]


def test_train_forward_json_contract(
    capsys: pytest.CaptureFixture[str], pretrained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted.bfm"
    argv = ["train", "--algo", "forward", "--init", str(pretrained)]
    argv += ["--dataset", "digits:rotate30", "--epochs", "6", "--perturbations", "4"]
    argv += ["--out", str(out), "--json"]
    summary = _run_json(capsys, argv)
    assert summary.keys() >= TRAIN_FIELDS | FORWARD_FIELDS
    assert summary["algo"] == "forward" and summary["weights"] == "int16"
    assert summary["state_bits"] == 16 and summary["best_epoch"] == 6
    assert summary["test_accuracy"] > summary["zero_shot_accuracy"]
    train = len(load_dataset("digits").y_train)
    assert summary["forward_passes"] == 2 * 4 * 6 * (train - train // 10)  # m=4, 6 epochs
    assert summary["peak_training_bytes"] <= 1.25 * summary["peak_inference_bytes"]
    evaluated = _run_json(capsys, ["eval", str(out), "--dataset", "digits:rotate30", "--json"])
    assert evaluated["test_accuracy"] == summary["test_accuracy"]


def test_lastmile_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_json(capsys, ["lastmile", "--shift", "rotate30", *TINY_LASTMILE, "--json"])
    assert result.keys() >= LASTMILE_FIELDS
    assert result["samples"] == 300 and result["shift"] == "rotate30"
    assert result["zero_shot_accuracy"] < result["pretrained_accuracy"]
    assert result["forward_accuracy"] > result["zero_shot_accuracy"]
    assert result["backprop_accuracy"] > result["zero_shot_accuracy"]
    assert result["forward_passes"] == 2 * 4 * 8 * 300
    assert result["peak_training_bytes"] <= 1.25 * result["peak_inference_bytes"]
    assert isinstance(result["seconds"], float)  # its value is a timing: benchmarks, not tests


def test_lastmile_table_for_people(capsys: pytest.CaptureFixture[str], pretrained: Path) -> None:
    argv = ["lastmile", "--shift", "invert", *TINY_LASTMILE, "--init", str(pretrained)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    rows = ("zero-shot, invert test", "forward-gradient adaptation", "backprop fine-tuning")
    for row in (*rows, "memory"):
        assert row in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--algo", "forward", "--dataset", "digits"], "pass --init FILE"),
        (["lastmile", "--shift", "blur", "--dataset", "digits"], "unknown shift 'blur'"),
        (["train", "--algo", "float", "--init", "x.bfm", "--dataset", "digits"], "goes with"),
        (["lastmile", "--shift", "invert", "--dataset", "digits", "--samples", "5000"], "leave"),
        (["lastmile", "--shift", "invert", *TINY_LASTMILE, "--perturbations", "0"], "at least 1"),
    ],
)
def test_user_errors_exit_2_with_the_fix(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_forward_training_needs_a_fixed_point_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bits = tmp_path / "bits.bfm"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(bits)]) == 0
    capsys.readouterr()
    argv = ["train", "--algo", "forward", "--init", str(bits), "--dataset", "digits"]
    assert main(argv) == 2
    assert "bitfleet pretrain" in capsys.readouterr().err


def test_forward_training_refuses_other_layer_sizes(
    capsys: pytest.CaptureFixture[str], pretrained: Path
) -> None:
    argv = ["train", "--algo", "forward", "--init", str(pretrained), "--dataset", "digits"]
    assert main([*argv, "--layers", "64,32,10"]) == 2
    assert "does not match" in capsys.readouterr().err
