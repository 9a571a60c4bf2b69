"""``bitfleet simulate``: the service's round code without the service.

A job simulated and the same job served by a real coordinator to real agent processes end in
the same model, byte for byte; the run is deterministic and does not depend on how many
worker processes carry the agents; each attack sends what it says it sends, and the vote caps
hold against the one that lies about its weight.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfleet import cliargs
from bitfleet.bitpack import pack_ternary
from bitfleet.federated import update_frame
from bitfleet.frames import Tensor, decode_frame
from bitfleet.modelfile import tensor_values
from bitfleet.protocol import MAX_SAMPLES
from bitfleet.server.cli import main
from bitfleet.server.simulation.attacks import Attack
from tests.agents import AgentProcess
from tests.cluster import Coordinator
from tests.manual import JOB, partition_files

ROUNDS = 2


def _simulate(*argv: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", *argv, "--json"]) == 0
    summary: dict[str, Any] = json.loads(out.getvalue())
    return summary


def _digits(tmp_path: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--layers", "64,64,10", "--rounds", str(ROUNDS), *extra]


@pytest.mark.parametrize("aggregation", ["counters", "majority"])
def test_a_simulated_job_ends_in_the_model_the_service_trains(
    http_coordinator: Coordinator, tmp_path: Path, aggregation: str
) -> None:
    """Three real agents on the coordinator's HTTP API, and the same three partitions
    simulated: the same seeds, selections, votes and input offset give the same bytes."""
    partitions = partition_files(tmp_path / "partitions", 3)
    spec = {
        **JOB,
        "rounds": ROUNDS,
        "min_agents": 3,
        "seed": 7,
        "hyperparameters": {"aggregation": aggregation},
    }
    agents = [
        http_coordinator.start_agent(
            path.stem, path, tmp_path / "agents" / path.stem, transport="http", kind=AgentProcess
        )
        for path in partitions
    ]
    try:
        http_coordinator.wait_online(3)
        created = http_coordinator.api.request("POST", "/api/v1/jobs", json_body=spec).json()
        job = http_coordinator.wait_for(created["id"], timeout=120)
        served = http_coordinator.api.request("GET", f"/api/v1/jobs/{created['id']}/model").body
    finally:
        for agent in agents:
            agent.stop()
    assert job["status"] == "completed", job
    (tmp_path / "job.json").write_text(json.dumps(spec))
    simulated_path = tmp_path / "simulated.bfm"
    summary = _simulate(
        "--spec",
        str(tmp_path / "job.json"),
        "--agent-data",
        str(tmp_path / "partitions"),
        "--dataset",
        "digits",
        "--seed",
        "7",
        "--out",
        str(simulated_path),
    )
    assert simulated_path.read_bytes() == served
    assert decode_frame(served).meta["aggregation"] == aggregation
    service_accuracy = [m["test_accuracy"] for m in job["metrics"]]
    assert [r["test_accuracy"] for r in summary["rounds"]] == service_accuracy
    assert [r["bytes_up"] for r in summary["rounds"]] == [m["bytes_up"] for m in job["metrics"]]


def test_the_run_is_deterministic_and_the_same_on_any_number_of_workers(tmp_path: Path) -> None:
    argv = _digits(tmp_path, "--agents", "4", "--seed", "3", "--participation", "0.5")
    one = _simulate(*argv, "--out", str(tmp_path / "one.bfm"))
    _simulate(*argv, "--out", str(tmp_path / "again.bfm"))
    two = _simulate(*argv, "--workers", "2", "--out", str(tmp_path / "two.bfm"))
    assert (tmp_path / "one.bfm").read_bytes() == (tmp_path / "again.bfm").read_bytes()
    assert (tmp_path / "one.bfm").read_bytes() == (tmp_path / "two.bfm").read_bytes()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in one["rounds"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in two["rounds"]]
    assert [r["uploads"] for r in one["rounds"]] == [2] * ROUNDS  # half of 4 selected
    assert one["agents"] == 4 and one["seed"] == 3 and 0 < one["final_test_accuracy"] <= 1
    assert set(one["rounds"][0]) >= {"test_accuracy", "bytes_up", "bytes_down", "seconds"}


def test_dropped_agents_upload_nothing(tmp_path: Path) -> None:
    summary = _simulate(*_digits(tmp_path, "--agents", "4", "--dropout", "1"))
    assert [r["uploads"] for r in summary["rounds"]] == [0] * ROUNDS
    assert all(r["bytes_up"] == 0 for r in summary["rounds"])


def _update(planes: list[np.ndarray], samples: int = 10) -> tuple[list[Tensor], dict[str, Any]]:
    tensors = [
        Tensor(f"dense_{i}", "binary", (p.shape[0], 64), p[None]) for i, p in enumerate(planes)
    ]
    return tensors, {"samples": samples, "round": 0, "job_id": "job-x"}


def test_each_attack_sends_what_it_says() -> None:
    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 2**64, size=(4, 1), dtype=np.uint64) for _ in range(2)]
    honest = _update(planes)
    honest_values = [tensor_values(t) for t in honest[0]]
    last = Attack("invert-last", rng).apply(honest)[0]
    np.testing.assert_array_equal(tensor_values(last[0]), honest_values[0])
    np.testing.assert_array_equal(tensor_values(last[1]), -honest_values[1])
    every = Attack("invert-all", rng).apply(honest)[0]
    assert all((tensor_values(t) == -v).all() for t, v in zip(every, honest_values, strict=True))
    noise = Attack("random", np.random.default_rng(1)).apply(honest)[0]
    agreement = np.mean(
        [(tensor_values(t) == v).mean() for t, v in zip(noise, honest_values, strict=True)]
    )
    assert 0.3 < agreement < 0.7  # unrelated to the honest values
    inflated = Attack("inflate-weight", rng)
    assert inflated.apply(honest)[1]["samples"] == MAX_SAMPLES
    assert inflated.declared_samples == MAX_SAMPLES
    stale = Attack("stale", rng)
    first = stale.apply(honest)
    later = stale.apply(_update([p ^ np.uint64(1) for p in planes]))
    assert later[0] is first[0]  # the first round's weights, every round
    for attacked in (last, every, noise):  # still a well-formed, signable update
        frame = update_frame(attacked, honest[1], "a0", b"secret")
        assert decode_frame(frame, secret_for=lambda meta: b"secret").meta["agent_id"] == "a0"


def test_attacks_on_counter_moves_rewrite_the_ternary_moves() -> None:
    rng = np.random.default_rng(4)
    values = [rng.integers(-1, 2, size=(4, 64)).astype(np.int8) for _ in range(2)]
    moves = [
        Tensor(f"counter_change_{i}", "ternary", v.shape, np.stack(pack_ternary(v)))
        for i, v in enumerate(values)
    ]
    honest = (moves, {"samples": 10, "round": 0, "job_id": "job-x", "change_scales": [3, 2]})
    last = Attack("invert-last", rng).apply(honest)
    assert (tensor_values(last[0][0]) == values[0]).all()
    assert (tensor_values(last[0][1]) == -values[1]).all()
    assert last[1]["change_scales"] == [3, 2]
    noise = Attack("random", np.random.default_rng(5)).apply(honest)[0]
    drawn = np.concatenate([tensor_values(t).ravel() for t in noise])
    assert set(np.unique(drawn)) == {-1, 0, 1}
    assert 0.2 < np.mean(drawn == np.concatenate([v.ravel() for v in values])) < 0.5


def test_an_agent_inflating_its_weight_is_held_to_its_share(tmp_path: Path) -> None:
    """One liar of three claims the most samples a frame may carry: the vote caps keep its
    vote from becoming the model, so the run learns as the honest one does."""
    honest = _simulate(*_digits(tmp_path, "--agents", "3", "--seed", "5"))
    lying = _simulate(
        *_digits(tmp_path, "--agents", "3", "--seed", "5", "--byzantine", "0.34"),
        "--attack",
        "inflate-weight",
    )
    assert lying["hostile"] == 1
    assert abs(lying["final_test_accuracy"] - honest["final_test_accuracy"]) < 0.05


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--participation", "0"], "--participation must be a fraction"),
        (["--dropout", "1.5"], "--dropout must be a fraction"),
        (["--hp", "state_bits"], "use KEY=VALUE"),
        (["--hp", "momentum=0.9"], "unknown bit-flip hyperparameters"),
        (["--weights", "int16"], "does not train 'int16' weights"),
        (["--algorithm", "forward"], "pass initial_model"),
        (["--agent-data", "/nonexistent"], "no .npz files"),
        (["--layers", "a,b"], "not a comma-separated list of integers"),
        (["--hp", "state_bits=["], "state_bits must be a whole number"),
        (["--rounds", "-5"], "argument --rounds"),
        (["--spec", "{d}/not-json"], "is not valid JSON"),
        (["--spec", "{d}/nested"], "is not valid JSON"),
        (["--spec", "{d}/list"], "must hold a JSON object"),
        (["--spec", "{d}/model-text"], "model must be a JSON object"),
        (["--spec", "{d}/huge"], "is larger than"),
    ],
)
def test_bad_options_exit_2_with_what_to_change(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "not-json").write_text("name: x")
    (tmp_path / "nested").write_text("[" * 1020)  # deeper than the decoder recurses
    (tmp_path / "list").write_text("[1, 2]")
    (tmp_path / "model-text").write_text('{"model": "x"}')
    (tmp_path / "huge").write_bytes(b" " * 2048)
    monkeypatch.setattr(cliargs.read_bounded, "__defaults__", (1024,))  # a 1 KiB bound
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert main(["simulate", "--dataset", "digits", "--layers", "64,16,10", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_federated_runs_fedavg_beside_on_the_same_partitions() -> None:
    out = io.StringIO()
    argv = ["bench", "federated", "--dataset", "digits", "--layers", "64,64,10"]
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--agents", "3", "--rounds", "2", "--json"]) == 0
    result = json.loads(out.getvalue())
    for side in ("bitfleet", "fedavg"):
        assert [r["round"] for r in result[side]["rounds"]] == [0, 1]
        assert 0 < result[side]["final_test_accuracy"] <= 1
    params = 64 * 64 + 64 + 64 * 10 + 10
    assert result["fedavg"]["bytes_per_agent_round_up"] == 4 * params
    bits = result["bitfleet"]["bytes_per_agent_round_up"]
    assert result["ratios"]["fedavg_bytes_per_bitfleet_byte"] == round(4 * params / bits, 1)


@pytest.mark.parametrize("attack", ["invert-last", "random"])
def test_screening_refuses_inverted_and_random_layers_and_no_honest_update(
    tmp_path: Path, attack: str
) -> None:
    (tmp_path / "job.json").write_text(
        json.dumps({"screen_updates": True, "hyperparameters": {"aggregation": "majority"}})
    )
    screened = ["--spec", str(tmp_path / "job.json"), "--agents", "4", "--seed", "2"]
    honest = _simulate(*_digits(tmp_path, *screened))
    assert [r["refused"] for r in honest["rounds"]] == [0] * ROUNDS
    hostile = _simulate(*_digits(tmp_path, *screened, "--byzantine", "0.5", "--attack", attack))
    assert [r["refused"] for r in hostile["rounds"]] == [2] * ROUNDS
    assert [r["uploads"] for r in hostile["rounds"]] == [2] * ROUNDS


def test_val_size_scores_a_split_carved_from_training_that_no_agent_holds(tmp_path: Path) -> None:
    carved = _simulate(*_digits(tmp_path, "--agents", "3", "--val-size", "200"))
    plain = _simulate(*_digits(tmp_path, "--agents", "3"))
    assert all(0 < r["val_accuracy"] <= 1 for r in carved["rounds"])
    assert carved["final_val_accuracy"] == carved["rounds"][-1]["val_accuracy"]
    assert plain["final_val_accuracy"] is None
    # The 200 samples left the agents' partitions: the runs trained on different data.
    assert carved["rounds"][0]["bytes_up"] == plain["rounds"][0]["bytes_up"]
    assert carved["final_test_accuracy"] != plain["final_test_accuracy"]
