"""Fuzzing of the shared codecs: every hostile byte is a typed refusal.

Frames, model files and chunk streams are mutated (bit flips, truncation, extension,
header bombs, rebuilt tensors, resealed checksums and signatures so that the deeper checks
are reached too) and fed to the decoders. Only :class:`BitfleetError` subclasses may come
out, a model that decodes must predict, and an honest sender's chunked frame must come
through a flood from another sender.

Each generator reads its choices from a byte string (:class:`Choices`): hypothesis draws
(and shrinks) those bytes here, random bytes drive ``scripts/fuzz-codecs.py`` (the
high-volume run) and libFuzzer drives ``scripts/atheris-frames.py``, so all three fuzz the
same way. ``BITFLEET_FUZZ_EXAMPLES`` sets the hypothesis examples per property (default
4,000: five properties, 20,000 examples, over 100,000 inputs with the chunk messages).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.bitpack import pack_bits
from bitfleet.chunks import CHUNK_OVERHEAD_BYTES, Reassembler, split_frame
from bitfleet.errors import ModelFileError
from bitfleet.fixedpoint import quantize
from bitfleet.floatmlp import FloatMLP
from bitfleet.frames import (
    FLAG_SIGNED,
    KIND_MODEL,
    KIND_UPDATE,
    MAGIC,
    MAX_HEADER_DEPTH,
    PACKED_PLANES,
    PLAIN_DTYPES,
    Frame,
    FrameError,
    Tensor,
    decode_frame,
    encode_frame,
)
from bitfleet.modelfile import (
    Model,
    bitmlp_from_frame,
    fixedmlp_from_frame,
    floatmlp_from_frame,
    model_from_frame,
    model_to_frame,
)

EXAMPLES = int(os.environ.get("BITFLEET_FUZZ_EXAMPLES", "4000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECRET = b"agent-secret"
T = TypeVar("T")
_PREFIX = struct.Struct("<4sBBHI")
_CHUNK = struct.Struct("<4sBBH16sIII")


class Choices:
    """Choices read from bytes; once they run out, from a generator seeded with them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.rest = random.Random(data)

    def take(self, size: int) -> bytes:
        raw = self.data[self.at : self.at + size]
        self.at += size
        return raw + self.rest.randbytes(size - len(raw))

    def below(self, bound: int) -> int:
        """A number in ``[0, bound)``."""
        if bound <= 1:
            return 0
        return int.from_bytes(self.take(((bound - 1).bit_length() + 7) // 8), "little") % bound

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def blob(self, max_size: int) -> bytes:
        return self.take(self.below(max_size + 1))


# What is mutated: valid frames of every kind ------------------------------------------------


def secret_for(meta: dict[str, Any]) -> bytes:
    """The coordinator's lookup: one known agent."""
    if meta.get("agent_id") != "a1":
        raise FrameError("unknown_agent", "unknown agent")
    return SECRET


def seal(body: bytes, secret: bytes | None = None) -> bytes:
    """``body`` (a frame without its trailer) with a valid signature (if given) and CRC."""
    if secret is not None:
        body += hmac.new(secret, body, hashlib.sha256).digest()
    return body + struct.pack("<I", zlib.crc32(body))


def reseal(data: bytes) -> bytes:
    """A mutated frame with its checksum (and signature, if flagged) made valid again."""
    if len(data) < _PREFIX.size + 4:
        return data
    signed = bool(data[6] & FLAG_SIGNED) and len(data) >= _PREFIX.size + 36
    return seal(data[: -36 if signed else -4], SECRET if signed else None)


def frame_with_header(header: bytes, payload: bytes = b"", signed: bool = False) -> bytes:
    flags = FLAG_SIGNED if signed else 0
    body = _PREFIX.pack(MAGIC, 1, KIND_UPDATE, flags, len(header)) + header + payload
    return seal(body, SECRET if signed else None)


def _models() -> dict[str, Model]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 12), dtype=np.uint8)
    weights = [
        (rng.standard_normal((12, 7)) * 0.3).astype(np.float32),
        (rng.standard_normal((7, 3)) * 0.3).astype(np.float32),
    ]
    biases = [np.zeros(7, np.float32), np.zeros(3, np.float32)]
    baseline = FloatMLP(weights, biases, x.mean(axis=0).astype(np.float32))
    return {
        "binary": BitFlipTrainer([12, 7, 3], BitFlipConfig(encoding="binary")).model(),
        "ternary": BitFlipTrainer([12, 7, 3], BitFlipConfig(encoding="ternary")).model(),
        "float": baseline,
        "fixed8": quantize(baseline, x, weight_bits=8),
        "fixed16": quantize(baseline, x, weight_bits=16),
    }


