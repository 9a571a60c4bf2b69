"""Federated partitioning and the ``bitfleet data`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfleet.datasets import Dataset, load_dataset
from bitfleet.errors import ConfigError, DataError
from bitfleet.partition import SCHEMES, label_histogram, partition, write_partitions
from bitfleet.server.cli import main


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    return load_dataset("fashion-mnist")


@pytest.fixture
def small_npz(tmp_path: Path) -> Path:
    """A 40-sample, 4-class data set with its own test split, fast to load."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(
        path,
        X=rng.integers(0, 256, (40, 6), dtype=np.uint8),
        y=np.arange(40) % 4,
        X_test=rng.integers(0, 256, (8, 6), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    return path


def mean_distance_from_global(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Label skew: average total-variation distance of agents' class mix from the global mix."""
    overall = label_histogram(labels, 10) / len(labels)
    mixes = [label_histogram(labels[p], 10) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(mix - overall).sum() for mix in mixes]))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_split_other_seed_other_split(fashion: Dataset, scheme: str) -> None:
    first = partition(fashion.y_train, 8, scheme, seed=3)
    again = partition(fashion.y_train, 8, scheme, seed=3)
    other = partition(fashion.y_train, 8, scheme, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("agents", [1, 7, 100])
def test_parts_are_disjoint_complete_and_non_empty(
    fashion: Dataset, scheme: str, agents: int
) -> None:
    parts = partition(fashion.y_train, agents, scheme, alpha=0.1, seed=1)
    assert len(parts) == agents
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(60000))


def test_dirichlet_repairs_empty_agents() -> None:
    labels = np.repeat(np.arange(3), 10)
    parts = partition(labels, 30, "dirichlet", alpha=0.01, seed=0)
    assert sorted(len(p) for p in parts) == [1] * 30


def test_dirichlet_skew_grows_as_alpha_shrinks(fashion: Dataset) -> None:
    skews = [
        mean_distance_from_global(
            fashion.y_train, partition(fashion.y_train, 20, "dirichlet", alpha=a, seed=0)
        )
        for a in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < 0.1 < skews[1] < 0.5 < skews[2]


def test_iid_parts_are_balanced(fashion: Dataset) -> None:
    parts = partition(fashion.y_train, 7, "iid", seed=0)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert mean_distance_from_global(fashion.y_train, parts) < 0.05


@pytest.mark.parametrize("shards_per_agent", [1, 2, 3])
def test_shards_give_each_agent_few_classes(fashion: Dataset, shards_per_agent: int) -> None:
    parts = partition(fashion.y_train, 20, "shards", shards_per_agent=shards_per_agent, seed=0)
    classes = [int((label_histogram(fashion.y_train[p], 10) > 0).sum()) for p in parts]
    assert max(classes) <= shards_per_agent  # shards of 3000 or less never straddle a class


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_agents": 0}, "across 0 agents; use between 1 and 20 agents"),
        ({"num_agents": 21}, "across 21 agents"),
        ({"alpha": 0.0}, "alpha must be greater than 0"),
        ({"alpha": float("nan")}, "alpha must be greater than 0"),
        ({"scheme": "random"}, "unknown partition scheme 'random'; choose one of iid, dirichlet"),
        ({"scheme": "shards", "shards_per_agent": 3}, "between 1 and 2 shards per agent"),
        ({"scheme": "shards", "shards_per_agent": 0}, "between 1 and 2 shards per agent"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"num_agents": 10, "scheme": "dirichlet", **options}
    with pytest.raises(ConfigError, match=message):
        partition(np.arange(20) % 2, **arguments)


def test_label_histogram_counts_every_class() -> None:
    assert label_histogram(np.array([0, 2, 2, 4]), 6).tolist() == [1, 0, 2, 0, 1, 0]
    with pytest.raises(DataError, match=re.escape("labels must lie in 0..2")):
        label_histogram(np.array([0, 3]), 3)


def test_written_partitions_load_back(small_npz: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(small_npz))
    parts = partition(dataset.y_train, 3, "iid", seed=0)
    paths = write_partitions(dataset, parts, tmp_path / "new" / "parts")
    assert [p.name for p in paths] == ["agent-0.npz", "agent-1.npz", "agent-2.npz"]
    for path, part in zip(paths, parts, strict=True):
        agent = load_dataset(str(path))
        np.testing.assert_array_equal(agent.x_train, dataset.x_train[part])
        np.testing.assert_array_equal(agent.y_train, dataset.y_train[part])
        np.testing.assert_array_equal(agent.x_test, dataset.x_test)


def test_unwritable_output_directory(small_npz: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(small_npz))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="choose a writable output directory"):
        write_partitions(dataset, [np.arange(32)], blocker / "parts")


def test_cli_partition_json_round_trip(
    fashion: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "partition", "--dataset", "fashion-mnist", "--agents", "3"]
    argv += ["--scheme", "dirichlet", "--alpha", "0.3", "--seed", "5"]
    assert main([*argv, "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["scheme"], report["seed"], report["dataset"]) == (
        "dirichlet",
        5,
        "fashion-mnist",
    )
    assert sum(agent["samples"] for agent in report["agents"]) == 60000
    seen = []
    for entry in report["agents"]:
        agent = load_dataset(entry["path"])
        assert len(agent.y_train) == entry["samples"]
        assert label_histogram(agent.y_train, 10).tolist() == entry["histogram"]
        np.testing.assert_array_equal(agent.y_test, fashion.y_test)
        seen.append(agent.y_train)
    assert np.bincount(np.concatenate(seen)).tolist() == [6000] * 10


def test_cli_partition_table(
    small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "partition", "--dataset", str(small_npz), "--agents", "2"]
    assert main([*argv, "--scheme", "shards", "--seed", "0", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["agent", "samples", "c0", "c1", "c2", "c3"]
    assert [line.split()[:2] for line in lines[1:3]] == [["0", "20"], ["1", "20"]]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["agent-0.npz", "agent-1.npz"]


def test_cli_info(small_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "--dataset", str(small_npz), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["train_samples"], info["test_samples"]) == (40, 8)
    assert (info["num_features"], info["num_classes"]) == (6, 4)
    assert info["train_histogram"] == [10] * 4 and info["test_histogram"] == [2] * 4
    assert main(["data", "info", "--dataset", str(small_npz)]) == 0
    assert "40 training and 8 test samples" in capsys.readouterr().out


def test_cli_bad_option_exits_2_with_message(
    small_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "partition", "--dataset", str(small_npz), "--agents", "0"]
    assert main([*argv, "--scheme", "iid", "--seed", "0", "--out", str(tmp_path)]) == 2
    assert "across 0 agents; use between 1 and 40 agents" in capsys.readouterr().err
    assert main(["data", "info", "--dataset", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["data", "--help"], ["data", "partition", "--help"], ["data", "info", "--help"]]
)
def test_cli_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: bitfleet {' '.join(argv[:-1])}")


def test_cli_rejects_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "partition", "--dataset", "digits", "--agents", "2", "--scheme", "x"]) == 2
    assert "invalid choice: 'x'" in capsys.readouterr().err
