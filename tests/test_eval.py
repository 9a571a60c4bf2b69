"""``bitfleet eval`` on the user's own data: every row of a file, or the test split it holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bitfleet.modelfile import load_model
from bitfleet.server.cli import build_parser, main

FEATURES, CLASSES, LABEL_AT = 16, 3, 5


def _samples(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of one prototype per class, byte-valued (no rescaling to argue about)."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(0).integers(0, 256, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=count)
    noise = rng.integers(-90, 91, size=(count, FEATURES))
    return np.clip(prototypes[y] + noise, 0, 255).astype(np.uint8), y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A header row, and the label in the middle of each row, under the name 'label'."""
    names = [f"f{i}" for i in range(FEATURES)]
    names.insert(LABEL_AT, "label")
    rows = [
        [*map(str, row[:LABEL_AT]), str(label), *map(str, row[LABEL_AT:])]
        for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(",".join(r) for r in [names, *rows]) + "\n")
    return path


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _train(capsys: pytest.CaptureFixture[str], data: Path, out: Path, *extra: str) -> Path:
    layers = f"{FEATURES},32,{CLASSES}"
    argv = ["train", "--dataset", str(data), *extra, "--layers", layers, "--epochs", "2"]
    _run_json(capsys, [*argv, "--out", str(out), "--json"])
    return out


def _direct_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    model, _ = load_model(model_path)
    return float(np.mean(model.predict(x) == y))


def test_eval_on_a_csv_scores_every_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    x, y = _samples(250, seed=1)
    data = _write_csv(tmp_path / "mine.csv", x, y)
    model = _train(capsys, data, tmp_path / "m.bfm", "--label-column", "label")
    argv = ["eval", str(model), "--dataset", str(data), "--label-column", "label"]
    result = _run_json(capsys, [*argv, "--json"])
    assert result["test_samples"] == 250 and result["split"] == "whole"
    assert result["test_accuracy"] == _direct_accuracy(model, x, y)
    assert result["test_accuracy"] > 0.8  # a model that learnt, scored on rows it partly saw
    by_index = _run_json(capsys, [*argv[:-1], str(LABEL_AT), "--json"])
    assert by_index["test_accuracy"] == result["test_accuracy"]
    assert main(argv) == 0
    assert "on 250 samples" in capsys.readouterr().out


def test_eval_on_an_npz_with_a_test_split_scores_that_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (x, y), (x_test, y_test) = _samples(300, seed=2), _samples(70, seed=3)
    data = tmp_path / "split.npz"
    np.savez(data, X=x, y=y, X_test=x_test, y_test=y_test)
    model = _train(capsys, data, tmp_path / "m.bfm")
    result = _run_json(capsys, ["eval", str(model), "--dataset", str(data), "--json"])
    assert result["test_samples"] == 70 and result["split"] == "test"
    assert result["test_accuracy"] == _direct_accuracy(model, x_test, y_test)
    whole = tmp_path / "whole.npz"
    np.savez(whole, X=x_test, y=y_test)
    same = _run_json(capsys, ["eval", str(model), "--dataset", str(whole), "--json"])
    assert same["test_samples"] == 70 and same["split"] == "whole"
    assert same["test_accuracy"] == result["test_accuracy"]


@pytest.mark.parametrize(
    "column, message",
    [
        ("nope", "has no column named 'nope'"),
        ("17", "label column 17 does not exist"),
        ("f3", "labels up to "),  # a feature column: labels the model cannot score
    ],
)
def test_a_bad_label_column_is_exit_2_with_a_message_and_a_json_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, column: str, message: str
) -> None:
    x, y = _samples(60, seed=4)
    data = _write_csv(tmp_path / "mine.csv", x, y)
    model = _train(capsys, data, tmp_path / "m.bfm", "--label-column", "label")
    argv = ["eval", str(model), "--dataset", str(data), "--label-column", column]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "" and "Traceback" not in captured.err
    assert main([*argv, "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "ConfigError" and message in error["message"]


def _subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_train_eval_and_data_share_one_definition_of_the_data_options() -> None:
    parser = build_parser()
    seen = []
    for names in (["train"], ["eval"], ["data", "info"], ["data", "partition"]):
        actions = {a.dest: a for a in _subcommand(parser, *names)._actions}
        seen.append(
            [
                (a.option_strings, a.help, a.metavar, a.type, a.default, a.required)
                for a in (actions[key] for key in ("dataset", "data_dir", "label_column"))
            ]
        )
    assert all(options == seen[0] for options in seen[1:])
