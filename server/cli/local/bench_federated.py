"""``bitfleet bench federated``: a simulated federated bit-flip job beside float FedAvg of the
same MLP on the same partitions, timed in the same run.

The baseline is plain FedAvg (McMahan et al. 2017) in numpy: each agent fine-tunes the
global float32 model for the job's local epochs with the float trainer (SGD with momentum),
the coordinator averages the weights by sample count. It carries every float32 parameter each
way per agent and round; bit-flip carries packed 1-/2-bit weights in signed frames.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.floatmlp import FloatConfig, FloatMLP, FloatTrainer
from bitfleet.server.cli.local import simulate_cmd
from bitfleet.server.cli.output import print_json
from bitfleet.server.simulation.fleet import Fleet

FLOAT_BYTES = 4


def register(benches: Any) -> None:
    parser = benches.add_parser(
        "federated",
        help="simulated federated bit-flip beside float FedAvg on the same partitions",
        description=(
            "Run the same partitions twice in one process: a simulated bitfleet job (the "
            "agents' and coordinator's own round code) and numpy FedAvg of the same float32 "
            "MLP; per round, test accuracy, bytes each way and seconds for both."
        ),
    )
    simulate_cmd.add_simulation_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    simulate_cmd.check_fractions(args)
    dataset, validation, shards = simulate_cmd.load_shards(args)
    spec = simulate_cmd.job_spec(args, dataset, len(shards))
    started = time.monotonic()
    with Fleet(simulate_cmd.sim_agents(shards, args), args.workers) as fleet:
        simulation = simulate_cmd.simulation_class()
        rounds = simulation(spec, dataset, fleet, args.dropout, validation=validation).run(
            lambda r: (
                None if args.json else print(f"bitfleet round {r.round}: {r.test_accuracy:.4f}")
            )
        )
    bitfleet = _side([vars(r) for r in rounds], time.monotonic() - started, len(shards))
    started = time.monotonic()
    fedavg_rounds = _fedavg(
        [(x, y) for _, x, y in shards],
        dataset,
        spec.model.layers,
        spec.rounds,
        spec.local_epochs,
        args.seed,
        quiet=args.json,
    )
    fedavg = _side(fedavg_rounds, time.monotonic() - started, len(shards))
    result = {
        "agents": len(shards),
        "rounds": spec.rounds,
        "local_epochs": spec.local_epochs,
        "layers": spec.model.layers,
        "partition": None if args.agent_data else args.partition,
        "alpha": args.alpha,
        "seed": args.seed,
        "bitfleet": {
            **bitfleet,
            "weights": spec.model.weights,
            "hyperparameters": spec.hyperparameters,
        },
        "fedavg": fedavg,
        "ratios": {
            "fedavg_seconds_per_bitfleet_second": round(fedavg["seconds"] / bitfleet["seconds"], 2),
            "fedavg_bytes_per_bitfleet_byte": round(
                fedavg["bytes_per_agent_round_up"] / bitfleet["bytes_per_agent_round_up"], 1
            ),
            "accuracy_points_over_fedavg": round(
                100 * (bitfleet["final_test_accuracy"] - fedavg["final_test_accuracy"]), 2
            ),
        },
    }
    if args.json:
        print_json(result)
    else:
        for name in ("bitfleet", "fedavg"):
            side = result[name]
            print(
                f"{name:8s} final {side['final_test_accuracy']:.4f}  {side['seconds']:.1f} s  "
                f"{side['bytes_per_agent_round_up'] / 1e3:.1f} kB per agent per round each way"
            )
        print(result["ratios"])
    return 0


def _side(rounds: list[dict[str, Any]], seconds: float, agents: int) -> dict[str, Any]:
    keys = ("round", "test_accuracy", "bytes_up", "bytes_down", "seconds")
    uploads = sum(r.get("uploads", agents) for r in rounds) or 1
    return {
        "final_test_accuracy": rounds[-1]["test_accuracy"],
        "seconds": round(seconds, 2),
        "bytes_per_agent_round_up": round(sum(r["bytes_up"] for r in rounds) / uploads),
        "rounds": [{k: r[k] for k in keys} for r in rounds],
    }


def _fedavg(
    shards: list[tuple[NDArray[np.uint8], NDArray[np.int64]]],
    dataset: Any,
    layers: list[int],
    rounds: int,
    local_epochs: int,
    seed: int,
    quiet: bool,
) -> list[dict[str, Any]]:
    """FedAvg rounds; every agent takes part in every round."""
    samples = np.array([len(y) for _, y in shards], np.float64)
    mean = (
        sum(x.mean(axis=0) * n for (x, _), n in zip(shards, samples, strict=True)) / samples.sum()
    )
    first = FloatTrainer(layers, FloatConfig(seed=seed))._initial_model(shards[0][0])
    model = FloatMLP(first.weights, first.biases, mean.astype(np.float32))
    size = FLOAT_BYTES * model.params
    results = []
    for round_index in range(rounds):
        opened = time.monotonic()
        locals_ = [
            FloatTrainer(
                layers,
                FloatConfig(epochs=local_epochs, seed=seed + 1000 * round_index + i),
                init=model,
            ).fit(x, y)
            for i, (x, y) in enumerate(shards)
        ]
        share = samples / samples.sum()
        model = FloatMLP(
            [
                sum(w * s for w, s in zip(ws, share, strict=True)).astype(np.float32)
                for ws in zip(*(m.weights for m in locals_), strict=True)
            ],
            [
                sum(b * s for b, s in zip(bs, share, strict=True)).astype(np.float32)
                for bs in zip(*(m.biases for m in locals_), strict=True)
            ],
            model.input_mean,
        )
        accuracy = model.accuracy(dataset.x_test, dataset.y_test)
        if not quiet:
            print(f"fedavg round {round_index}: {accuracy:.4f}")
        results.append(
            {
                "round": round_index,
                "test_accuracy": accuracy,
                "bytes_up": size * len(shards),
                "bytes_down": size * len(shards),
                "seconds": round(time.monotonic() - opened, 3),
            }
        )
    return results
