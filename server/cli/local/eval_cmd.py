"""``bitfleet eval``: score a model file on a data set's test split, or on the user's file."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bitfleet.errors import ConfigError
from bitfleet.modelfile import load_model
from bitfleet.server.cli.local.data_options import add_data_arguments, load_data
from bitfleet.server.cli.output import print_json

# How each kind of test split reads in the one-line report.
_SCORED = {"test": "test split", "held-out": "held-out test split", "whole": "whole file"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model file on a data set's test split or on your own file",
        description=(
            "Read a .bfm model file and report its accuracy. A data set with a test split "
            "(fashion-mnist, an .npz holding X_test and y_test, a directory of MNIST-named "
            "IDX files) is scored on that split; your own file without one (a .csv, an .npz "
            "of X and y, an IDX images file) is scored on every sample; digits on the test "
            "split that train holds out of it."
        ),
    )
    parser.add_argument("model", help="path to a .bfm model file")
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, meta = load_model(args.model)
    dataset = load_data(args, whole_file=True)
    if dataset.num_features != model.layer_sizes[0]:
        raise ConfigError(
            f"{args.model} expects {model.layer_sizes[0]} features but {dataset.name} has "
            f"{dataset.num_features}: evaluate it on the data set it was trained for"
        )
    classes = model.layer_sizes[-1]
    if dataset.num_classes > classes:
        raise ConfigError(
            f"{dataset.name} has labels up to {dataset.num_classes - 1} but {args.model} "
            f"scores {classes} classes (0..{classes - 1}): check --label-column, or evaluate "
            "it on the data set it was trained for"
        )
    samples = len(dataset.y_test)
    started = time.monotonic()
    predictions = model.predict(dataset.x_test)
    seconds = time.monotonic() - started
    accuracy = float(np.mean(predictions == dataset.y_test))
    result = {
        "model": args.model,
        "model_type": meta.get("model_type"),
        "layers": model.layer_sizes,
        "dataset": dataset.name,
        "split": dataset.test_split,
        "test_samples": samples,
        "test_accuracy": accuracy,
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / max(seconds, 1e-9), 1),
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"{args.model}: test accuracy {accuracy:.4f} on {samples} samples of "
            f"{dataset.name} ({_SCORED[dataset.test_split]}, "
            f"{result['samples_per_second']:.0f} samples/s)"
        )
    return 0
