"""The one binary frame format for every model file and every wire message.

Layout (all integers little-endian)::

    0   magic  b"BFLT"
    4   u8     format version (1)
    5   u8     kind (1 = model, 2 = update)
    6   u16    flags (bit 0: signed)
    8   u32    header length H (at most MAX_HEADER_BYTES)
    12  H      header: UTF-8 JSON {"meta": {...}, "tensors": [{"name", "encoding", "shape"}]}
    ..         payload: each tensor's bytes, in header order
    ..  32     HMAC-SHA256 of everything before it, keyed by the sender's secret (if signed)
    -4  u32    CRC32 of everything before it

Tensor sizes are derived from encoding and shape, never read from the frame, and the
decoder checks every length against the bytes actually present: a truncated, oversized,
padded, corrupted, forged or hostile frame raises :class:`FrameError` (a
:class:`ModelFileError`) whose ``reason`` names the defect, and nothing else.

The header is parsed before the signature can be checked (``meta`` names the sender), so
it is bounded before and while it is parsed, and any defect is ``FrameError("header")``:

* at most ``MAX_HEADER_BYTES`` (1 MiB) of UTF-8, nested at most ``MAX_HEADER_DEPTH`` (32)
  arrays/objects deep (a scan that does not parse, so no recursion limit is reached);
* integers of at most ``MAX_INT_DIGITS`` (20) digits, which holds any int64/uint64 and
  keeps clear of Python's 4,300-digit int conversion limit; finite floats only, no
  ``NaN``/``Infinity``; no key twice in one object; no lone UTF-16 surrogate escapes;
* tensor entries of rank at most ``MAX_RANK`` (8), dimensions in 1..``MAX_DIM``, at most
  ``MAX_ELEMENTS`` elements.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite, prod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitpack import has_padding_bits, words_for
from bitfleet.errors import ModelFileError

MAGIC = b"BFLT"
FORMAT_VERSION = 1
KIND_MODEL = 1
KIND_UPDATE = 2
KINDS = {KIND_MODEL: "model", KIND_UPDATE: "update"}
FLAG_SIGNED = 1
SIGNATURE_BYTES = 32
DEFAULT_MAX_FRAME_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_DIM = 1 << 24
MAX_ELEMENTS = 1 << 28
MAX_RANK = 8
MAX_HEADER_DEPTH = 32
MAX_INT_DIGITS = 20
# Longest excerpt of a hostile value quoted in an error message.
_QUOTE_CHARS = 80

_PREFIX = struct.Struct("<4sBBHI")
_CRC = struct.Struct("<I")
# A JSON string (escapes included), and any run of characters that are not brackets.

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


class FrameError(ModelFileError):
    """A frame that cannot be trusted; ``reason`` is a short label for metrics and logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    signed: bool = False


def _stored_shape(encoding: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The array shape and dtype a tensor occupies in the payload."""
    if encoding in PACKED_PLANES:
        if len(shape) != 2:
            raise FrameError(
                "shape", f"a {encoding} tensor must be 2-D (rows, columns), got {shape}"
            )
        rows, columns = shape
        return (PACKED_PLANES[encoding], rows, words_for(columns)), np.dtype("<u8")
    if encoding in PLAIN_DTYPES:
        return shape, PLAIN_DTYPES[encoding]
    raise FrameError(
        "encoding", f"unknown tensor encoding {excerpt(encoding)}; known: {', '.join(ENCODINGS)}"
    )


def encode_frame(
    kind: int, meta: dict[str, Any], tensors: list[Tensor], secret: bytes | None = None
) -> bytes:
    """Serialize a frame, signed with ``secret`` when one is given.

    ``meta`` must be JSON-serializable.
    """
    entries = []
    payload = []
    for tensor in tensors:
        stored, dtype = _stored_shape(tensor.encoding, tensor.shape)
        data = np.ascontiguousarray(tensor.data, dtype=dtype)
        if data.shape != stored:
            raise FrameError(
                "shape",
                f"tensor {tensor.name!r} holds {data.shape}, expected {stored} for "
                f"{tensor.encoding} {tensor.shape}",
            )
        entries.append({"name": tensor.name, "encoding": tensor.encoding, "shape": tensor.shape})
        payload.append(data.tobytes())
    header = json.dumps({"meta": meta, "tensors": entries}, sort_keys=True).encode()
    flags = FLAG_SIGNED if secret is not None else 0
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, kind, flags, len(header)) + header
    body += b"".join(payload)
    if secret is not None:
        body += hmac.new(secret, body, hashlib.sha256).digest()
    return body + _CRC.pack(zlib.crc32(body))


SecretLookup = Callable[[dict[str, Any]], bytes]


def decode_frame(
    data: bytes,
    *,
    secret_for: SecretLookup | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Frame:
    """Parse and verify a frame; any defect raises :class:`FrameError`.

    With ``secret_for`` the frame must be signed: it is called with the frame's ``meta``
    (e.g. to look up the sending agent's secret; it raises its own FrameError for an
    unknown sender) and the HMAC must match. Tensors are only read after that check.
    """
    minimum = _PREFIX.size + _CRC.size
    if len(data) > max_bytes:
        raise FrameError(
            "oversized", f"frame of {len(data)} bytes exceeds the {max_bytes}-byte limit"
        )
    if len(data) < minimum:
        raise FrameError(
            "truncated", f"frame is truncated: {len(data)} bytes, at least {minimum} needed"
        )
    magic, version, kind, flags, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("magic", "not a bitfleet model or frame (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise FrameError(
            "version",
            f"frame format version {version} is not supported (this bitfleet reads "
            f"version {FORMAT_VERSION}); upgrade bitfleet or re-export the model",
        )
    if kind not in KINDS:
        raise FrameError("kind", f"unknown frame kind {kind}")
    if flags & ~FLAG_SIGNED:
        raise FrameError("flags", f"unsupported frame flags {flags:#x}")
    signed = bool(flags & FLAG_SIGNED)
    end = len(data) - _CRC.size - (SIGNATURE_BYTES if signed else 0)
    if header_len > MAX_HEADER_BYTES:
        raise FrameError("oversized", f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    if _PREFIX.size + header_len > end:
        raise FrameError(
            "truncated", f"frame is truncated: its {header_len}-byte header does not fit"
        )
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != stored_crc:
        raise FrameError("checksum", "checksum mismatch: the file is corrupted or truncated")
    header = _parse_header(data[_PREFIX.size : _PREFIX.size + header_len])
    if secret_for is not None:
        if not signed:
            raise FrameError("unsigned", "frame is not signed; sign it with the sender's secret")
        expected = hmac.new(secret_for(header["meta"]), data[:end], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, data[end : end + SIGNATURE_BYTES]):
            raise FrameError("forged", "signature does not match the sender's secret")
    tensors = _read_tensors(header["tensors"], data, _PREFIX.size + header_len, end)
    return Frame(kind, header["meta"], tensors, signed)


def _parse_header(raw: bytes) -> dict[str, Any]:
    """The header as JSON, bounded in depth and number size before and while it is parsed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("header", "frame header is not valid UTF-8 text") from None
    try:
        header = json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
        if "\\u" in text:
            # Escapes may spell lone surrogates, which are not text and break any encode().
            json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError("header", "frame header escapes a lone UTF-16 surrogate") from None
    except (ValueError, RecursionError) as error:
        raise FrameError("header", f"frame header is not valid JSON: {excerpt(error)}") from None
    depth = _nesting_depth(header)
    if depth > MAX_HEADER_DEPTH:
        raise FrameError(
            "header",
            f"frame header nests arrays/objects more than {MAX_HEADER_DEPTH} deep; at most "
            f"{MAX_HEADER_DEPTH} are allowed",
        )
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("meta"), dict)
        or not isinstance(header.get("tensors"), list)
    ):
        raise FrameError("header", "frame header must hold a 'meta' object and a 'tensors' list")
    return header