MODELS = {name: model_to_frame(model, {"dataset": "fuzz"}) for name, model in _models().items()}
UPDATE = encode_frame(
    KIND_UPDATE,
    {"agent_id": "a1", "samples": 40, "round": 0, "job_id": "j"},
    [Tensor("dense_0", "binary", (3, 70), np.zeros((1, 3, 2), np.uint64))],
    SECRET,
)
BASES = [UPDATE, *MODELS.values()]
LOADERS: tuple[Callable[[Frame], Model], ...] = (
    model_from_frame,
    bitmlp_from_frame,
    fixedmlp_from_frame,
    floatmlp_from_frame,
)


# Generators: bytes of choices in, hostile input out -----------------------------------------


def mutated_frame(choices: Choices) -> bytes:
    """A valid frame, bit-flipped, truncated, extended or overwritten, maybe resealed."""
    data = choices.pick(BASES)
    for _ in range(1 + choices.below(6)):
        op = choices.pick(["flip", "flip", "truncate", "extend", "insert", "u32"])
        at = choices.below(len(data) + 1)
        if op == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ 1 << choices.below(8)]) + data[at + 1 :]
        elif op == "truncate":
            data = data[:at]
        elif op == "extend":
            data += choices.blob(64) or b"\0"
        elif op == "insert":
            data = data[:at] + (choices.blob(16) or b"\0") + data[at:]
        elif op == "u32":
            at = choices.pick([8, 12, 16, 20])
            data = data[:at] + struct.pack("<I", choices.below(2**32)) + data[at + 4 :]
    return reseal(data) if choices.below(2) else data


def _json_value(choices: Choices, depth: int = 0) -> Any:
    kind = choices.pick(["int", "float", "text", "bool", "null", "list", "dict"])
    if kind in ("list", "dict") and depth < 4:
        items = [_json_value(choices, depth + 1) for _ in range(choices.below(4))]
        return items if kind == "list" else {f"k{i}": v for i, v in enumerate(items)}
    if kind == "int":
        return choices.pick([0, 1, -1, 2**31, 2**63, 2**64 - 1, -(2**64)])
    if kind == "float":
        return choices.pick([0.5, -1e300, 1e-310, 3.0])
    if kind == "text":
        return choices.pick(["", "a1", "\u00e9", "\U0001f600", "[{", "x" * 300])
    return choices.pick([True, False, None])


def header_bomb(choices: Choices) -> bytes:
    """A frame whose header is hostile JSON, or valid JSON of a hostile shape."""
    kind = choices.pick(["int", "nest", "constant", "string", "shape", "json", "raw"])
    meta: Any = {"agent_id": "a1"}
    tensors: Any = []
    token = ""  # spliced in raw where "TOKEN" stands, as json.dumps cannot write it
    if kind == "int":
        token = "-" * choices.below(2) + "9" * (15 + choices.below(5000))
    elif kind == "nest":
        depth = MAX_HEADER_DEPTH - 3 + choices.below(3000)
        opener, closer = choices.pick([("[", "]"), ('{"a":', "}")])
        token = opener * depth + "0" + closer * choices.below(depth + 1)
    elif kind == "constant":
        token = choices.pick(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 400])
    elif kind == "string":
        meta["agent_id"] = "a" * choices.below(200_000)
    elif kind == "shape":
        shape = choices.pick(
            [
                [choices.pick([-3, 0, 1, 5, 2**24, 2**24 + 1, 2**70, True, 1.5, "2", None])],
                [1] * (60 + choices.below(20)),
                [2**14, 2**14, 2],
                None,
                "1",
                {"a": 1},
            ]
        )
        encoding = choices.pick([*PLAIN_DTYPES, *PACKED_PLANES, "int4", "", 7])
        tensors = [{"name": choices.pick(["t", "", 5, None]), "encoding": encoding, "shape": shape}]
    elif kind == "json":
        meta, tensors = _json_value(choices), _json_value(choices)
    else:
        header = choices.pick(
            [
                b'{"meta":{"a":"\\ud800"},"tensors":[]}',
                b'{"meta":{},"meta":{},"tensors":[]}',
                b'\xef\xbb\xbf{"meta":{},"tensors":[]}',
                b'{"meta":{},"tensors":[]',
                b'{"meta":{"a":"\\',
                b"\xff\xfe",
                b"",
                choices.blob(64),
            ]
        )
    if kind != "raw":
        if token:
            meta["x"] = "TOKEN"
        text = json.dumps({"meta": meta, "tensors": tensors})
        header = text.replace('"TOKEN"', token, 1).encode()
    return frame_with_header(header, choices.blob(32), signed=bool(choices.below(2)))


