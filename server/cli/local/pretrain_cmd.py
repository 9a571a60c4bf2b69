"""``bitfleet pretrain``: the cloud side of the last mile.

Trains a float32 MLP by backprop (where backprop is cheap) and quantizes it into a
fixed-point model file that devices run and adapt with integer arithmetic only.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bitfleet.cliargs import non_negative_int, output_file, positive_float, positive_int
from bitfleet.datasets import Dataset
from bitfleet.fixedpoint import WEIGHT_BITS, FixedMLP
from bitfleet.floatmlp import FloatConfig, FloatMLP
from bitfleet.modelfile import model_to_frame, save_model
from bitfleet.pretraining import DEFAULT_HIDDEN, pretrain
from bitfleet.server.cli.local.data_options import add_data_arguments, load_data, parse_layers
from bitfleet.server.cli.output import ProgressBar, print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train a float model by backprop and quantize it to a fixed-point model file",
        description=(
            "Train a float32 MLP by backprop and quantize it to int16 (or int8) weights with "
            "a power-of-two scale per layer and int8 activations: the model devices run and "
            "adapt with `bitfleet train --algo forward`. Reports the accuracy lost by "
            "quantization on the test split."
        ),
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--layers", help=f"layer sizes (default: features,{DEFAULT_HIDDEN},classes)"
    )
    parser.add_argument("--weight-bits", type=int, choices=WEIGHT_BITS, default=16)
    parser.add_argument("--epochs", type=positive_int, default=FloatConfig.epochs)
    parser.add_argument("--lr", type=positive_float, default=FloatConfig.lr)
    parser.add_argument("--batch-size", type=positive_int, default=FloatConfig.batch_size)
    parser.add_argument(
        "--val-size",
        type=non_negative_int,
        help="validation samples from the end of the training split",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--out", type=output_file, required=True, help="write the fixed-point model to this file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dataset = load_data(args)
    layers = parse_layers(args.layers, dataset, DEFAULT_HIDDEN)
    config = FloatConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    progress = ProgressBar(total=1, label="pretrain")

    def on_batch(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    started = time.monotonic()
    float_model, fixed_model = pretrain(
        dataset.x_train, dataset.y_train, layers, args.weight_bits, config, args.val_size, on_batch
    )
    seconds = time.monotonic() - started
    progress.close()
    summary = _summary(args, dataset, float_model, fixed_model, seconds)
    frame = model_to_frame(fixed_model, _provenance(summary))
    summary["model_bytes"] = save_model(args.out, frame)
    if args.json:
        print_json(summary)
    else:
        print(
            f"float32 test accuracy {summary['float_test_accuracy']:.4f}, fixed-point "
            f"(int{args.weight_bits} weights, int8 activations) "
            f"{summary['fixed_test_accuracy']:.4f}: quantization costs "
            f"{summary['quantization_loss'] * 100:.2f} points\n"
            f"model {summary['model_bytes']} bytes written to {args.out} "
            f"({summary['train_seconds']:.1f}s)"
        )
    return 0


def _summary(
    args: argparse.Namespace,
    dataset: Dataset,
    float_model: FloatMLP,
    fixed_model: FixedMLP,
    seconds: float,
) -> dict[str, Any]:
    float_accuracy = float_model.accuracy(dataset.x_test, dataset.y_test)
    fixed_accuracy = fixed_model.accuracy(dataset.x_test, dataset.y_test)
    return {
        "algo": "pretrain",
        "dataset": dataset.name,
        "layers": fixed_model.layer_sizes,
        "weight_bits": fixed_model.weight_bits,
        "seed": args.seed,
        "epochs": args.epochs,
        "float_test_accuracy": float_accuracy,
        "fixed_test_accuracy": fixed_accuracy,
        "test_accuracy": fixed_accuracy,
        "quantization_loss": round(float_accuracy - fixed_accuracy, 6),
        "exponents": [
            [layer.input_exp, layer.weight_exp, layer.output_exp] for layer in fixed_model.layers
        ],
        "params": fixed_model.params,
        "float32_bytes": 4 * float_model.params,
        "train_seconds": round(seconds, 3),
        "model_path": args.out,
    }


def _provenance(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("algo", "dataset", "seed", "epochs", "float_test_accuracy", "test_accuracy")
    return {key: summary[key] for key in keys}
