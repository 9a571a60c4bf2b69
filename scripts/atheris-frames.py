"""Coverage-guided fuzzing of the shared codecs with atheris (libFuzzer for Python).

Run by hand (atheris is not a project dependency)::

    .venv/bin/pip install atheris
    .venv/bin/python scripts/atheris-frames.py -runs=100000 [-max_len=4096] [corpus/]

The first byte of each input picks what the rest is: raw bytes decoded as a frame (and as a
model file), raw bytes fed to a reassembler as a chunk, or the choices of one of the
generators of ``tests/test_fuzz_codecs.py`` (mutated frames, header bombs, model files,
chunk streams), so libFuzzer's coverage feedback steers the same mutations CI runs. A
typed refusal is a pass; anything else escaping (an untyped exception, or a broken
property as AssertionError) is reported by libFuzzer as a crash, with the input saved.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Coverage instrumentation for bitfleet's own modules, but not the kernels (numba cannot
# compile instrumented bytecode); the generators import the rest.
with atheris.instrument_imports(
    include=["bitfleet"],
    exclude=["bitfleet.kernels.fast", "bitfleet.server", "bitfleet.edge_agent"],
):
    from bitfleet.chunks import Reassembler
    from bitfleet.frames import FrameError
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


def _raw_chunk(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        Reassembler(max_frame_bytes=1 << 16).feed(data, "fuzzer")


TARGETS: list[Callable[[bytes], object]] = [
    check_frame,
    _raw_chunk,
    lambda data: check_frame(mutated_frame(Choices(data))),
    lambda data: check_frame(header_bomb(Choices(data))),
    lambda data: check_model(mutated_model(Choices(data))),
    lambda data: check_chunks(chunk_stream(Choices(data))),
]


def test_one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
