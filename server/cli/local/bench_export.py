"""``bitfleet bench export``: the exported C model's size and speed, against the Python
packed kernel on the same samples in the same run.

For a binary and a ternary 784-512-10 bit network and an int16 784-128-10 fixed-point one
(random weights: speed does not depend on them), it writes the C source, compiles it with
gcc (``-O2``, and ``-O2 -march=native`` where vector units carry the masks, to time;
``-Os`` to size), times ``bitfleet_predict`` over N samples in a C
driver, and times the Python model on the same samples, one at a time (a device's case) and
in one batch. It reports the const data and code bytes, and checks every C prediction
equals Python's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bitfleet.bitmlp import BitMLP, PackedLayer
from bitfleet.cliargs import positive_int
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.fixedpoint import INPUT_EXP, FixedLayer, FixedMLP
from bitfleet.server.cli.output import print_json
from bitfleet.server.export.c_source import HEADER, SOURCE, c_source

TIMING_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "bitfleet_model.h"

/* argv[1] samples of BITFLEET_INPUTS bytes on stdin; prints the classes, then the best
   CPU seconds of three passes over all of them. */
int main(int argc, char **argv)
{
    long count = atol(argv[1]), i;
    int pass;
    double best = 1e30;
    uint8_t *x = malloc((size_t)count * BITFLEET_INPUTS);
    int *predicted = malloc((size_t)count * sizeof(int));
    (void)argc;
    if (x == NULL || predicted == NULL
        || fread(x, BITFLEET_INPUTS, (size_t)count, stdin) != (size_t)count) {
        return 1;
    }
    for (pass = 0; pass < 3; ++pass) {
        clock_t started = clock();
        for (i = 0; i < count; ++i) {
            predicted[i] = bitfleet_predict(x + i * BITFLEET_INPUTS);
        }
        double seconds = (double)(clock() - started) / CLOCKS_PER_SEC;
        best = seconds < best ? seconds : best;
    }
    for (i = 0; i < count; ++i) {
        printf("%d\n", predicted[i]);
    }
    printf("%.9f\n", best);
    return 0;
}
"""


def register(benches: Any) -> None:
    parser = benches.add_parser(
        "export",
        help="the exported C model's flash bytes and speed vs the Python packed kernel",
        description=(
            "Exports a binary and a ternary 784-512-10 bit network and an int16 784-128-10 "
            "fixed-point network as C, compiles them with gcc, and times bitfleet_predict "
            "against the Python model on the same samples (one at a time, and batched)."
        ),
    )
    parser.add_argument("--samples", type=positive_int, default=2000, help="(default 2000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _models(rng: np.random.Generator) -> dict[str, BitMLP | FixedMLP]:
    def bits(outputs: int, inputs: int, encoding: str) -> PackedLayer:
        choices = [-1, 1] if encoding == "binary" else [-1, 0, 1]
        return PackedLayer.from_values(rng.choice(choices, (outputs, inputs)), encoding)

    offset = rng.integers(0, 256, 784).astype(np.uint8)
    models: dict[str, BitMLP | FixedMLP] = {
        encoding: BitMLP([bits(512, 784, encoding), bits(10, 512, encoding)], offset)
        for encoding in ("binary", "ternary")
    }
    hidden = FixedLayer(
        rng.integers(-2000, 2001, (784, 128)).astype(np.int16),
        rng.integers(-(2**16), 2**16, 128).astype(np.int32),
        INPUT_EXP,
        12,
        5,
    )
    last = FixedLayer(
        rng.integers(-2000, 2001, (128, 10)).astype(np.int16),
        rng.integers(-(2**16), 2**16, 10).astype(np.int32),
        5,
        12,
        17,
    )
    models["int16"] = FixedMLP([hidden, last], offset)
    return models


def _gcc(*args: str) -> None:
    done = subprocess.run(["gcc", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BitfleetError(f"gcc {' '.join(args)} failed: {done.stderr[-2000:]}")


def _section_bytes(obj: Path) -> dict[str, int]:
    """Bytes of each section of an object file (``size -A``)."""
    done = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith(".") and fields[1].isdigit():
            sizes[fields[0]] = int(fields[1])
    return sizes


def _measure(model: BitMLP | FixedMLP, x: np.ndarray, directory: Path) -> dict[str, Any]:
    source = c_source(model, 32)
    (directory / HEADER).write_text(source.header)
    (directory / SOURCE).write_text(source.source)
    (directory / "driver.c").write_text(TIMING_DRIVER)
    obj = directory / "model.o"
    _gcc("-std=c99", "-Os", "-c", str(directory / SOURCE), "-o", str(obj))
    sections = _section_bytes(obj)
    c_seconds = _c_seconds(model, x, directory, "-O2")
    native_seconds = _c_seconds(model, x, directory, "-O2", "-march=native")
    one = min(_timed(lambda: [model.predict(x[i : i + 1]) for i in range(200)]) for _ in range(3))
    batch = min(_timed(lambda: model.predict(x)) for _ in range(3))
    c_us = 1e6 * c_seconds / len(x)
    native_us = 1e6 * native_seconds / len(x)
    return {
        "const_bytes": source.const_bytes,
        "code_bytes": sections.get(".text", 0),
        "rodata_bytes": sum(v for k, v in sections.items() if k.startswith(".rodata")),
        "c_us_per_sample": round(c_us, 2),
        "c_march_native_us_per_sample": round(native_us, 2),
        "python_one_at_a_time_us_per_sample": round(1e6 * one / 200, 2),
        "python_batched_us_per_sample": round(1e6 * batch / len(x), 2),
        "c_vs_python_one_at_a_time": round(1e6 * one / 200 / c_us, 2),
        "c_vs_python_batched": round(1e6 * batch / len(x) / c_us, 2),
    }


def _c_seconds(model: BitMLP | FixedMLP, x: np.ndarray, directory: Path, *flags: str) -> float:
    """CPU seconds of the C driver over ``x`` built with ``flags``, its predictions checked."""
    program = directory / f"predict{''.join(flags)}"
    sources = [str(directory / SOURCE), str(directory / "driver.c")]
    _gcc("-std=c99", *flags, *sources, "-o", str(program))
    done = subprocess.run(
        [str(program), str(len(x))], input=x.tobytes(), capture_output=True, check=True
    )
    lines = done.stdout.decode().split()
    if not np.array_equal(np.array(lines[:-1], dtype=np.int64), model.predict(x)):
        raise BitfleetError("the C model's predictions differ from Python's")
    return float(lines[-1])


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    if shutil.which("gcc") is None or shutil.which("size") is None:
        raise ConfigError("bench export compiles C: install gcc and binutils (apt-get install gcc)")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, 784)).astype(np.uint8)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bitfleet-export-") as temp:
        for name, model in _models(rng).items():
            directory = Path(temp) / name
            directory.mkdir()
            results[name] = _measure(model, x, directory)
    report = {"samples": args.samples, "models": results}
    if args.json:
        print_json(report)
        return 0
    print(f"{args.samples} samples; C -O2 vs the Python model on the same samples")
    for name, r in results.items():
        print(
            f"{name:8s} const {r['const_bytes']:7d} B  code {r['code_bytes']:5d} B  "
            f"C {r['c_us_per_sample']:8.2f} us (-march=native "
            f"{r['c_march_native_us_per_sample']:.2f})  Python one at a time "
            f"{r['python_one_at_a_time_us_per_sample']:8.2f} us "
            f"({r['c_vs_python_one_at_a_time']}x)  batched "
            f"{r['python_batched_us_per_sample']:6.2f} us ({r['c_vs_python_batched']}x)"
        )
    return 0
