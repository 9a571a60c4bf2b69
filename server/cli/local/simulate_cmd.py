"""``bitfleet simulate``: a federated job on N simulated agents in this process (or a few
worker processes), through the agents' and the coordinator's own round code."""

from __future__ import annotations

import argparse
import base64
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitfleet.cliargs import (
    existing_file,
    int_range,
    non_negative_int,
    output_file,
    read_bounded,
    read_json_object,
)
from bitfleet.datasets import Dataset, carve_validation, load_dataset
from bitfleet.errors import ConfigError
from bitfleet.modelfile import save_model
from bitfleet.partition import SCHEMES, partition
from bitfleet.server.cli.local.data_options import parse_layers
from bitfleet.server.cli.local.train_cmd import DEFAULT_HIDDEN
from bitfleet.server.cli.output import print_json
from bitfleet.server.simulation.attacks import ATTACKS, Attack
from bitfleet.server.simulation.fleet import Fleet, SimAgent

if TYPE_CHECKING:  # the coordinator's side needs the server extra; imported when run
    from bitfleet.server.jobspec import JobSpec
    from bitfleet.server.simulation.engine import RoundResult, Simulation

MAX_AGENTS = 100_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a federated job on N agents on this machine",
        description=(
            "Run a federated job on N simulated agents without a broker or HTTP: each agent "
            "trains on its own partition with the agent's code and signs its update; the "
            "coordinator's own checks, vote caps, tally and vote close each round, evaluated "
            "on the data set's test split. Deterministic under --seed."
        ),
    )
    add_simulation_arguments(parser)
    parser.add_argument("--out", type=output_file, help="write the final model to this .bfm")
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    parser.set_defaults(func=run)


def add_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, job and fleet options (``bench federated`` runs the same simulation)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="fashion-mnist", help="data set (default %(default)s)")
    data.add_argument(
        "--agent-data",
        type=Path,
        metavar="DIR",
        help="one .npz per agent (as 'bitfleet data partition' writes) instead of --partition",
    )
    data.add_argument("--agents", type=int_range(1, MAX_AGENTS), default=5, help="(default 5)")
    data.add_argument("--partition", choices=SCHEMES, default="dirichlet")
    data.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha (default 0.5)")
    data.add_argument(
        "--val-size",
        type=non_negative_int,
        default=0,
        help="carve this many samples off the end of the training split, given to no agent, "
        "and report each round's val_accuracy on them: tune on it, not on the test split",
    )
    job = parser.add_argument_group("the job")
    job.add_argument("--spec", type=existing_file, help="a job JSON file, as 'jobs submit' takes")
    job.add_argument("--algorithm", help="bitflip or forward (default: the spec's, else bitflip)")
    job.add_argument("--weights", help="binary, ternary, int16 or int8 (default: the algorithm's)")
    job.add_argument("--layers", help="layer sizes (default: features,512,classes)")
    job.add_argument("--rounds", type=int_range(1, 10_000), help="(default 20)")
    job.add_argument("--local-epochs", type=int_range(1, 1000), help="(default 1)")
    job.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter (JSON)"
    )
    job.add_argument("--initial-model", type=existing_file, help="a .bfm to start from (forward)")
    fleet = parser.add_argument_group("the fleet")
    fleet.add_argument(
        "--participation", type=float, default=1.0, help="share selected per round (default 1)"
    )
    fleet.add_argument(
        "--dropout", type=float, default=0.0, help="chance a selected agent never uploads"
    )
    fleet.add_argument("--byzantine", type=float, default=0.0, help="share of hostile agents")
    fleet.add_argument("--attack", choices=ATTACKS, default="invert-last")
    fleet.add_argument(
        "--workers", type=int_range(1, 64), default=1, help="worker processes (default 1)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)


def check_fractions(args: argparse.Namespace) -> None:
    for name in ("participation", "dropout", "byzantine"):
        value = getattr(args, name)
        if not 0 <= value <= 1 or (name == "participation" and value == 0):
            raise ConfigError(f"--{name} must be a fraction in (0, 1], got {value}")


def run(args: argparse.Namespace) -> int:
    check_fractions(args)
    started = time.monotonic()
    dataset, validation, shards = load_shards(args)
    spec = job_spec(args, dataset, len(shards))
    agents = sim_agents(shards, args)
    with Fleet(agents, args.workers) as fleet:
        simulation = simulation_class()(spec, dataset, fleet, args.dropout, validation=validation)
        if not args.json:
            print(
                f"{'round':>5s} {'agents':>9s} {'accuracy':>9s} {'up KB':>8s} {'down KB':>8s} "
                f"{'seconds':>8s}",
                flush=True,
            )
        results = simulation.run(lambda r: None if args.json else _print_row(r))
    if args.out:
        save_model(args.out, simulation.published_model())
    summary = _summary(args, spec, agents, results, time.monotonic() - started)
    if args.json:
        print_json(summary)
    else:
        print(
            f"final test accuracy {summary['final_test_accuracy']:.4f} after {spec.rounds} "
            f"rounds, {summary['seconds']:.1f} s"
        )
    return 0


def load_shards(
    args: argparse.Namespace,
) -> tuple[Dataset, Dataset | None, list[tuple[str, Any, Any]]]:
    """The evaluation data set, the validation split (if asked for), and (agent id, x, y)
    per agent."""
    if args.agent_data is None:
        dataset = load_dataset(args.dataset)
        x, y, x_val, y_val = carve_validation(dataset.x_train, dataset.y_train, args.val_size)
        validation = None
        if x_val is not None and y_val is not None:
            name = f"{dataset.name} validation"
            validation = replace(dataset, name=name, x_test=x_val, y_test=y_val)
        parts = partition(y, args.agents, args.partition, alpha=args.alpha, seed=args.seed)
        shards = [(f"agent-{i}", x[part], y[part]) for i, part in enumerate(parts)]
        return dataset, validation, shards
    if args.val_size:
        raise ConfigError("--val-size carves --dataset's training split; not with --agent-data")
    files = sorted(args.agent_data.glob("*.npz")) if args.agent_data.is_dir() else []
    if not files:
        raise ConfigError(f"--agent-data {args.agent_data}: no .npz files there")
    loaded = [(path.stem, load_dataset(str(path))) for path in files]
    shards = [(name, data.x_train, data.y_train) for name, data in loaded]
    dataset = loaded[0][1] if args.dataset == "fashion-mnist" else load_dataset(args.dataset)
    return dataset, None, shards


def simulation_class() -> type[Simulation]:
    """The engine, which runs the coordinator's own code: it needs the server extra."""
    try:
        from bitfleet.server.simulation.engine import Simulation
    except ImportError as error:
        raise ConfigError(
            "simulating needs the coordinator's code: pip install 'bitfleet[server]' "
            f"({error.name or error} is missing)"
        ) from None
    return Simulation


def job_spec(args: argparse.Namespace, dataset: Dataset, agents: int) -> JobSpec:
    """The job: --spec's fields, then the flags; every agent a candidate each round."""
    base = read_json_object(args.spec, "job file") if args.spec else {}
    algorithm = args.algorithm or base.get("algorithm", "bitflip")
    for key in ("model", "hyperparameters"):
        if not isinstance(base.get(key, {}), dict):
            raise ConfigError(f"--spec {args.spec}: {key} must be a JSON object")
    model = dict(base.get("model") or {})
    if args.layers or "layers" not in model:
        model["layers"] = parse_layers(args.layers, dataset, DEFAULT_HIDDEN)
    model["weights"] = (
        args.weights or model.get("weights") or ("binary" if algorithm == "bitflip" else "int16")
    )
    hyperparameters = dict(base.get("hyperparameters") or {})
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--hp {item!r}: use KEY=VALUE, e.g. --hp state_bits=8")
        hyperparameters[key] = _hp_value(value)
    per_round = max(1, round(args.participation * agents))
    fields = {
        "name": "simulated",
        **base,
        "algorithm": algorithm,
        "model": model,
        "dataset": args.dataset,
        "agents_per_round": per_round,
        "min_agents": 1,
        "quorum": None,
        "seed": args.seed,
        "hyperparameters": hyperparameters,
    }
    for key, value in (("rounds", args.rounds), ("local_epochs", args.local_epochs)):
        if value is not None:
            fields[key] = value
    fields.setdefault("rounds", 20)
    if args.initial_model:
        fields["initial_model"] = _base64(args.initial_model)
    simulation_class()  # the server extra is there
    from pydantic import ValidationError

    from bitfleet.server.jobspec import JobSpec

    try:
        return JobSpec.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"the simulated job is invalid: {problems}") from None


