"""``bitfleet eval``: score a model file on a data set's test split."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bitfleet.datasets import load_dataset
from bitfleet.errors import ConfigError
from bitfleet.modelfile import load_model
from bitfleet.server.cli.output import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model file on a data set's test split",
        description="Read a .bfm model file and report its accuracy on the test split.",
    )
    parser.add_argument("model", help="path to a .bfm model file")
    parser.add_argument("--dataset", required=True, help="fashion-mnist, digits or a file path")
    parser.add_argument("--data-dir", help="directory holding the data set's files")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, meta = load_model(args.model)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    if dataset.num_features != model.layer_sizes[0]:
        raise ConfigError(
            f"{args.model} expects {model.layer_sizes[0]} features but {dataset.name} has "
            f"{dataset.num_features}: evaluate it on the data set it was trained for"
        )
    started = time.monotonic()
    predictions = model.predict(dataset.x_test)
    seconds = time.monotonic() - started
    accuracy = float(np.mean(predictions == dataset.y_test))
    result = {
        "model": args.model,
        "model_type": meta.get("model_type"),
        "layers": model.layer_sizes,
        "dataset": dataset.name,
        "test_samples": len(dataset.y_test),
        "test_accuracy": accuracy,
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(dataset.y_test) / max(seconds, 1e-9), 1),
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"{args.model}: test accuracy {accuracy:.4f} on {len(dataset.y_test)} samples of "
            f"{dataset.name} ({result['samples_per_second']:.0f} samples/s)"
        )
    return 0
