"""``bitfleet lastmile``: the last-mile story side by side, in one command.

Pretrained on clean data (float backprop, quantized to fixed point) -> zero-shot on a
shifted test set -> after forward-gradient adaptation (QZO-FF: integer forward passes only)
on N shifted samples -> after float backprop fine-tuning on the same N samples.

The data hygiene and the backprop baseline are :mod:`bitfleet.lastmile`'s; this module
parses, runs and reports.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bitfleet.cliargs import non_negative_int, positive_int
from bitfleet.datasets import BUILTIN_DATASETS, Dataset, load_dataset
from bitfleet.errors import ConfigError
from bitfleet.fixedpoint import WEIGHT_BITS, FixedMLP, dequantize
from bitfleet.floatmlp import FloatConfig
from bitfleet.forwardgrad import ForwardConfig, ForwardTrainer
from bitfleet.lastmile import BACKPROP_EPOCHS, LastMileSplit, fine_tune, split_last_mile
from bitfleet.pretraining import DEFAULT_HIDDEN, pretrain
from bitfleet.server.cli.local.forward_options import (
    add_forward_arguments,
    config_from_args,
    load_fixed_model,
    memory_fields,
)
from bitfleet.server.cli.output import ProgressBar, print_json
from bitfleet.shifts import SHIFT_NAMES, parse_shift

DEFAULT_SAMPLES = 8000
DEFAULT_VALIDATION = 2000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lastmile",
        help="pretrain, shift, adapt by forward gradients and by backprop: accuracies side by side",
        description=(
            "The last-mile scenario in one run: a fixed-point model pretrained on clean "
            "data, its zero-shot accuracy on a shifted test set, its accuracy after "
            "forward-gradient adaptation (integer forward passes only) on N shifted samples, "
            "and after "
            "float backprop fine-tuning of every layer on the same N samples."
        ),
    )
    parser.add_argument(
        "--shift", required=True, help=f"domain shift: {', '.join(SHIFT_NAMES)} (e.g. rotate30)"
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=DEFAULT_SAMPLES,
        help="shifted training samples to adapt on (default %(default)s)",
    )
    parser.add_argument(
        "--val-size",
        type=positive_int,
        default=DEFAULT_VALIDATION,
        help="shifted validation samples (default %(default)s)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=BUILTIN_DATASETS,
        help="base data set (default %(default)s)",
    )
    parser.add_argument("--data-dir", help="directory holding the data set's files")
    parser.add_argument(
        "--init", help="pretrained fixed-point model (default: pretrain one here, 8 epochs)"
    )
    parser.add_argument(
        "--hidden",
        type=positive_int,
        default=DEFAULT_HIDDEN,
        help="hidden units of the model pretrained here (default %(default)s)",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=WEIGHT_BITS,
        default=16,
        help="weight bits of the model pretrained here (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_forward_arguments(parser, with_common=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    shift = parse_shift(args.shift)
    base = load_dataset(args.dataset, data_dir=args.data_dir)
    split = split_last_mile(base, args.samples, args.val_size, shift)
    timings: dict[str, float] = {}

    clock = time.monotonic()
    initial = _pretrained(args, base, split)
    timings["pretrain_seconds"] = time.monotonic() - clock
    config = config_from_args(args, args.epochs, args.lr)

    clock = time.monotonic()
    trainer = ForwardTrainer(initial.copy(), config)
    adapted = trainer.fit(split.x_adapt, split.y_adapt, on_batch=_progress("forward adaptation"))
    timings["forward_seconds"] = time.monotonic() - clock

    clock = time.monotonic()
    tuned, lr = fine_tune(dequantize(initial), split, args.seed, progress=_progress)
    timings["backprop_seconds"] = time.monotonic() - clock

    zero_shot = initial.accuracy(split.x_test, split.y_test)
    forward = adapted.accuracy(split.x_test, split.y_test)
    backprop = tuned.accuracy(split.x_test, split.y_test)
    gain = backprop - zero_shot
    result = {
        "dataset": base.name,
        "shift": args.shift,
        "samples": args.samples,
        "val_size": args.val_size,
        "seed": args.seed,
        "layers": initial.layer_sizes,
        "weight_bits": initial.weight_bits,
        "pretrained_accuracy": initial.accuracy(base.x_test, base.y_test),
        "zero_shot_accuracy": zero_shot,
        "forward_accuracy": forward,
        "backprop_accuracy": backprop,
        "recovered_fraction": round((forward - zero_shot) / gain, 4) if gain > 0 else None,
        "forward_passes": trainer.forward_passes,
        "forward_steps": trainer.step,
        "forward_config": _config_fields(config),
        "backprop_lr": lr,
        "backprop_epochs": BACKPROP_EPOCHS,
        **memory_fields(initial, config, split.x_adapt, split.y_adapt),
        **{key: round(value, 3) for key, value in timings.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    if args.json:
        print_json(result)
    else:
        _print_table(result)
    return 0


def _pretrained(args: argparse.Namespace, base: Dataset, split: LastMileSplit) -> FixedMLP:
    """The given model, or one pretrained here on the clean images outside the pool."""
    if args.init:
        model = load_fixed_model(args.init)
        if model.layer_sizes[0] != base.num_features:
            raise ConfigError(
                f"{args.init} expects {model.layer_sizes[0]} features, {base.name} has "
                f"{base.num_features}"
            )
        return model
    layers = [base.num_features, args.hidden, base.num_classes]
    config = FloatConfig(seed=args.seed)
    _, fixed = pretrain(
        split.x_pretrain,
        split.y_pretrain,
        layers,
        args.weight_bits,
        config,
        on_batch=_progress("pretraining (float backprop, clean data)"),
    )
    return fixed


def _progress(label: str) -> Callable[[int, int], None]:
    """An ``on_batch`` callback drawing a progress bar on stderr (when it is a terminal)."""
    bar = ProgressBar(total=1, label=label)

    def on_batch(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)
        if done == total:
            bar.close()

    return on_batch


def _config_fields(config: ForwardConfig) -> dict[str, Any]:
    names = ("perturbations", "train_layers", "density", "eps", "lr", "schedule", "epochs")
    return {
        **{name: getattr(config, name) for name in names},
        "batch_size": config.batch_size,
        "stochastic_rounding": config.stochastic_rounding,
        "train_bias": config.train_bias,
    }


def _print_table(r: dict[str, Any]) -> None:
    recovered = r["recovered_fraction"]
    share = "-" if recovered is None else f"{recovered * 100:.0f} %"
    rows = [
        ("pretrained, clean test", r["pretrained_accuracy"], ""),
        (f"zero-shot, {r['shift']} test", r["zero_shot_accuracy"], ""),
        (
            "forward-gradient adaptation",
            r["forward_accuracy"],
            f"recovers {share} of backprop's gain; {r['forward_passes']:,} forward passes",
        ),
        ("backprop fine-tuning", r["backprop_accuracy"], f"float32, lr {r['backprop_lr']}"),
    ]
    print(f"last mile: {r['dataset']} -> {r['shift']}, {r['samples']} samples, seed {r['seed']}")
    for name, accuracy, note in rows:
        print(f"  {name:28s} {accuracy * 100:6.2f} %   {note}".rstrip())
    print(
        f"  memory: training {r['peak_training_bytes']:,} B vs inference "
        f"{r['peak_inference_bytes']:,} B ({r['memory_ratio']:.3f}x, batch {r['memory_batch']})"
    )
    print(f"  {r['seconds']:.1f}s in all")