def _hp_value(text: str) -> Any:
    """A hyperparameter's value: JSON (numbers, true, lists), else the text itself; the
    job's checks then say what the option takes."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _base64(path: str) -> str:
    return base64.b64encode(read_bounded(path, "--initial-model")).decode()


def sim_agents(shards: list[tuple[str, Any, Any]], args: argparse.Namespace) -> list[SimAgent]:
    """The agents; the first ``byzantine`` share of a seeded shuffle attacks."""
    rng = np.random.default_rng([args.seed, 2])
    hostile = set(rng.permutation(len(shards))[: round(args.byzantine * len(shards))].tolist())
    return [
        SimAgent(
            agent_id,
            x,
            y,
            f"secret-{agent_id}".encode(),
            Attack(args.attack, np.random.default_rng([args.seed, 3, index]))
            if index in hostile
            else None,
        )
        for index, (agent_id, x, y) in enumerate(shards)
    ]


def _print_row(result: RoundResult) -> None:
    print(
        f"{result.round:5d} {result.uploads:>4d}/{result.selected:<4d} "
        f"{result.test_accuracy:9.4f} {result.bytes_up / 1024:8.1f} "
        f"{result.bytes_down / 1024:8.1f} {result.seconds:8.2f}",
        flush=True,
    )


def _summary(
    args: argparse.Namespace,
    spec: JobSpec,
    agents: list[SimAgent],
    results: list[RoundResult],
    seconds: float,
) -> dict[str, Any]:
    return {
        "final_test_accuracy": results[-1].test_accuracy,
        "final_val_accuracy": results[-1].val_accuracy,
        "rounds": [
            {
                "round": r.round,
                "test_accuracy": r.test_accuracy,
                "val_accuracy": r.val_accuracy,
                "loss": r.loss,
                "uploads": r.uploads,
                "refused": r.refused,
                "bytes_up": r.bytes_up,
                "bytes_down": r.bytes_down,
                "seconds": r.seconds,
            }
            for r in results
        ],
        "agents": len(agents),
        "agents_per_round": spec.agents_per_round,
        "hostile": sum(agent.attack is not None for agent in agents),
        "attack": args.attack if args.byzantine else None,
        "dropout": args.dropout,
        "algorithm": spec.algorithm,
        "weights": spec.model.weights,
        "layers": spec.model.layers,
        "hyperparameters": spec.hyperparameters,
        "partition": None if args.agent_data else args.partition,
        "alpha": args.alpha if args.partition == "dirichlet" and not args.agent_data else None,
        "seed": args.seed,
        "workers": args.workers,
        "seconds": round(seconds, 2),
    }
