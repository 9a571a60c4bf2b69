"""QZO-FF options and report fields shared by ``train --algo forward`` and ``lastmile``."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.cliargs import positive_float, positive_int
from bitfleet.errors import ConfigError
from bitfleet.fixedpoint import FixedMLP
from bitfleet.forwardgrad import SCHEDULES, ForwardConfig, measure_memory
from bitfleet.modelfile import load_model

DEFAULTS = ForwardConfig()


def add_forward_arguments(parser: argparse.ArgumentParser, with_common: bool) -> None:
    """The QZO-FF flags; ``with_common`` adds --epochs/--lr/--batch-size too (train has its own)."""
    group = parser.add_argument_group("forward-gradient training (QZO-FF)")
    if with_common:
        group.add_argument(
            "--epochs",
            type=positive_int,
            default=DEFAULTS.epochs,
            help="passes over the samples (default %(default)s)",
        )
        group.add_argument(
            "--lr",
            type=positive_float,
            default=DEFAULTS.lr,
            help="update per step at full agreement, in int16 weight steps (default %(default)s)",
        )
        group.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    group.add_argument(
        "--perturbations",
        type=positive_int,
        default=DEFAULTS.perturbations,
        help="m: perturbations averaged per step (default %(default)s)",
    )
    group.add_argument(
        "--train-layers",
        type=int,
        default=DEFAULTS.train_layers,
        help="train only the last k layers, 0 = all (default %(default)s)",
    )
    group.add_argument(
        "--density",
        type=float,
        default=DEFAULTS.density,
        help="fraction of weights perturbed and updated per step (default %(default)s)",
    )
    group.add_argument(
        "--eps",
        type=int,
        default=DEFAULTS.eps,
        help="perturbation size in int16 weight steps (default %(default)s)",
    )
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=DEFAULTS.schedule,
        help="learning-rate schedule over all steps (default %(default)s)",
    )
    group.add_argument(
        "--rounding",
        choices=("stochastic", "nearest"),
        default="stochastic" if DEFAULTS.stochastic_rounding else "nearest",
        help="how updates below one integer step round (default %(default)s)",
    )
    group.add_argument(
        "--train-bias",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.train_bias,
        help="perturb and update the biases of trained layers too (default %(default)s)",
    )


def config_from_args(args: argparse.Namespace, epochs: int, lr: float) -> ForwardConfig:
    return ForwardConfig(
        perturbations=args.perturbations,
        train_layers=args.train_layers,
        density=args.density,
        eps=args.eps,
        lr=lr,
        schedule=args.schedule,
        stochastic_rounding=args.rounding == "stochastic",
        train_bias=args.train_bias,
        epochs=epochs,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def load_fixed_model(path: str) -> FixedMLP:
    """A pretrained fixed-point model file (what ``bitfleet pretrain`` writes)."""
    model, meta = load_model(path)
    if not isinstance(model, FixedMLP):
        raise ConfigError(
            f"{path} holds a {meta.get('model_type')} model; forward-gradient training needs "
            "a fixed-point model: make one with `bitfleet pretrain --out FILE`"
        )
    return model


def memory_fields(
    model: FixedMLP, config: ForwardConfig, x: NDArray[np.uint8], y: NDArray[np.integer]
) -> dict[str, Any]:
    """Peak training vs inference bytes, measured on one batch of ``x``."""
    report = measure_memory(model, config, x[: config.batch_size], y[: config.batch_size])
    return {
        "peak_training_bytes": report.training_bytes,
        "peak_inference_bytes": report.inference_bytes,
        "memory_ratio": round(report.ratio, 3),
        "memory_batch": min(len(y), config.batch_size),
    }
