"""High-volume fuzzing of the shared codecs: frames, model files and chunk streams.

Random bytes drive the same generators and checks as ``tests/test_fuzz_codecs.py`` (which
hypothesis drives in CI), without hypothesis's per-example cost::

    .venv/bin/python scripts/fuzz-codecs.py --inputs 1000000 [--json] [--seed N]

An input is one frame, one header bomb, one model file or one chunk message. The report
counts inputs, typed refusals by reason, accepted inputs, property violations (a model
that loads but cannot predict, an honest frame lost to a single flooder, a bound
exceeded) and untyped exceptions by cause (exception type and line); the first failure
of each cause is saved with its traceback and the bytes that reproduce it. The exit
status is 1 if there was any untyped exception or violation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitfleet.errors import BitfleetError
from tests.test_fuzz_codecs import (
    Choices,
    check_chunks,
    check_frame,
    check_model,
    chunk_stream,
    header_bomb,
    mutated_frame,
    mutated_model,
)

# Share of the inputs per family, and its (check, generator) from the test module.
SHARES = {"frames": 0.35, "header_bombs": 0.10, "model_files": 0.20, "chunk_messages": 0.35}
RUNS: dict[str, tuple[Callable[[Any], str | Counter[str]], Callable[[Choices], Any]]] = {
    "frames": (check_frame, mutated_frame),
    "header_bombs": (check_frame, header_bomb),
    "model_files": (check_model, mutated_model),
    "chunk_messages": (check_chunks, chunk_stream),
}
CHOICE_BYTES = 64
SAVED_FAILURES = 10  # the first failure of each distinct cause, up to this many


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fuzz bitfleet's frame, model-file and chunk codecs with random mutations.",
    )
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to fuzz in all")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random)")
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="stop early after this long"
    )
    parser.add_argument(
        "--save", type=Path, default=None, help="directory for failures (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.inputs < 1 or args.max_seconds <= 0:
        parser.error("--inputs and --max-seconds must be positive")
    seed = random.SystemRandom().randrange(2**32) if args.seed is None else args.seed
    report = fuzz(args.inputs, seed, args.max_seconds, args.save)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return 1 if report["untyped_exceptions"] or report["violations"] else 0


def fuzz(inputs: int, seed: int, max_seconds: float, save: Path | None) -> dict[str, Any]:
    """Run the families in proportion until ``inputs`` are done or time is up."""
    rng = random.Random(seed)
    quota = {family: max(1, round(inputs * share)) for family, share in SHARES.items()}
    done = Counter[str]()
    outcomes = {family: Counter[str]() for family in SHARES}
    firsts: dict[str, dict[str, Any]] = {}  # the first failure of each cause
    causes = Counter[str]()
    counts = Counter[str]()
    started = last_progress = time.monotonic()
    while (elapsed := time.monotonic() - started) < max_seconds:
        family = min(quota, key=lambda f: done[f] / quota[f])
        if done[family] >= quota[family]:
            break
        data = rng.randbytes(CHOICE_BYTES)
        check, generate = RUNS[family]
        try:
            outcome = check(generate(Choices(data)))
            result = outcome if isinstance(outcome, Counter) else Counter([outcome])
        except Exception as error:
            # AssertionError: a broken property; BitfleetError: typed, but out of a model
            # that had loaded; anything else is an untyped exception.
            kind = (
                "violations"
                if isinstance(error, AssertionError | BitfleetError)
                else "untyped_exceptions"
            )
            counts[kind] += 1
            result = Counter([kind])
            failure = _failure(family, data, error)
            causes[failure["cause"]] += 1
            if len(firsts) < SAVED_FAILURES:
                firsts.setdefault(failure["cause"], failure)
        done[family] += sum(result.values())
        outcomes[family].update(result)
        if time.monotonic() - last_progress > 5:
            last_progress = time.monotonic()
            print(
                f"fuzz: {sum(done.values()):,}/{sum(quota.values()):,} inputs, "
                f"{counts['untyped_exceptions']} untyped, {counts['violations']} violations, "
                f"{elapsed:.0f} s",
                file=sys.stderr,
            )
    return {
        "seed": seed,
        "inputs": sum(done.values()),
        "complete": all(done[f] >= quota[f] for f in quota),
        "seconds": round(time.monotonic() - started, 1),
        "families": {
            family: {"inputs": done[family], "outcomes": dict(outcomes[family].most_common())}
            for family in SHARES
        },
        "untyped_exceptions": counts["untyped_exceptions"],
        "violations": counts["violations"],
        "causes": dict(causes.most_common()),
        "saved": _save(list(firsts.values()), save) if firsts else [],
    }


def _failure(family: str, data: bytes, error: BaseException) -> dict[str, Any]:
    where = traceback.extract_tb(error.__traceback__)[-1]
    check, generate = RUNS[family]
    return {
        "family": family,
        "cause": f"{type(error).__name__} at {Path(where.filename).name}:{where.lineno}",
        "reproduce": (
            f"from tests.test_fuzz_codecs import *; "
            f"{check.__name__}({generate.__name__}(Choices(bytes.fromhex('{data.hex()}'))))"
        ),
        "traceback": "".join(traceback.format_exception(error)),
    }


def _save(failures: list[dict[str, Any]], directory: Path | None) -> list[str]:
    """Write each failure (traceback, and the choices that reproduce it) to a file."""
    target = directory or Path(tempfile.mkdtemp(prefix="bitfleet-fuzz-"))
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, failure in enumerate(failures):
        path = target / f"failure-{number}-{failure['family']}.txt"
        path.write_text(
            f"{failure['cause']} ({failure['family']})\n"
            f"reproduce from the repository root: .venv/bin/python -c "
            f'"{failure["reproduce"]}"\n\n{failure["traceback"]}'
        )
        paths.append(str(path))
    return paths


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"inputs fuzzed: {report['inputs']:,} in {report['seconds']} s (seed {report['seed']}"
        f"{'' if report['complete'] else ', stopped early at --max-seconds'})"
    ]
    for family, stats in report["families"].items():
        outcomes = ", ".join(f"{k} {v:,}" for k, v in stats["outcomes"].items())
        lines.append(f"  {family}: {stats['inputs']:,} ({outcomes})")
    lines.append(f"untyped exceptions: {report['untyped_exceptions']}")
    lines.append(f"property violations: {report['violations']}")
    lines.extend(f"  {count:,} x {cause}" for cause, count in report["causes"].items())
    lines.extend(f"  saved {path}" for path in report["saved"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
