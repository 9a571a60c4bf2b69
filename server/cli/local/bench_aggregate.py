"""``bitfleet bench aggregate``: the bit-sliced vote tally against naive numpy aggregation.

Both sides count the same seeded payloads with the same vote weights and must reach the
same voted tensor; each is timed in the same run (median of ``--repeats`` after a warm-up).
The payloads come from a pool of at most :data:`POOL_SIZE` distinct ones, cycled, so the
benchmark's memory stays bounded whatever ``--payloads`` is.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.bitpack import WORD_BITS, words_for
from bitfleet.cliargs import EXIT_FAILURE, EXIT_OK, int_range, positive_int
from bitfleet.frames import MAX_DIM, PACKED_PLANES
from bitfleet.server.cli.output import print_json
from bitfleet.tally import LayerTally

POOL_SIZE = 32
MAX_SAMPLE_COUNT = 1000  # --weighted draws each agent's sample count from 1..this


def register(benches: Any) -> None:
    parser = benches.add_parser(
        "aggregate",
        help="vote tally vs unpack-and-sum numpy aggregation of packed payloads",
        description=(
            "Aggregates --payloads packed payloads of one 1 x --weights layer by majority "
            "vote twice: with the bit-sliced tally (decode and vote included) and with the "
            "naive numpy way (unpack every payload to int8 and sum), checks both vote the "
            "same, and reports payload bytes per second and the speedup."
        ),
    )
    parser.add_argument("--payloads", type=positive_int, default=1000, help="payloads per round")
    parser.add_argument(
        "--weights", type=int_range(1, MAX_DIM), default=1_000_000, help="weights per payload"
    )
    parser.add_argument(
        "--encoding", choices=tuple(PACKED_PLANES), default="binary", help="payload encoding"
    )
    parser.add_argument(
        "--weighted",
        action="store_true",
        help=f"weight each vote by a random sample count in 1..{MAX_SAMPLE_COUNT}",
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per side")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_aggregate)


@dataclass(frozen=True)
class Workload:
    """One round to aggregate: payload planes ``(pool, planes, 1, words)`` cycled over votes."""

    encoding: str
    columns: int
    pool: NDArray[np.uint64]
    vote_weights: list[int]
    previous: NDArray[np.int8]

    def payloads(self) -> Iterator[tuple[NDArray[np.uint64], int]]:
        for index, weight in enumerate(self.vote_weights):
            yield self.pool[index % len(self.pool)], weight

    @property
    def payload_bytes(self) -> int:
        return int(self.pool[0].nbytes)


def make_workload(
    encoding: str, payloads: int, columns: int, weighted: bool, seed: int = 0
) -> Workload:
    """Seeded random payloads (zero padding, canonical ternary planes) and vote weights."""
    rng = np.random.default_rng(seed)
    planes = PACKED_PLANES[encoding]
    pool = rng.integers(
        0, 1 << 64, size=(min(payloads, POOL_SIZE), planes, 1, words_for(columns)), dtype=np.uint64
    )
    if columns % WORD_BITS:
        pool[..., -1] &= np.uint64((1 << (columns % WORD_BITS)) - 1)
    if encoding == "ternary":
        pool[:, 0] &= pool[:, 1]  # positive only where nonzero
    if weighted:
        vote_weights = rng.integers(1, MAX_SAMPLE_COUNT + 1, size=payloads).tolist()
    else:
        vote_weights = [1] * payloads
    values = (-1, 1) if encoding == "binary" else (-1, 0, 1)
    previous = rng.choice(np.array(values, dtype=np.int8), size=(1, columns))
    return Workload(encoding, columns, pool, vote_weights, previous)


def tally_vote(work: Workload) -> tuple[NDArray[np.int8], int]:
    """The voted layer and the tally's memory, counting one payload at a time."""
    tally = LayerTally(work.encoding, 1, work.columns)
    for planes, weight in work.payloads():
        tally.add(planes, weight)
    return tally.result(work.previous), tally.nbytes


def naive_vote(work: Workload) -> NDArray[np.int8]:
    """The baseline: unpack each payload to int8 and sum per weight, then vote."""
    count_dtype = np.int32 if sum(work.vote_weights) < 2**31 else np.int64
    if work.encoding == "binary":
        counts = np.zeros((1, work.columns), dtype=count_dtype)
        for planes, weight in work.payloads():
            signs = _unpack(planes[0], work.columns).view(np.int8) * np.int8(2) - np.int8(1)
            counts += signs if weight == 1 else signs * count_dtype(weight)
        return np.where(counts > 0, 1, np.where(counts < 0, -1, work.previous)).astype(np.int8)
    plus = np.zeros((1, work.columns), dtype=count_dtype)
    minus = np.zeros_like(plus)
    for planes, weight in work.payloads():
        positive, nonzero = (_unpack(plane, work.columns).view(np.int8) for plane in planes)
        values = nonzero * (positive * np.int8(2) - np.int8(1))
        plus += (values == 1) * count_dtype(weight)
        minus += (values == -1) * count_dtype(weight)
    votes = np.stack([minus, sum(work.vote_weights) - plus - minus, plus])  # for -1, 0, +1
    winners = votes == votes.max(axis=0)
    decided = winners.sum(axis=0) == 1
    return np.where(decided, winners.argmax(axis=0) - 1, work.previous).astype(np.int8)


def _unpack(words: NDArray[np.uint64], columns: int) -> NDArray[np.uint8]:
    return np.unpackbits(words.view(np.uint8), axis=-1, count=columns, bitorder="little")


def run_aggregate(args: argparse.Namespace) -> int:
    # bench_cmd imports this module to register it, so its helpers are imported late.
    from bitfleet.server.cli.local.bench_cmd import median_seconds

    work = make_workload(args.encoding, args.payloads, args.weights, args.weighted)
    outputs: dict[str, Any] = {}
    baseline_s = median_seconds(lambda: outputs.update(naive=naive_vote(work)), args.repeats)
    tally_s = median_seconds(lambda: outputs.update(tally=tally_vote(work)), args.repeats)
    voted, tally_bytes = outputs["tally"]
    identical = bool(np.array_equal(voted, outputs["naive"]))
    total_bytes = work.payload_bytes * args.payloads
    result = {
        "encoding": args.encoding,
        "weighted": args.weighted,
        "payloads": args.payloads,
        "weights": args.weights,
        "pool": len(work.pool),
        "repeats": args.repeats,
        "numba": kernels.HAVE_NUMBA,
        "payload_bytes": work.payload_bytes,
        "tally_bytes": tally_bytes,
        "baseline_seconds": round(baseline_s, 6),
        "tally_seconds": round(tally_s, 6),
        "speedup": round(baseline_s / tally_s, 2),
        "bytes_per_second": round(total_bytes / tally_s),
        "baseline_bytes_per_second": round(total_bytes / baseline_s),
        "identical": identical,
    }
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            print(f"{key:26s} {value}")
    return EXIT_OK if identical else EXIT_FAILURE
