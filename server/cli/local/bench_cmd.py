"""``bitfleet bench``: speed measured against a baseline timed in the same run."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bitfleet import kernels
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.bitmlp import PackedLayer
from bitfleet.bitpack import pack_binary
from bitfleet.cliargs import positive_int
from bitfleet.floatmlp import FloatConfig, FloatTrainer
from bitfleet.server.cli.local import bench_aggregate, bench_export, bench_federated, bench_fleet
from bitfleet.server.cli.output import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks with same-run baselines",
        description="Benchmarks report ratios against a baseline measured in the same run.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    kernels_parser = benches.add_parser(
        "kernels",
        help="binary dense kernel vs float32 matmul; bit-flip vs float training throughput",
        description=(
            "Times the 784->512 binary dense layer (batch 256) against numpy float32 matmul "
            "of the same layer on one BLAS thread, and training throughput of bit-flip "
            "training beside the float32 backprop baseline on the same synthetic data."
        ),
    )
    kernels_parser.add_argument(
        "--repeats", type=positive_int, default=50, help="timed calls per kernel"
    )
    kernels_parser.add_argument("--json", action="store_true", help="print one JSON object")
    kernels_parser.set_defaults(func=run_kernels)
    bench_aggregate.register(benches)
    bench_federated.register(benches)
    bench_fleet.register(benches)
    bench_export.register(benches)


@contextlib.contextmanager
def single_blas_thread() -> Iterator[int | None]:
    """Limit BLAS to one thread when threadpoolctl is there; yields the limit applied."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield None
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield 1


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up (median resists noisy neighbours)."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def run_kernels(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    batch, inputs, outputs = 256, 784, 512
    with single_blas_thread() as blas_threads:
        x_bits = pack_binary(rng.choice([-1, 1], size=(batch, inputs)))
        w_bits = pack_binary(rng.choice([-1, 1], size=(outputs, inputs)))
        x_pixels = rng.integers(0, 256, size=(batch, inputs), dtype=np.uint8)
        x_float = rng.standard_normal((batch, inputs)).astype(np.float32)
        w_float = rng.standard_normal((inputs, outputs)).astype(np.float32)
        first_layer = PackedLayer(inputs, outputs, w_bits)

        float_s = median_seconds(lambda: x_float @ w_float, args.repeats)
        binary_s = median_seconds(
            lambda: kernels.binary_dense(x_bits, w_bits, inputs), args.repeats
        )
        uint8_s = median_seconds(lambda: first_layer.dense_uint8(x_pixels), args.repeats)
        bitflip_sps, float_sps, phases = _training_throughput(rng)

    result = {
        "layer": f"{inputs}->{outputs}",
        "batch": batch,
        "blas_threads": blas_threads,
        "numba": kernels.HAVE_NUMBA,
        "float32_matmul_ms": round(float_s * 1e3, 4),
        "binary_dense_ms": round(binary_s * 1e3, 4),
        "uint8_binary_dense_ms": round(uint8_s * 1e3, 4),
        "binary_dense_speedup": round(float_s / binary_s, 2),
        "uint8_binary_dense_speedup": round(float_s / uint8_s, 2),
        "bitflip_samples_per_second": round(bitflip_sps, 1),
        "float_samples_per_second": round(float_sps, 1),
        "bitflip_step_ms": phases,
    }
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return 0


def _training_throughput(
    rng: np.random.Generator, samples: int = 5000
) -> tuple[float, float, dict[str, float]]:
    """Samples/s of one epoch of each trainer, 784-512-10, on the same random data, and the
    bit-flip step's milliseconds per batch by phase (timed in a second epoch)."""
    x = rng.integers(0, 256, size=(samples, 784), dtype=np.uint8)
    y = rng.integers(0, 10, size=samples)
    bitflip = BitFlipTrainer([784, 512, 10], BitFlipConfig(epochs=1))
    rates = []
    for trainer in (bitflip, FloatTrainer([784, 512, 10], FloatConfig(epochs=1))):
        trainer.fit(x[:200], y[:200])  # compiles (numba) and warms caches outside the timing
        started = time.perf_counter()
        trainer.fit(x, y)
        rates.append(samples / (time.perf_counter() - started))
    bitflip.phase_seconds = {}
    bitflip.fit(x, y)
    batches = -(-samples // bitflip.config.batch_size)
    phases = {k: round(v / batches * 1e3, 4) for k, v in bitflip.phase_seconds.items()}
    return rates[0], rates[1], phases
