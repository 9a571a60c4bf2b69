"""``bitfleet data``: inspect a data set, or split it into one file per federated agent."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bitfleet.cliargs import non_negative_int, positive_float
from bitfleet.datasets import Dataset
from bitfleet.partition import SCHEMES, label_histogram, partition, write_partitions
from bitfleet.server.cli.local.data_options import add_data_arguments, load_data
from bitfleet.server.cli.output import print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data info`` and ``data partition``."""
    parser = subparsers.add_parser(
        "data",
        help="inspect data sets and split them across agents",
        description="Inspect a data set, or split it into one file per federated agent.",
    )
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        help="show sizes, features, classes and class histograms",
        description="Show a data set's sizes, feature count, classes and class histograms.",
    )
    _add_dataset_options(info)
    split = actions.add_parser(
        "partition",
        help="split the training set into agent-<i>.npz files",
        description=(
            "Split the training set across agents, reproducibly under --seed, and write "
            "OUT/agent-<i>.npz per agent holding its training samples (X, y) and the shared "
            "test split (X_test, y_test); any of them can be passed back as --dataset."
        ),
    )
    _add_dataset_options(split)
    split.add_argument("--agents", type=int, required=True, metavar="N", help="number of agents")
    split.add_argument(
        "--scheme",
        choices=SCHEMES,
        required=True,
        help="iid: equal random parts; dirichlet: label skew set by --alpha; "
        "shards: a few label-sorted shards per agent",
    )
    split.add_argument(
        "--alpha",
        type=positive_float,
        default=0.5,
        metavar="A",
        help="dirichlet concentration: small (0.1) gives strong label skew, large (100) "
        "nearly iid (default: %(default)s)",
    )
    split.add_argument(
        "--shards-per-agent",
        type=int,
        default=2,
        metavar="K",
        help="shards per agent for --scheme shards (default: %(default)s)",
    )
    split.add_argument(
        "--seed", type=non_negative_int, required=True, metavar="S", help="random seed"
    )
    split.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Load the data set once, then run the chosen action on it."""
    dataset = load_data(args)
    if args.data_command == "info":
        return _info(dataset, args)
    return _partition(dataset, args)


def _info(dataset: Dataset, args: argparse.Namespace) -> int:
    train = label_histogram(dataset.y_train, dataset.num_classes)
    test = label_histogram(dataset.y_test, dataset.num_classes)
    if args.json:
        print_json(
            {
                "dataset": dataset.name,
                "train_samples": len(dataset.y_train),
                "test_samples": len(dataset.y_test),
                "num_features": dataset.num_features,
                "num_classes": dataset.num_classes,
                "train_histogram": train.tolist(),
                "test_histogram": test.tolist(),
            }
        )
        return 0
    print(
        f"{dataset.name}: {len(dataset.y_train)} training and {len(dataset.y_test)} test "
        f"samples, {dataset.num_features} features, {dataset.num_classes} classes"
    )
    rows = [[c, int(n), int(m)] for c, (n, m) in enumerate(zip(train, test, strict=True))]
    _print_table(["class", "train", "test"], rows)
    return 0


def _partition(dataset: Dataset, args: argparse.Namespace) -> int:
    parts = partition(
        dataset.y_train,
        args.agents,
        args.scheme,
        alpha=args.alpha,
        shards_per_agent=args.shards_per_agent,
        seed=args.seed,
    )
    paths = write_partitions(dataset, parts, args.out)
    histograms = [label_histogram(dataset.y_train[p], dataset.num_classes) for p in parts]
    if args.json:
        agents = [
            {"agent": i, "path": str(path), "samples": len(part), "histogram": hist.tolist()}
            for i, (path, part, hist) in enumerate(zip(paths, parts, histograms, strict=True))
        ]
        print_json(
            {"agents": agents, "scheme": args.scheme, "seed": args.seed, "dataset": dataset.name}
        )
        return 0
    header = ["agent", "samples", *(f"c{c}" for c in range(dataset.num_classes))]
    rows = [
        [i, len(p), *h.tolist()] for i, (p, h) in enumerate(zip(parts, histograms, strict=True))
    ]
    _print_table(header, rows)
    print(f"wrote {len(paths)} agent files to {args.out} ({args.scheme}, seed {args.seed})")
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[int]]) -> None:
    """Right-aligned columns, readable in a terminal and easy to grep."""
    lines = [list(header), *([str(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
