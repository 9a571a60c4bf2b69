"""The data set options of ``train``, ``eval`` and ``data``: one definition for all three."""

from __future__ import annotations

import argparse

from bitfleet.cliargs import add_label_column_argument
from bitfleet.datasets import DATA_DIR_ENV, FASHION_MNIST_DIR, Dataset, load_dataset
from bitfleet.errors import ConfigError

DATASET_HELP = (
    "'fashion-mnist' or 'digits' (either may take a shift, e.g. fashion-mnist:rotate30), or "
    "a path to your own data: an .npz file (X, y, optional X_test, y_test), a .csv file, an "
    "IDX images file or a directory of MNIST-named IDX files"
)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir`` and ``--label-column``."""
    parser.add_argument("--dataset", required=True, metavar="SPEC", help=DATASET_HELP)
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory holding Fashion-MNIST's IDX files "
        f"(default: ${DATA_DIR_ENV}, else {FASHION_MNIST_DIR})",
    )
    add_label_column_argument(parser)


def load_data(args: argparse.Namespace, *, whole_file: bool = False) -> Dataset:
    """The data set the options name (see :func:`bitfleet.datasets.load_dataset`)."""
    return load_dataset(args.dataset, args.data_dir, args.label_column, whole_file=whole_file)


def parse_layers(text: str | None, dataset: Dataset, hidden: int) -> list[int]:
    """``--layers`` as a list, or the default shape for the data set."""
    if text is None:
        return [dataset.num_features, hidden, dataset.num_classes]
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--layers {text!r} is not a comma-separated list of integers") from None
