"""``bitfleet export``: a trained model as C source for devices, or as plain integer arrays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bitfleet.atomicfile import write_atomic
from bitfleet.bitmlp import BitMLP
from bitfleet.errors import ConfigError
from bitfleet.fixedpoint import FixedMLP
from bitfleet.modelfile import load_model
from bitfleet.server.cli.output import print_json
from bitfleet.server.export.c_source import HEADER, SOURCE, WORD_BITS, c_source
from bitfleet.server.export.npz import npz_bytes

NPZ = "bitfleet_model.npz"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model as C source for devices (or as plain integer arrays)",
        description=(
            "Read a .bfm model file (binary or ternary bit network, or fixed-point) and write "
            f"--format c: {HEADER} and {SOURCE}, C99 with the weights as const arrays and "
            "int bitfleet_predict(const uint8_t *x): no malloc, no floating point, nothing "
            f"beyond <stdint.h>; or --format npz: {NPZ}, the integer arrays and a "
            "description of the arithmetic. Predictions are identical to Python's."
        ),
    )
    parser.add_argument("model", help="path to a .bfm model file")
    parser.add_argument("--format", choices=("c", "npz"), default="c", help="(default c)")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory to write into (made if missing)"
    )
    parser.add_argument(
        "--word-bits",
        type=int,
        choices=WORD_BITS,
        default=32,
        help="word size of a bit network's packed weights: 32 for Cortex-M, 64 for 64-bit "
        "Linux boards (default 32)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model)
    if not isinstance(model, BitMLP | FixedMLP):
        raise ConfigError(
            f"{args.model} is a float model, and exported models run without floating point: "
            "quantize it to a fixed-point model with 'bitfleet pretrain', or train a bit "
            "network with 'bitfleet train'"
        )
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a directory to write into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot make the directory ({error.strerror})") from None
    if args.format == "npz":
        files = {NPZ: npz_bytes(model)}
        const_bytes = None
    else:
        source = c_source(model, args.word_bits)
        files = {HEADER: source.header.encode(), SOURCE: source.source.encode()}
        const_bytes = source.const_bytes
    for name, data in files.items():
        write_atomic(out / name, data, mode=0o644)
    written = {name: len(data) for name, data in files.items()}
    if args.json:
        print_json(
            {"files": {str(out / n): b for n, b in written.items()}, "const_bytes": const_bytes}
        )
    else:
        for name, size in written.items():
            print(f"wrote {out / name} ({size} bytes)")
        if const_bytes is not None:
            print(f"weights and input offset: {const_bytes} bytes of const data (flash)")
    return 0