_NAMES = [
    "input_offset",
    "input_mean",
    "exponents",
    *(f"{kind}_{i}" for kind in ("dense", "weight", "bias") for i in range(3)),
    "extra",
]


def _random_data(encoding: str, shape: tuple[int, ...], seed: int) -> NDArray[Any]:
    rng = np.random.default_rng(seed)
    if encoding in PACKED_PLANES:
        rows, columns = shape
        return pack_bits(rng.random((PACKED_PLANES[encoding], rows, columns)) < 0.5)
    dtype = PLAIN_DTYPES[encoding]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _extreme(dtype: np.dtype[Any], choices: Choices) -> Any:
    if dtype.kind == "f":
        return choices.pick([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -0.0])
    info = np.iinfo(dtype)
    return choices.pick([info.min, info.max, 0, -1 if info.min else 1])


def _edit(meta: dict[str, Any], tensors: list[Tensor], choices: Choices) -> None:
    """One change to a model's meta or tensors, keeping the frame encodable."""
    op = choices.pick(["shape", "encoding", "rename", "drop", "copy", "value", "exps", "meta"])
    if op == "meta":
        key = choices.pick(["model_type", "layers"])
        meta[key] = choices.pick(["bitmlp", "floatmlp", "fixedmlp", None, [12, 7, 3], [12, 3]])
        return
    if op == "exps":  # a chain of exponents (as the loader wants), then maybe one off
        exps, input_exp = [], 7
        for layer in range(1 + choices.below(3)):
            weight_exp = choices.pick([-41, -40, -20, 0, 5, 10, 33, 40, 41])
            output_exp = choices.pick([-41, -40, -10, 0, 5, 10, 40, 41])
            exps.append([input_exp, weight_exp, output_exp if layer < 2 else 0])
            input_exp = output_exp
        exps[-1][2] = exps[-1][0] + exps[-1][1]
        flat = [value for row in exps for value in row]
        at = choices.below(len(flat))
        flat[at] = choices.pick([flat[at], flat[at], flat[at] + 1, flat[at] - 1, 2**31 - 1])
        values = np.array(flat, np.int32).reshape(-1, 3)
        tensors.append(Tensor("exponents", "int32", values.shape, values))
        return
    if not tensors:
        return
    index = choices.below(len(tensors))
    old = tensors[index]
    if op in ("shape", "encoding"):
        encoding = old.encoding if op == "shape" else choices.pick([*PLAIN_DTYPES, *PACKED_PLANES])
        rank = 2 if encoding in PACKED_PLANES else 1 + choices.below(3)
        sizes = sorted({1, 2, 3, 65, *(d for t in tensors for d in t.shape)})  # ones that chain
        shape = tuple(choices.pick(sizes) for _ in range(rank))
        if op == "encoding" and rank == len(old.shape):
            shape = old.shape
        data = _random_data(encoding, shape, choices.below(2**16))
        tensors[index] = Tensor(old.name, encoding, shape, data)
    elif op == "rename":
        tensors[index] = Tensor(choices.pick(_NAMES), old.encoding, old.shape, old.data)
    elif op == "drop":
        del tensors[index]
    elif op == "copy":
        tensors.append(Tensor(choices.pick(_NAMES), old.encoding, old.shape, old.data))
    elif op == "value" and old.encoding in PLAIN_DTYPES:
        data = np.array(old.data)
        data.reshape(-1)[choices.below(data.size)] = _extreme(data.dtype, choices)
        tensors[index] = Tensor(old.name, old.encoding, old.shape, data)


