"""``bitfleet train``: train a bit network, the float baseline, or adapt a fixed-point model."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from bitfleet import kernels
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.cliargs import non_negative_int, output_file, positive_float, positive_int
from bitfleet.datasets import MAX_VALIDATION, Dataset, carve_validation
from bitfleet.errors import ConfigError
from bitfleet.floatmlp import FloatConfig, FloatTrainer
from bitfleet.forwardgrad import ForwardConfig, ForwardTrainer
from bitfleet.modelfile import Model, model_to_frame, save_model
from bitfleet.server.cli.local.data_options import add_data_arguments, load_data, parse_layers
from bitfleet.server.cli.local.forward_options import (
    add_forward_arguments,
    config_from_args,
    load_fixed_model,
    memory_fields,
)
from bitfleet.server.cli.output import ProgressBar, print_json
from bitfleet.training import EpochReport

DEFAULT_HIDDEN = 512


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model locally",
        description=(
            "Train a binary/ternary network with bit-flip training (no gradients, integer "
            "only) or the float32 backprop baseline, or adapt a pretrained fixed-point model "
            "with forward gradients (--algo forward --init FILE: QZO-FF, integer only). The "
            "best epoch is chosen on a validation split carved from the end of the training "
            "data (forward training keeps its last epoch); the test split is only used for "
            "the reported test accuracy."
        ),
    )
    parser.add_argument("--algo", choices=("bitflip", "float", "forward"), default="bitflip")
    parser.add_argument(
        "--init", help="pretrained fixed-point model to adapt (--algo forward; see pretrain)"
    )
    parser.add_argument("--weights", choices=("binary", "ternary"), default="binary")
    parser.add_argument(
        "--layers",
        help=f"layer sizes, e.g. 784,512,10 (default: features,{DEFAULT_HIDDEN},classes)",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help=f"epochs (default 20 bitflip, 8 float, {ForwardConfig.epochs} forward)",
    )
    parser.add_argument(
        "--state-bits",
        type=int,
        default=BitFlipConfig.state_bits,
        help="bits of training state per weight, the weight's own included (default %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        help=f"learning rate (default 2.0 bitflip, 0.05 float, {ForwardConfig.lr} forward)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument(
        "--val-size",
        type=non_negative_int,
        help=f"validation samples taken from the end of the training split "
        f"(default: 10%% of it, at most {MAX_VALIDATION}; 0 disables epoch selection)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=output_file, help="write the trained model to this .bfm file")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_forward_arguments(parser, with_common=False)
    parser.set_defaults(func=run)


@dataclass
class Setup:
    """One ``--algo``'s trainer and what the summary reports about it."""

    trainer: BitFlipTrainer | FloatTrainer | ForwardTrainer
    layers: list[int]
    epochs: int
    state_bits: int
    weights: str
    # Forward training returns its last epoch, not the best on validation (forwardgrad.py).
    returns_last_epoch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _forward(args: argparse.Namespace, dataset: Dataset, x_fit: Any, y_fit: Any) -> Setup:
    if args.init is None:
        raise ConfigError("--algo forward adapts a pretrained model: pass --init FILE")
    initial = load_fixed_model(args.init)
    layers = initial.layer_sizes
    if args.layers is not None and parse_layers(args.layers, dataset, DEFAULT_HIDDEN) != layers:
        raise ConfigError(f"--layers {args.layers} does not match {args.init} ({layers})")
    epochs, lr = args.epochs or ForwardConfig.epochs, args.lr or ForwardConfig.lr
    config = config_from_args(args, epochs, lr)
    extra = {
        "init": args.init,
        "zero_shot_accuracy": initial.accuracy(dataset.x_test, dataset.y_test),
        **memory_fields(initial, config, x_fit, y_fit),
    }
    trainer = ForwardTrainer(initial.copy(), config)
    weights = f"int{initial.weight_bits}"
    return Setup(trainer, layers, config.epochs, initial.weight_bits, weights, True, extra)


def _bitflip(args: argparse.Namespace, dataset: Dataset, x_fit: Any, y_fit: Any) -> Setup:
    config = BitFlipConfig(
        encoding=args.weights,
        state_bits=args.state_bits,
        epochs=args.epochs or BitFlipConfig.epochs,
        batch_size=args.batch_size,
        lr=args.lr or BitFlipConfig.lr,
        seed=args.seed,
    )
    layers = parse_layers(args.layers, dataset, DEFAULT_HIDDEN)
    trainer = BitFlipTrainer(layers, config)
    return Setup(trainer, layers, config.epochs, config.state_bits, args.weights)