def _nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed header, walked without recursion.

    Parsing first is linear (json's C scanner refuses what would overflow the stack with
    RecursionError); a scan of the raw text with a regular expression was not: crafted
    strings of quotes made it quadratic, an hour of CPU per MiB before any HMAC check."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_HEADER_DEPTH:  # deeper is refused anyway: stop walking
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise FrameError(
            "header",
            f"frame header holds a {len(digits.lstrip('-'))}-digit integer; at most "
            f"{MAX_INT_DIGITS} digits are allowed",
        )
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not isfinite(value):
        raise FrameError("header", f"frame header number {excerpt(text)} overflows a float")
    return value


def _no_constant(name: str) -> Any:
    raise FrameError("header", f"frame header holds {name}, which is not a finite number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        twice = Counter(key for key, _ in pairs).most_common(1)[0][0]
        raise FrameError("header", f"frame header repeats the key {excerpt(twice)} in one object")
    return result


def excerpt(value: Any) -> str:
    """``repr`` of a hostile value, cut short so an error message stays readable."""
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."


def _read_tensors(entries: list[Any], data: bytes, offset: int, end: int) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for entry in entries:
        name, encoding, shape = _check_entry(entry)
        if name in tensors:
            raise FrameError("header", f"tensor {excerpt(name)} appears twice")
        stored, dtype = _stored_shape(encoding, shape)
        size = prod(stored) * dtype.itemsize
        if offset + size > end:
            raise FrameError(
                "truncated", f"tensor {excerpt(name)} runs past the end of the frame (truncated)"
            )
        array = np.frombuffer(data, dtype=dtype, count=prod(stored), offset=offset).reshape(stored)
        if encoding in PACKED_PLANES and has_padding_bits(array, shape[1]):
            raise FrameError("padding", f"tensor {excerpt(name)} has nonzero padding bits")
        tensors[name] = Tensor(name, encoding, shape, array)
        offset += size
    if offset != end:
        raise FrameError("length", f"{end - offset} unexpected bytes after the last tensor")
    return tensors


def _check_entry(entry: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise FrameError("header", "tensor entry must be an object")
    name, encoding, shape = entry.get("name"), entry.get("encoding"), entry.get("shape")
    if not isinstance(name, str) or not isinstance(encoding, str) or not isinstance(shape, list):
        raise FrameError(
            "header", f"tensor entry {excerpt(entry)} needs a name, an encoding and a shape"
        )
    if not 0 < len(shape) <= MAX_RANK:
        raise FrameError(
            "shape", f"tensor {excerpt(name)} has rank {len(shape)}; 1 to {MAX_RANK} are allowed"
        )
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in shape):
        raise FrameError(
            "shape",
            f"tensor {excerpt(name)} has an invalid shape {excerpt(shape)}: every dimension "
            f"must be an integer from 1 to {MAX_DIM}",
        )
    if prod(shape) > MAX_ELEMENTS:
        raise FrameError(
            "shape", f"tensor {excerpt(name)} shape {shape} exceeds {MAX_ELEMENTS} elements"
        )
    return name, encoding, tuple(shape)