def mutated_model(choices: Choices) -> bytes:
    """A model file rebuilt with changed tensors or meta (consistent bytes, so the model
    loaders see it), then maybe with tensor bits flipped and resealed."""
    frame = decode_frame(MODELS[choices.pick(sorted(MODELS))])
    meta = dict(frame.meta)
    tensors = list(frame.tensors.values())
    for _ in range(choices.below(5)):
        _edit(meta, tensors, choices)
    data = encode_frame(KIND_MODEL, meta, tensors)
    payload = _PREFIX.size + _PREFIX.unpack_from(data)[4]  # flips in the header: frames' job
    flips = choices.below(4) if len(data) > payload + 4 else 0
    for _ in range(flips):
        at = payload + choices.below(len(data) - 4 - payload)
        data = data[:at] + bytes([data[at] ^ 1 << choices.below(8)]) + data[at + 1 :]
    return reseal(data) if flips else data


LIMITS = {"max_frame_bytes": 8_000, "max_buffered_bytes": 32_000, "max_transfers": 16}
HONEST = UPDATE + bytes(3_000 - len(UPDATE))  # the bytes an honest agent sends in chunks


def _hostile_message(choices: Choices) -> bytes:
    kind = choices.pick(["chunk", "chunk", "chunk", "replay", "whole", "junk", "frame"])
    if kind == "junk":
        return choices.blob(48)
    if kind == "frame":
        return MAGIC + choices.blob(64)
    if kind == "whole":
        return choices.pick(split_frame(UPDATE + bytes(choices.below(500)), 100))
    if kind == "replay":
        message = choices.pick(split_frame(HONEST, 300))
        at = _CHUNK.size + choices.below(len(message) - _CHUNK.size)
        flipped = message[:at] + bytes([message[at] ^ 1 + choices.below(255)]) + message[at + 1 :]
        return choices.pick([message, flipped, message[: at + 1]])
    count = choices.pick([1, 2, 3, 10, 100, 10_000, 2**32 - 1, 1 + choices.below(50)])
    index = choices.pick([count - 1, choices.below(count), choices.below(2**32)])
    size = choices.pick([0, 1, 2, 300, 2_000, 8_001, choices.below(3_001)])
    version, reserved = choices.pick([(1, 0), (1, 0), (1, 0), (1, 0), (2, 0), (1, 1)])
    transfer = bytes([choices.below(8)]) * 16
    header = _CHUNK.pack(b"BFCH", version, reserved, 0, transfer, index, count, choices.below(9))
    return header + bytes([choices.below(256)]) * size


def chunk_stream(choices: Choices) -> list[tuple[str, bytes]]:
    """An honest agent's chunks (any order, maybe a duplicate) among hostile messages from
    one flooder, or from three."""
    honest = split_frame(HONEST, choices.pick([100, 300, 1_000]))
    if choices.below(2):
        honest = [*reversed(honest), honest[0]]
    flooders = choices.pick([["h1"], ["h1", "h2", "h3"]])
    stream = []
    for _ in range(choices.below(80)):
        if honest and choices.below(3) == 0:
            stream.append(("agent", honest.pop(0)))
        else:
            stream.append((choices.pick(flooders), _hostile_message(choices)))
    return stream + [("agent", message) for message in honest]


# Checks: typed refusals pass, anything else fails (AssertionError: a broken property) ------


def use_model(model: Model) -> None:
    """What a decoded model is for: predict and score a tiny batch of its input width."""
    x = np.random.default_rng(1).integers(0, 256, (3, model.layer_sizes[0]), dtype=np.uint8)
    assert model.predict(x).shape == (3,)
    assert 0.0 <= model.accuracy(x, np.arange(3)) <= 1.0


def check_model(data: bytes) -> str:
    """Decode ``data`` as a model file with every loader and use what loads; the outcome."""
    try:
        frame = decode_frame(data)
    except FrameError as error:
        return error.reason
    outcome = "model"  # every loader refused it
    for loader in LOADERS:
        try:
            model = loader(frame)
        except ModelFileError:
            continue
        use_model(model)
        outcome = "accepted"
    return outcome