def _float(args: argparse.Namespace, dataset: Dataset, x_fit: Any, y_fit: Any) -> Setup:
    config = FloatConfig(
        epochs=args.epochs or FloatConfig.epochs,
        batch_size=args.batch_size,
        lr=args.lr or FloatConfig.lr,
        seed=args.seed,
    )
    layers = parse_layers(args.layers, dataset, DEFAULT_HIDDEN)
    return Setup(FloatTrainer(layers, config), layers, config.epochs, 32, "float32")


SETUPS = {"bitflip": _bitflip, "float": _float, "forward": _forward}


def run(args: argparse.Namespace) -> int:
    dataset = load_data(args)
    x_fit, y_fit, x_val, y_val = carve_validation(dataset.x_train, dataset.y_train, args.val_size)
    if args.init is not None and args.algo != "forward":
        raise ConfigError("--init FILE goes with --algo forward (it adapts a pretrained model)")
    setup = SETUPS[args.algo](args, dataset, x_fit, y_fit)
    trainer = setup.trainer

    history: list[EpochReport] = []
    progress = ProgressBar(total=1, label=f"train {args.algo}")

    def on_epoch(report: EpochReport) -> None:
        history.append(report)
        if not args.json:
            val = "-" if report.val_accuracy is None else f"{report.val_accuracy:.4f}"
            progress.close()
            print(
                f"epoch {report.epoch:3d}  train {report.train_accuracy:.4f}  val {val}  "
                f"{report.seconds:.1f}s",
                flush=True,
            )

    def on_batch(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    started = time.monotonic()
    model = trainer.fit(x_fit, y_fit, x_val, y_val, on_batch=on_batch, on_epoch=on_epoch)
    train_seconds = time.monotonic() - started
    progress.close()

    summary = _summary(args, dataset, model, setup, history, train_seconds, len(y_fit))
    summary.update(setup.extra)
    if isinstance(trainer, ForwardTrainer):
        summary["forward_passes"] = trainer.forward_passes
    summary["train_accuracy"] = model.accuracy(x_fit, y_fit)
    summary["epochs"], summary["state_bits"] = setup.epochs, setup.state_bits
    frame = model_to_frame(model, _provenance(summary))
    summary["model_bytes"] = len(frame)
    summary["compression_vs_float32"] = round(4 * model.params / len(frame), 2)
    if args.out:
        save_model(args.out, frame)
        summary["model_path"] = args.out
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0


def _summary(
    args: argparse.Namespace,
    dataset: Dataset,
    model: Model,
    setup: Setup,
    history: list[EpochReport],
    train_seconds: float,
    fit_samples: int,
) -> dict[str, Any]:
    scored = [r for r in history if r.val_accuracy is not None]
    best = max(scored, key=lambda r: r.val_accuracy or 0.0) if scored else history[-1]
    if setup.returns_last_epoch:
        best = history[-1]
    return {
        "algo": args.algo,
        "weights": setup.weights,
        "dataset": dataset.name,
        "layers": setup.layers,
        "seed": args.seed,
        "test_accuracy": model.accuracy(dataset.x_test, dataset.y_test),
        "val_accuracy": best.val_accuracy,
        "best_epoch": best.epoch,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(fit_samples * len(history) / train_seconds, 1),
        "params": model.params,
        "float32_bytes": 4 * model.params,
        "numba": kernels.HAVE_NUMBA,
        "history": [
            {"epoch": r.epoch, "train_accuracy": r.train_accuracy, "val_accuracy": r.val_accuracy}
            for r in history
        ],
    }


def _provenance(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("algo", "dataset", "seed", "epochs", "state_bits", "test_accuracy", "val_accuracy")
    return {key: summary[key] for key in keys}


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"test accuracy {summary['test_accuracy']:.4f} (best epoch {summary['best_epoch']}, "
        f"val {summary['val_accuracy']})\n"
        f"{summary['params']} weights, model {summary['model_bytes']} bytes "
        f"({summary['compression_vs_float32']}x smaller than float32), "
        f"{summary['train_seconds']:.1f}s, {summary['samples_per_second']:.0f} samples/s"
    )
    if "model_path" in summary:
        print(f"model written to {summary['model_path']}")
