"""Model files and frames: round trips, and every kind of damage is a clear ModelFileError."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer
from bitfleet.errors import ModelFileError
from bitfleet.floatmlp import FloatConfig, FloatTrainer
from bitfleet.frames import KIND_MODEL, MAGIC, Tensor, decode_frame, encode_frame
from bitfleet.modelfile import load_model, model_from_frame, model_to_frame, save_model


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(300, 70), dtype=np.uint8), rng.integers(0, 4, size=300)


@pytest.fixture(params=["binary", "ternary"])
def bit_model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    x, y = _data()
    config = BitFlipConfig(encoding=request.param, state_bits=4, epochs=1)
    return BitFlipTrainer([70, 33, 4], config).fit(x, y)


def _reframe(header: dict, payload: bytes, version: int = 1) -> bytes:
    """Build a frame by hand (valid CRC) to reach checks behind the checksum."""
    raw = json.dumps(header).encode()
    body = struct.pack("<4sBBHI", MAGIC, version, KIND_MODEL, 0, len(raw)) + raw + payload
    return body + struct.pack("<I", zlib.crc32(body))


def test_bit_model_round_trips_through_a_file(bit_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, _ = _data(1)
    path = tmp_path / "m.bfm"
    save_model(path, model_to_frame(bit_model, {"dataset": "synthetic"}))
    loaded, meta = load_model(path)
    assert meta["dataset"] == "synthetic" and meta["layers"] == [70, 33, 4]
    np.testing.assert_array_equal(loaded.scores(x), bit_model.scores(x))  # type: ignore[union-attr]


def test_float_model_round_trips() -> None:
    x, y = _data()
    model = FloatTrainer([70, 8, 4], FloatConfig(epochs=1)).fit(x, y)
    loaded = model_from_frame(decode_frame(model_to_frame(model)))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_binary_784_512_10_file_is_at_least_25x_smaller_than_float32() -> None:
    big = BitFlipTrainer([784, 512, 10]).model()
    assert len(model_to_frame(big)) * 25 <= 4 * big.params


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:-1], "checksum"),
        (
            lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1 :],
            "checksum",
        ),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b + b"\0", "checksum"),
        (lambda b: b"", "truncated"),
    ],
)
def test_damaged_frames_are_refused(bit_model, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    good = model_to_frame(bit_model)
    with pytest.raises(ModelFileError, match=message):
        decode_frame(damage(good))


def test_wrong_version_names_the_fix() -> None:
    with pytest.raises(ModelFileError, match="version 9 is not supported"):
        decode_frame(_reframe({"meta": {}, "tensors": []}, b"", version=9))


@pytest.mark.parametrize(
    "header, payload, message",
    [
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "uint8", "shape": [8]}]},
            b"\0" * 4,
            "past the end",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "uint8", "shape": [2]}]},
            b"\0" * 4,
            "unexpected bytes",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "uint8", "shape": [-1]}]},
            b"",
            "invalid shape",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "uint8", "shape": [2**30]}]},
            b"",
            "invalid shape",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "int4", "shape": [2]}]},
            b"\0\0",
            "unknown tensor encoding",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "binary", "shape": [2]}]},
            b"",
            "must be 2-D",
        ),
        (
            {"meta": {}, "tensors": [{"name": "a", "encoding": "binary", "shape": [1, 3]}]},
            b"\xff" + b"\0" * 7,
            "padding",
        ),
        ({"meta": [], "tensors": []}, b"", "'meta' object"),
        ({"meta": {}, "tensors": ["x"]}, b"", "must be an object"),
    ],
)
def test_hostile_headers_are_refused(header: dict, payload: bytes, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        decode_frame(_reframe(header, payload))


def test_header_that_is_not_json_is_refused() -> None:
    body = struct.pack("<4sBBHI", MAGIC, 1, KIND_MODEL, 0, 3) + b"{x]"
    with pytest.raises(ModelFileError, match="not valid JSON"):
        decode_frame(body + struct.pack("<I", zlib.crc32(body)))


def test_frame_with_inconsistent_layers_is_not_a_model() -> None:
    tensors = [
        Tensor("input_offset", "uint8", (5,), np.zeros(5, np.uint8)),
        Tensor("dense_0", "binary", (3, 6), np.zeros((1, 3, 1), np.uint64)),
    ]
    frame = decode_frame(encode_frame(KIND_MODEL, {"model_type": "bitmlp"}, tensors))
    with pytest.raises(ModelFileError, match="inconsistent"):
        model_from_frame(frame)


def test_missing_and_unwritable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent.bfm")
    with pytest.raises(ModelFileError, match="cannot write"):
        save_model(tmp_path / "no-such-dir" / "m.bfm", b"data")
    assert list(tmp_path.iterdir()) == []