def check_frame(data: bytes) -> str:
    """Decode ``data`` as the coordinator does (signed) and as a model file; the outcome of
    the first."""
    check_model(data)
    try:
        decode_frame(data, secret_for=secret_for)
    except FrameError as error:
        assert error.reason and len(str(error)) < 500, "a refusal says briefly what is wrong"
        return error.reason
    return "accepted"


def check_chunks(stream: list[tuple[str, bytes]]) -> Counter[str]:
    """Feed the stream; the outcome of each message. The honest frame arrives once and
    intact, always when only one sender floods; every bound holds after every message."""
    one_flooder = len({source for source, _ in stream if source != "agent"}) <= 1
    reassembler = Reassembler(**LIMITS, clock=lambda: 0.0)
    outcomes: Counter[str] = Counter()
    delivered = []
    for source, message in stream:
        try:
            frame = reassembler.feed(message, source)
        except FrameError as error:
            assert source != "agent" or not one_flooder, f"honest chunk refused: {error}"
            outcomes[error.reason] += 1
            continue
        outcomes["delivered" if frame is not None else "buffered"] += 1
        if source == "agent" and frame is not None:
            delivered.append(frame)
        assert reassembler.buffered_bytes <= LIMITS["max_buffered_bytes"]
        assert reassembler.pending <= LIMITS["max_transfers"]
    assert all(frame == HONEST for frame in delivered) and len(delivered) <= 1
    assert delivered or not one_flooder, "the honest frame did not come through"
    return outcomes


# Properties --------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=64))
def test_mutated_frames_are_typed_refusals(data: bytes) -> None:
    check_frame(mutated_frame(Choices(data)))


@FUZZ
@given(st.binary(max_size=64))
def test_header_bombs_are_header_errors_before_any_secret(data: bytes) -> None:
    check_frame(header_bomb(Choices(data)))


@FUZZ
@given(st.binary(max_size=64))
def test_mutated_model_files_load_as_usable_models_or_typed_errors(data: bytes) -> None:
    check_model(mutated_model(Choices(data)))


@FUZZ
@given(st.binary(max_size=64))
def test_valid_frames_of_mutated_models_still_load(data: bytes) -> None:
    """Edits that keep a model consistent must not be refused: the checks are not too
    strict. (Meta edits only; the loaders must accept the tensors unchanged.)"""
    choices = Choices(data)
    name = choices.pick(sorted(MODELS))
    frame = decode_frame(MODELS[name])
    extra = {f"k{i}": _json_value(choices) for i in range(choices.below(4))}
    rebuilt = encode_frame(KIND_MODEL, {**frame.meta, **extra}, list(frame.tensors.values()))
    assert check_model(rebuilt) == "accepted"


@FUZZ
@given(st.binary(max_size=64))
def test_an_honest_chunked_frame_comes_through_any_flood(data: bytes) -> None:
    check_chunks(chunk_stream(Choices(data)))


# Regressions for the findings of the outside probe ------------------------------------------


def test_a_4301_digit_integer_is_a_header_error_not_a_crash() -> None:
    header = b'{"meta": {"agent_id": "a1", "samples": ' + b"9" * 4301 + b'}, "tensors": []}'
    with pytest.raises(FrameError, match="4301-digit integer") as error:
        decode_frame(frame_with_header(header, signed=True), secret_for=secret_for)
    assert error.value.reason == "header"


def test_nesting_1000_deep_is_a_header_error_not_a_crash() -> None:
    header = b'{"meta": {"x": ' + b"[" * 1000 + b"]" * 1000 + b'}, "tensors": []}'
    with pytest.raises(FrameError, match=r"nests|not valid JSON") as error:
        decode_frame(frame_with_header(header, signed=True), secret_for=secret_for)
    assert error.value.reason == "header"


def test_nesting_just_past_the_bound_is_refused_by_depth() -> None:
    header = b'{"meta": {"x": ' + b"[" * 40 + b"]" * 40 + b'}, "tensors": []}'
    with pytest.raises(FrameError, match="more than 32 deep"):
        decode_frame(frame_with_header(header, signed=True), secret_for=secret_for)


