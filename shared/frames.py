"""The one binary frame format for every model file and (later) every wire message.

Layout (all integers little-endian)::

    0   magic  b"BFLT"
    4   u8     format version (1)
    5   u8     kind (1 = model)
    6   u16    flags (0; reserved)
    8   u32    header length H (at most MAX_HEADER_BYTES)
    12  H      header: UTF-8 JSON {"meta": {...}, "tensors": [{"name", "encoding", "shape"}]}
    ..         payload: each tensor's bytes, in header order
    -4  u32    CRC32 of everything before it

Tensor sizes are derived from encoding and shape, never read from the frame, and the
decoder checks every length against the bytes actually present: a truncated, padded,
corrupted or hostile frame raises :class:`ModelFileError` and nothing else.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.bitpack import words_for
from shared.errors import ModelFileError

MAGIC = b"BFLT"
FORMAT_VERSION = 1
KIND_MODEL = 1
KINDS = {KIND_MODEL: "model"}
MAX_HEADER_BYTES = 1 << 20
MAX_DIM = 1 << 24
MAX_ELEMENTS = 1 << 28

_PREFIX = struct.Struct("<4sBBHI")
_CRC = struct.Struct("<I")

# Plain (unpacked) encodings and their little-endian dtypes.
PLAIN_DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
}
# Packed encodings: number of uint64 bit-planes per (rows, words) block.
PACKED_PLANES = {"binary": 1, "ternary": 2}
ENCODINGS = tuple(PLAIN_DTYPES) + tuple(PACKED_PLANES)


@dataclass(frozen=True)
class Tensor:
    """A named tensor. Packed encodings hold ``(planes, rows, words)`` uint64 data for a
    logical ``(rows, columns)`` shape; plain encodings hold the array itself."""

    name: str
    encoding: str
    shape: tuple[int, ...]
    data: NDArray[Any]


@dataclass(frozen=True)
class Frame:
    kind: int
    meta: dict[str, Any]
    tensors: dict[str, Tensor]


def _stored_shape(encoding: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The array shape and dtype a tensor occupies in the payload."""
    if encoding in PACKED_PLANES:
        if len(shape) != 2:
            raise ModelFileError(f"a {encoding} tensor must be 2-D (rows, columns), got {shape}")
        rows, columns = shape
        return (PACKED_PLANES[encoding], rows, words_for(columns)), np.dtype("<u8")
    if encoding in PLAIN_DTYPES:
        return shape, PLAIN_DTYPES[encoding]
    raise ModelFileError(f"unknown tensor encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def encode_frame(kind: int, meta: dict[str, Any], tensors: list[Tensor]) -> bytes:
    """Serialize a frame. ``meta`` must be JSON-serializable."""
    entries = []
    payload = []
    for tensor in tensors:
        stored, dtype = _stored_shape(tensor.encoding, tensor.shape)
        data = np.ascontiguousarray(tensor.data, dtype=dtype)
        if data.shape != stored:
            raise ModelFileError(
                f"tensor {tensor.name!r} holds {data.shape}, expected {stored} for "
                f"{tensor.encoding} {tensor.shape}"
            )
        entries.append({"name": tensor.name, "encoding": tensor.encoding, "shape": tensor.shape})
        payload.append(data.tobytes())
    header = json.dumps({"meta": meta, "tensors": entries}, sort_keys=True).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, kind, 0, len(header)) + header + b"".join(payload)
    return body + _CRC.pack(zlib.crc32(body))


def decode_frame(data: bytes) -> Frame:
    """Parse and verify a frame; any defect raises :class:`ModelFileError`."""
    minimum = _PREFIX.size + _CRC.size
    if len(data) < minimum:
        raise ModelFileError(f"frame is truncated: {len(data)} bytes, at least {minimum} needed")
    magic, version, kind, flags, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ModelFileError("not a bitfleet model or frame (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"frame format version {version} is not supported (this bitfleet reads "
            f"version {FORMAT_VERSION}); upgrade bitfleet or re-export the model"
        )
    if kind not in KINDS:
        raise ModelFileError(f"unknown frame kind {kind}")
    if flags != 0:
        raise ModelFileError(f"unsupported frame flags {flags:#x}")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != stored_crc:
        raise ModelFileError("checksum mismatch: the file is corrupted or truncated")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(data) - _CRC.size:
        raise ModelFileError(f"header length {header_len} does not fit the frame")
    header = _parse_header(data[_PREFIX.size : _PREFIX.size + header_len])
    tensors = _read_tensors(header["tensors"], data, _PREFIX.size + header_len)
    return Frame(kind, header["meta"], tensors)


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"frame header is not valid JSON: {error}") from None
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("meta"), dict)
        or not isinstance(header.get("tensors"), list)
    ):
        raise ModelFileError("frame header must hold a 'meta' object and a 'tensors' list")
    return header


def _read_tensors(entries: list[Any], data: bytes, offset: int) -> dict[str, Tensor]:
    end = len(data) - _CRC.size
    tensors: dict[str, Tensor] = {}
    for entry in entries:
        name, encoding, shape = _check_entry(entry)
        if name in tensors:
            raise ModelFileError(f"tensor {name!r} appears twice")
        stored, dtype = _stored_shape(encoding, shape)
        size = prod(stored) * dtype.itemsize
        if offset + size > end:
            raise ModelFileError(f"tensor {name!r} runs past the end of the frame (truncated)")
        array = np.frombuffer(data, dtype=dtype, count=prod(stored), offset=offset).reshape(stored)
        if encoding in PACKED_PLANES and _has_padding_bits(array, shape[1]):
            raise ModelFileError(f"tensor {name!r} has nonzero padding bits")
        tensors[name] = Tensor(name, encoding, shape, array)
        offset += size
    if offset != end:
        raise ModelFileError(f"{end - offset} unexpected bytes after the last tensor")
    return tensors


def _check_entry(entry: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise ModelFileError("tensor entry must be an object")
    name, encoding, shape = entry.get("name"), entry.get("encoding"), entry.get("shape")
    if not isinstance(name, str) or not isinstance(encoding, str) or not isinstance(shape, list):
        raise ModelFileError(f"tensor entry {entry!r} needs a name, an encoding and a shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in shape):
        raise ModelFileError(f"tensor {name!r} has an invalid shape {shape}")
    if not shape or prod(shape) > MAX_ELEMENTS:
        raise ModelFileError(f"tensor {name!r} shape {shape} is empty or too large")
    return name, encoding, tuple(shape)


def _has_padding_bits(words: NDArray[np.uint64], columns: int) -> bool:
    used = columns % 64
    if used == 0:
        return False
    mask = np.uint64(((1 << 64) - 1) ^ ((1 << used) - 1))
    return bool(np.any(words[..., -1] & mask))