def test_a_header_of_a_mebibyte_of_quotes_is_refused_in_linear_time() -> None:
    """The probe after the first fix: a regular-expression scan of the raw header was
    quadratic on escaped quotes (80 KB: 20 s; 1 MiB: about an hour, before any HMAC). A
    child process with a generous bound tells a hang from a refusal."""
    script = (
        "from tests.test_fuzz_codecs import frame_with_header, secret_for\n"
        "from bitfleet.frames import FrameError, MAX_HEADER_BYTES, decode_frame\n"
        "header = b'\"' + b'\\\\\"' * ((MAX_HEADER_BYTES - 2) // 3)\n"
        "try:\n"
        "    decode_frame(frame_with_header(header, signed=True), secret_for=secret_for)\n"
        "except FrameError as error:\n"
        "    print(error.reason)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "header", result.stderr


@pytest.mark.parametrize(
    "header, message",
    [
        (b'{"meta": {"x": NaN}, "tensors": []}', "NaN"),
        (b'{"meta": {"x": -Infinity}, "tensors": []}', "-Infinity"),
        (b'{"meta": {"x": 1e999}, "tensors": []}', "overflows a float"),
        (b'{"meta": {"x": "\\udc00"}, "tensors": []}', "lone UTF-16 surrogate"),
        (b'{"meta": {"x": 1, "x": 2}, "tensors": []}', "repeats the key 'x'"),
        (
            b'{"meta": {}, "tensors": [{"name": "t", "encoding": "uint8", "shape": '
            + json.dumps([1] * 70).encode()
            + b"}]}",
            "rank 70",
        ),
    ],
)
def test_header_values_a_codec_cannot_trust_are_refused(header: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message) as error:
        decode_frame(frame_with_header(header, b"\0"))
    assert error.value.reason in ("header", "shape")


def test_deep_but_legal_headers_and_brackets_in_strings_still_decode() -> None:
    nested: Any = 0
    for _ in range(MAX_HEADER_DEPTH - 2):
        nested = [nested]
    meta = {"agent_id": "a1", "nested": nested, "note": '[[{{"\\' * 50, "id": 2**64 - 1}
    frame = decode_frame(encode_frame(KIND_UPDATE, meta, [], SECRET), secret_for=secret_for)
    assert frame.meta == meta


def _float_frame(mean: NDArray[np.float32]) -> Frame:
    tensors = [
        Tensor("input_mean", "float32", mean.shape, mean),
        Tensor("weight_0", "float32", (4, 2), np.ones((4, 2), np.float32)),
        Tensor("bias_0", "float32", (2,), np.zeros(2, np.float32)),
    ]
    return decode_frame(encode_frame(KIND_MODEL, {"model_type": "floatmlp"}, tensors))


def test_a_float_model_whose_input_mean_is_not_1d_does_not_load() -> None:
    with pytest.raises(ModelFileError, match="input_mean must be 1-D"):
        model_from_frame(_float_frame(np.zeros((4, 3), np.float32)))
    use_model(model_from_frame(_float_frame(np.zeros(4, np.float32))))


def test_a_float_model_with_nan_does_not_load() -> None:
    with pytest.raises(ModelFileError, match="NaN or infinity"):
        model_from_frame(_float_frame(np.full(4, np.nan, np.float32)))


def test_fixed_point_shifts_beyond_the_kernels_do_not_load() -> None:
    frame = decode_frame(MODELS["fixed16"])
    exponents = np.array(frame.tensors["exponents"].data)
    exponents[0] = (7, 40, -40)  # shift 87: overflowed the numpy kernel, undefined in numba
    tensors = {**frame.tensors, "exponents": Tensor("exponents", "int32", (2, 3), exponents)}
    data = encode_frame(KIND_MODEL, frame.meta, list(tensors.values()))
    with pytest.raises(ModelFileError, match="out of range"):
        model_from_frame(decode_frame(data))


def test_model_meta_layers_must_match_the_tensors() -> None:
    frame = decode_frame(MODELS["binary"])
    lying = Frame(frame.kind, {**frame.meta, "layers": [12, 8, 3]}, frame.tensors)
    with pytest.raises(ModelFileError, match="says layers"):
        model_from_frame(lying)


def _tiny_chunk(transfer: int, size: int = 1, index: int = 0, count: int = 2) -> bytes:
    header = _CHUNK.pack(b"BFCH", 1, 0, 0, transfer.to_bytes(16, "little"), index, count, 0)
    return header + b"x" * size


def test_64_tiny_chunks_from_one_agent_block_only_that_agent() -> None:
    reassembler = Reassembler()
    refused: Counter[str] = Counter()
    for transfer in range(64):
        try:
            reassembler.feed(_tiny_chunk(transfer), "flooder")
        except FrameError as error:
            refused[error.reason] += 1
    assert refused == {"busy": 60} and reassembler.pending == 4
    frame = UPDATE + bytes(20_000)
    results = [reassembler.feed(chunk, "honest") for chunk in split_frame(frame, 1_000)]
    assert results[-1] == frame and results[:-1] == [None] * (len(results) - 1)


def test_a_million_empty_chunks_buffer_nothing() -> None:
    reassembler = Reassembler()
    empty = [_tiny_chunk(t, size=0, index=i, count=2**32 - 1) for t in range(2) for i in range(2)]
    refused: Counter[str] = Counter()
    for number in range(1_000_000):
        try:
            reassembler.feed(empty[number % 4], "flooder")
        except FrameError as error:
            refused[error.reason] += 1
    assert refused == {"chunk": 1_000_000}
    assert reassembler.buffered_bytes == 0 and reassembler.pending == 0


def test_a_flood_of_one_byte_chunks_stays_within_the_accounted_bound() -> None:
    """Four senders flood tiny chunks of ever new transfers: accounted and real memory stay
    under the bound, and an honest upload in the middle of it arrives."""
    bound = 200_000
    reassembler = Reassembler(max_frame_bytes=50_000, max_buffered_bytes=bound)
    frame = UPDATE + bytes(10_000)
    honest = split_frame(frame, 2_000)
    delivered = []
    peak = 0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for number in range(50_000):
        chunk = _tiny_chunk(number // 400, index=number // 4 % 100, count=1_000)
        try:
            reassembler.feed(chunk, f"flooder-{number % 4}")
        except FrameError as error:
            assert error.reason == "busy"
        if number % 1_000 == 500 and honest:
            delivered.append(reassembler.feed(honest.pop(0), "honest"))
        assert reassembler.buffered_bytes <= bound
        peak = max(peak, reassembler.buffered_bytes)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert delivered[-1] == frame and delivered[:-1] == [None] * (len(delivered) - 1)
    assert peak >= 0.9 * bound  # the flood really filled the buffer
    assert grown <= bound + 64 * 1024  # accounted chunks, plus the transfers' own objects


def test_the_sender_holding_the_most_pays_when_the_buffer_is_full() -> None:
    reassembler = Reassembler(max_frame_bytes=10_000, max_buffered_bytes=12_000)
    big = split_frame(UPDATE + bytes(9_000), 1_036)  # 1,000-byte chunks
    for chunk in big[:8]:
        reassembler.feed(chunk, "hog")
    small = UPDATE + bytes(3_000)
    results = [reassembler.feed(chunk, "agent") for chunk in split_frame(small, 1_036)]
    assert results[-1] == small
    with pytest.raises(FrameError, match="already refused") as evicted:
        reassembler.feed(big[8], "hog")
    assert evicted.value.reason == "busy" and reassembler.buffered_bytes == 0


def test_chunks_that_cannot_belong_to_a_frame_are_refused_early() -> None:
    reassembler = Reassembler(max_frame_bytes=10_000)
    chunks = split_frame(UPDATE + bytes(5_000), 1_036)
    reassembler.feed(chunks[1], "a")
    cases = [
        (_tiny_chunk(1, count=10_001), "chunk", "can never fit"),
        (chunks[0][:-1], "chunk", "chunk sizes do not fit"),
        (_tiny_chunk(2, size=6_000, count=3), "oversized", "at least 12001 bytes"),
        (_tiny_chunk(3, size=1, count=10_000), "chunk", "reassembly buffer"),
        (chunks[0][:5] + b"\x01" + chunks[0][6:], "chunk", "reserved"),
        (chunks[0], "chunk", "already refused"),
    ]
    for message, reason, text in cases:
        with pytest.raises(FrameError, match=text) as error:
            reassembler.feed(message, "a")
        assert error.value.reason == reason
    assert reassembler.pending == 0 and reassembler.buffered_bytes == 0
    reassembler.feed(chunks[1], "b")  # a chunk costs its data plus a fixed overhead
    assert reassembler.buffered_bytes == len(chunks[1]) - _CHUNK.size + CHUNK_OVERHEAD_BYTES
