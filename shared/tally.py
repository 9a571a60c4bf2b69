"""Vote tallies: weighted per-weight majority over packed payloads, one payload at a time.

A round's tally never holds the payloads, only their vote counts, kept *bit-sliced*
(vertical): each counter of a layer is a stack of uint64 bit-planes laid out like one
payload plane, and the count of lane ``i`` is ``sum_j 2**j * bit_i(plane_j)``. A word
operation updates 64 counters at once, and N votes cost ``log2(N)`` bits per weight.

Adding keeps the stack in *carry-save* form (see :func:`bitfleet.kernels.carry_save_add`):
level ``j`` holds an ``acc`` plane and, while bit ``j`` of the weight fed so far is set, a
pending ``pend`` plane. A vote of weight ``w`` feeds the payload once per set bit of ``w``;
each feed touches two levels on average, where a ripple-carry add sweeps every plane (at
1M weights that ripple measured slower than the naive unpack-and-sum it replaces). The
pending planes are rippled in (:meth:`LayerTally._normalize`) only to decode, merge or
serialize. Votes are decided on the planes themselves (bit-sliced comparisons), so the
voted tensor comes out packed; integer counts are decoded only on demand (``counts()``).

Vote rules (``W`` = total weight; ties keep the previous global value):

- binary: weighted ones ``N1``; +1 if ``2*N1 > W``, -1 if ``2*N1 < W``.
- ternary, including the sign-of-change planes of forward-gradient jobs: weighted
  positives ``P`` and weighted nonzeros ``Z`` give votes +1: ``P``, -1: ``Z - P``,
  0: ``W - Z``; the strict maximum wins, any tie for the maximum keeps the previous value.

Tallies are additive (:meth:`LayerTally.merge`) and travel between coordinator workers as
bytes (:meth:`LayerTally.to_bytes`). They are not thread-safe: one tally per thread, then
merge. Every defect in a payload, a previous model or a blob raises :class:`TallyError`
before anything is written.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.bitpack import (
    has_padding_bits,
    pack_binary,
    pack_ternary,
    unpack_binary,
    unpack_bits,
    unpack_ternary,
    words_for,
)
from bitfleet.errors import BitfleetError
from bitfleet.frames import MAX_DIM, MAX_ELEMENTS, PACKED_PLANES, Tensor
from bitfleet.options import is_whole

# Counts are decoded to int64: the total weight (the largest possible count) stays below.
MAX_TOTAL_WEIGHT = (1 << 62) - 1

TALLY_FORMAT_VERSION = 1
LAYER_MAGIC = b"BFTL"
MODEL_MAGIC = b"BFTM"
_ENCODING_CODES = {"binary": 1, "ternary": 2}
_CODE_ENCODINGS = {code: encoding for encoding, code in _ENCODING_CODES.items()}

# Blob layouts (little-endian): prefix, then records, then the CRC32 of all before it.
_PREFIX = struct.Struct("<4sB3x")  # magic, format version
_RECORD = struct.Struct("<B3xIIQ")  # encoding code, rows, columns, total weight; then planes
_COUNT = struct.Struct("<I")  # layers in a model tally
_NAME = struct.Struct("<H")  # UTF-8 name length, then the name
_MAX_NAME_BYTES = (1 << 16) - 1
_CRC = struct.Struct("<I")

# Bit-planes broadcast against a row of lanes: a constant is a list of these.
_ZERO = np.zeros(1, dtype=np.uint64)
_ONES = ~_ZERO
_ZERO.flags.writeable = False
_ONES.flags.writeable = False

Result = TypeVar("Result")

# Fixed-point weight dtypes a voted step applies to (int64 arithmetic cannot overflow).


class TallyError(BitfleetError):
    """A payload, previous model, merge or serialized tally that does not fit the tally."""


class LayerTally:
    """Weighted vote counts for one packed tensor of logical shape ``(rows, columns)``.

    A binary tally keeps one counter (weighted ones); a ternary one keeps two (weighted
    positives, weighted nonzeros). Memory: two planes per counter for every bit of the
    total weight, i.e. ``2 * counters * bit_length(W) * rows * words * 8`` bytes
    (2.5 MB for 1M binary weights and 1,000 unweighted votes).
    """

    def __init__(self, encoding: str, rows: int, columns: int) -> None:
        _check_spec(encoding, rows, columns)
        self.encoding = encoding
        self.shape = (int(rows), int(columns))
        self._words = words_for(self.shape[1])
        counters = PACKED_PLANES[encoding]
        self._acc = np.zeros((counters, 0, self.shape[0] * self._words), dtype=np.uint64)
        self._pend = np.zeros_like(self._acc)
        self._total = 0
        self._fed = 0  # weight fed since the last normalize: bit j set = level j pending

    @property
    def total_weight(self) -> int:
        """Sum of the weights of every vote counted (0 for an empty tally)."""
        return self._total

    @property
    def nbytes(self) -> int:
        """Memory held by the counters; it grows by one level each time W doubles."""
        return int(self._acc.nbytes + self._pend.nbytes)

    def add(self, planes: NDArray[np.uint64], weight: int = 1) -> None:
        """Count one payload: packed ``(planes, rows, words)`` uint64, as in a Tensor."""
        weight = _checked_weight(weight, self._total)
        self._feed(self._inputs(planes), weight)

    def merge(self, other: LayerTally) -> None:
        """Add the votes of ``other`` (a tally of the same tensor) to this one."""
        if not isinstance(other, LayerTally):
            raise TallyError(f"can only merge a LayerTally, got {type(other).__name__}")
        if (other.encoding, other.shape) != (self.encoding, self.shape):
            raise TallyError(
                f"cannot merge a {other.encoding} {other.shape} tally into a "
                f"{self.encoding} {self.shape} one: they count different tensors"
            )
        total = _checked_total(self._total + other._total)
        acc, pend, fed = other._acc, other._pend, other._fed
        if other is self:  # the kernel must not read the planes it is writing
            acc, pend = acc.copy(), pend.copy()
        self._reserve(total.bit_length())
        for counter in range(acc.shape[0]):
            target = self._acc[counter]
            for level in range(acc.shape[1]):
                kernels.bitsliced_add(target, acc[counter, level], level)
            for level in _set_bits(fed):
                kernels.bitsliced_add(target, pend[counter, level], level)
        self._total = total

    def counts(self) -> NDArray[np.int64]:
        """Weighted votes ``(3, rows, columns)`` for -1, 0 and +1 (index = value + 1).

        Binary payloads never vote 0. Each column sums to :attr:`total_weight`.
        """
        self._normalize()
        decoded = [self._decode(counter) for counter in range(self._acc.shape[0])]
        if self.encoding == "binary":
            (ones,) = decoded
            return np.stack([self._total - ones, np.zeros_like(ones), ones])
        positive, nonzero = decoded
        return np.stack([nonzero - positive, self._total - nonzero, positive])

    def result(self, previous: NDArray[np.integer]) -> NDArray[np.int8]:
        """The voted tensor as int8 ``(rows, columns)``; ties keep ``previous``'s value."""
        voted = self.result_planes(self._pack(previous))
        if self.encoding == "binary":
            return unpack_binary(voted[0], self.shape[1])
        return unpack_ternary(voted[0], voted[1], self.shape[1])

    def result_planes(self, previous: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """The voted tensor packed like a payload (a global model's Tensor data).

        ``previous`` is the last global tensor in the same packing; ties keep its value.
        """
        prior = self._inputs(previous)
        self._normalize()
        counted = [list(stack) for stack in self._acc]
        if self.encoding == "binary":
            (ones,) = counted
            above, below = _compare([_ZERO, *ones], _constant(self._total))  # 2*N1 vs W
            voted = [above | (~(above | below) & prior[0])]
        else:
            positive, nonzero = counted
            voted = _ternary_vote(positive, nonzero, self._total, prior[0], prior[1])
        return np.stack(voted).reshape(len(voted), self.shape[0], self._words)

    def step_vote(self) -> NDArray[np.int8]:
        """The voted sign of change (+1, -1, 0) of a forward-gradient job's ternary planes.

        A tie makes no step (0), which is what
        :func:`bitfleet.algorithms.forward.apply_voted_step` expects.
        """
        if self.encoding != "ternary":
            raise TallyError("step votes count ternary sign-of-change planes, not binary ones")
        return self.result(np.zeros(self.shape, dtype=np.int8))

    def to_bytes(self) -> bytes:
        """A self-checking blob (shape, encoding, total weight, planes) for :meth:`from_bytes`."""
        return _seal(LAYER_MAGIC, self._record())

    @classmethod
    def from_bytes(cls, blob: bytes) -> LayerTally:
        """Rebuild a tally from :meth:`to_bytes`; any defect raises :class:`TallyError`."""
        reader = _open(blob, LAYER_MAGIC, "layer tally")
        tally = _read_record(reader)
        reader.finish()
        return tally

    def _inputs(self, planes: Any) -> list[NDArray[np.uint64]]:
        """The lane bit-vectors each counter counts, once ``planes`` is checked to fit.

        A ternary ``positive`` bit where ``nonzero`` is clear reads as 0, as in
        :func:`bitfleet.bitpack.unpack_ternary`.
        """
        rows, columns = self.shape
        counters = self._acc.shape[0]
        if not isinstance(planes, np.ndarray) or planes.dtype != np.uint64:
            kind = planes.dtype if isinstance(planes, np.ndarray) else type(planes).__name__
            raise TallyError(f"packed planes must be a uint64 array, got {kind}")
        if planes.ndim != 3 or planes.shape[0] != counters:
            raise TallyError(
                f"a {self.encoding} tensor has {counters} bit-plane(s) of shape "
                f"({rows}, {self._words}); got an array of shape {planes.shape}"
            )
        if planes.shape[1:] != (rows, self._words):
            raise TallyError(
                f"planes of shape {planes.shape[1:]} do not fit a ({rows}, {columns}) tensor, "
                f"which packs to ({rows}, {self._words}) words"
            )
        if has_padding_bits(planes, columns):
            raise TallyError(f"packed planes have nonzero padding bits beyond column {columns}")
        flat = planes.reshape(counters, -1)
        if counters == 1:
            return [np.ascontiguousarray(flat[0])]
        positive, nonzero = flat
        return [positive & nonzero, np.ascontiguousarray(nonzero)]

    def _feed(self, inputs: list[NDArray[np.uint64]], weight: int) -> None:
        """Count checked inputs with a checked weight (nothing here can fail half-way)."""
        feeds = _feed_schedule(self._fed, weight)
        self._reserve((self._total + weight).bit_length())
        for counter, x in enumerate(inputs):
            kernels.carry_save_add(self._acc[counter], self._pend[counter], x, feeds)
        self._fed += weight
        self._total += weight

    def _reserve(self, levels: int) -> None:
        """Grow the stacks to ``levels`` planes: ``bit_length(W)`` holds any count."""
        have = self._acc.shape[1]
        if levels <= have:
            return
        counters, _, lanes = self._acc.shape
        acc, pend = (np.zeros((counters, levels, lanes), dtype=np.uint64) for _ in range(2))
        acc[:, :have] = self._acc
        pend[:, :have] = self._pend
        self._acc, self._pend = acc, pend

    def _normalize(self) -> None:
        """Ripple the pending planes into ``acc``, which then alone holds the counts."""
        for level in _set_bits(self._fed):
            for counter in range(self._acc.shape[0]):
                kernels.bitsliced_add(self._acc[counter], self._pend[counter, level], level)
        self._fed = 0

    def _decode(self, counter: int) -> NDArray[np.int64]:
        rows, columns = self.shape
        out = np.zeros(self.shape, dtype=np.int64)
        for level, plane in enumerate(self._acc[counter]):
            bits = unpack_bits(plane.reshape(rows, self._words), columns)
            out += bits.astype(np.int64) << level
        return out

    def _pack(self, previous: Any) -> NDArray[np.uint64]:
        """Check an int8-style previous tensor and pack it like a payload."""
        if not isinstance(previous, np.ndarray) or not np.issubdtype(previous.dtype, np.integer):
            raise TallyError("the previous tensor must be an integer array of -1/0/+1 values")
        if previous.shape != self.shape:
            raise TallyError(
                f"the previous tensor has shape {previous.shape}, the tally {self.shape}"
            )
        if self.encoding == "binary":
            if not np.all((previous == 1) | (previous == -1)):
                raise TallyError("a previous binary tensor may only hold -1 and +1")
            return pack_binary(previous)[None]
        if not np.all(np.abs(previous) <= 1):
            raise TallyError("a previous ternary tensor may only hold -1, 0 and +1")
        return np.stack(pack_ternary(previous))

    def _record(self) -> bytes:
        self._normalize()
        levels = self._total.bit_length()
        code = _ENCODING_CODES[self.encoding]
        header = _RECORD.pack(code, self.shape[0], self.shape[1], self._total)
        return header + np.ascontiguousarray(self._acc[:, :levels], dtype="<u8").tobytes()

    def _check_planes(self) -> None:
        """A deserialized tally must be one a tally could reach: zero padding, and
        positives <= nonzeros <= W (binary: ones <= W)."""
        planes = self._acc.reshape(-1, self.shape[0], self._words)
        if has_padding_bits(planes, self.shape[1]):
            raise TallyError("tally planes have nonzero padding bits")
        counted = [list(stack) for stack in self._acc]
        limits = [*counted[1:], _constant(self._total)]
        names = ["positive", "nonzero"] if self.encoding == "ternary" else ["one"]
        for name, count, limit in zip(names, counted, limits, strict=True):
            if _compare(count, limit)[0].any():
                bound = "the total weight" if limit is limits[-1] else "its nonzero votes"
                raise TallyError(f"tally counts more {name} votes than {bound}")


class ModelTally:
    """One :class:`LayerTally` per packed tensor of a model: a round's whole vote.

    It takes over the layer tallies it is given: count through the model tally only, so
    every layer keeps the same total weight.
    """

    def __init__(self, layers: Mapping[str, LayerTally]) -> None:
        if not layers:
            raise TallyError("a model tally needs at least one packed tensor")
        for name, layer in layers.items():
            if not isinstance(name, str) or len(name.encode("utf-8")) > _MAX_NAME_BYTES:
                raise TallyError(f"tensor names are strings of at most {_MAX_NAME_BYTES} bytes")
            if not isinstance(layer, LayerTally):
                raise TallyError(f"tensor {name!r}: a model tally is built from LayerTally objects")
        if len({layer.total_weight for layer in layers.values()}) != 1:
            raise TallyError("the layer tallies hold different total weights")
        self._layers = dict(layers)

    @classmethod
    def for_tensors(cls, specs: Mapping[str, tuple[str, int, int]]) -> ModelTally:
        """An empty tally for ``{name: (encoding, rows, columns)}`` packed tensors."""
        layers = {}
        for name, spec in specs.items():
            with _about(name):
                if not isinstance(spec, tuple) or len(spec) != 3:
                    raise TallyError(f"spec must be (encoding, rows, columns), got {spec!r}")
                layers[name] = LayerTally(*spec)
        return cls(layers)

    @property
    def layers(self) -> Mapping[str, LayerTally]:
        """The per-tensor tallies (read-only view)."""
        return MappingProxyType(self._layers)

    @property
    def total_weight(self) -> int:
        """Sum of the weights of every payload counted."""
        return next(iter(self._layers.values())).total_weight

    @property
    def nbytes(self) -> int:
        """Memory held by all the counters."""
        return sum(layer.nbytes for layer in self._layers.values())

    def add_frame_tensors(self, tensors: Mapping[str, Tensor], weight: int = 1) -> None:
        """Count one agent's payload: every tensor is checked before any is counted."""
        weight = _checked_weight(weight, self.total_weight)
        self._check_names(tensors, "the payload")
        inputs = {}
        for name, layer in self._layers.items():
            tensor = tensors[name]
            with _about(name):
                if (tensor.encoding, tuple(tensor.shape)) != (layer.encoding, layer.shape):
                    raise TallyError(
                        f"got a {tensor.encoding} {tuple(tensor.shape)} tensor; this tally "
                        f"counts {layer.encoding} {layer.shape}"
                    )
                inputs[name] = layer._inputs(tensor.data)
        for name, layer in self._layers.items():
            layer._feed(inputs[name], weight)

    def merge(self, other: ModelTally) -> None:
        """Add the votes of another tally of the same tensors (e.g. another worker's)."""
        if not isinstance(other, ModelTally):
            raise TallyError(f"can only merge a ModelTally, got {type(other).__name__}")
        if self._specs() != other._specs():
            raise TallyError("cannot merge tallies of different tensors (names or shapes)")
        _checked_total(self.total_weight + other.total_weight)
        for name, layer in self._layers.items():
            layer.merge(other._layers[name])

    def result(self, previous: Mapping[str, NDArray[np.integer]]) -> dict[str, NDArray[np.int8]]:
        """Voted int8 tensors; ties keep the value in ``previous`` (same names)."""
        return self._per_layer(previous, LayerTally.result)

    def result_planes(
        self, previous: Mapping[str, NDArray[np.uint64]]
    ) -> dict[str, NDArray[np.uint64]]:
        """Voted tensors packed like payloads; ties keep the packed ``previous`` value."""
        return self._per_layer(previous, LayerTally.result_planes)

    def step_votes(self) -> dict[str, NDArray[np.int8]]:
        """Voted signs of change of a forward-gradient job (0 where the vote ties)."""
        votes = {}
        for name, layer in self._layers.items():
            with _about(name):
                votes[name] = layer.step_vote()
        return votes

    def to_bytes(self) -> bytes:
        """A self-checking blob of every layer tally, for :meth:`from_bytes`."""
        parts = [_COUNT.pack(len(self._layers))]
        for name, layer in self._layers.items():
            encoded = name.encode("utf-8")
            parts += [_NAME.pack(len(encoded)), encoded, layer._record()]
        return _seal(MODEL_MAGIC, b"".join(parts))

    @classmethod
    def from_bytes(cls, blob: bytes) -> ModelTally:
        """Rebuild a tally from :meth:`to_bytes`; any defect raises :class:`TallyError`."""
        reader = _open(blob, MODEL_MAGIC, "model tally")
        (count,) = reader.unpack(_COUNT)
        layers: dict[str, LayerTally] = {}
        for _ in range(count):
            (length,) = reader.unpack(_NAME)
            try:
                name = bytes(reader.take(length)).decode("utf-8")
            except UnicodeDecodeError:
                raise TallyError("model tally has a tensor name that is not UTF-8") from None
            if name in layers:
                raise TallyError(f"model tally holds tensor {name!r} twice")
            with _about(name):
                layers[name] = _read_record(reader)
        reader.finish()
        return cls(layers)

    def _specs(self) -> dict[str, tuple[str, tuple[int, int]]]:
        return {name: (layer.encoding, layer.shape) for name, layer in self._layers.items()}

    def _check_names(self, given: Mapping[str, Any], what: str) -> None:
        missing = sorted(set(self._layers) - set(given))
        extra = sorted(set(given) - set(self._layers))
        if missing or extra:
            raise TallyError(
                f"{what} does not hold this tally's tensors: missing {missing}, unexpected {extra}"
            )

    def _per_layer(
        self, previous: Mapping[str, Any], vote: Callable[[LayerTally, Any], Result]
    ) -> dict[str, Result]:
        self._check_names(previous, "the previous model")
        voted = {}
        for name, layer in self._layers.items():
            with _about(name):
                voted[name] = vote(layer, previous[name])
        return voted


def _check_spec(encoding: str, rows: int, columns: int) -> None:
    if encoding not in PACKED_PLANES:
        raise TallyError(
            f"tallies count packed payloads: encoding must be one of "
            f"{', '.join(PACKED_PLANES)}, got {encoding!r}"
        )
    for dim in (rows, columns):
        if not is_whole(dim) or not 0 < dim <= MAX_DIM:
            raise TallyError(f"rows and columns must be integers in 1..{MAX_DIM}, got {dim!r}")
    if rows * columns > MAX_ELEMENTS:
        raise TallyError(f"a {rows}x{columns} tensor exceeds {MAX_ELEMENTS} weights")


def _checked_weight(weight: int, total: int) -> int:
    if not is_whole(weight) or weight < 1:
        raise TallyError(
            f"a vote weight must be a positive integer (e.g. the agent's sample count, "
            f"or 1 for unweighted votes), got {weight!r}"
        )
    weight = int(weight)
    _checked_total(total + weight)
    return weight


def _checked_total(total: int) -> int:
    if total > MAX_TOTAL_WEIGHT:
        raise TallyError(
            f"the total vote weight would exceed {MAX_TOTAL_WEIGHT}; use smaller weights"
        )
    return total


def _set_bits(value: int) -> list[int]:
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def _feed_schedule(fed: int, weight: int) -> NDArray[np.int64]:
    """Kernel feeds ``(level, stop)`` adding ``weight`` votes after ``fed`` (see the kernel).

    The payload goes in at each set bit of ``weight``; its carry cascades through the
    levels pending in ``fed`` and parks at the first free one, exactly as ``fed + 2**level``
    carries in binary.
    """
    feeds = []
    for level in _set_bits(weight):
        stop = level
        while fed >> stop & 1:
            stop += 1
        feeds.append((level, stop))
        fed += 1 << level
    return np.array(feeds, dtype=np.int64).reshape(-1, 2)


# Bit-sliced arithmetic over lists of planes (least significant first), used to decide the
# vote without decoding counts: each step is one numpy operation on a row of lanes.

Planes = list[NDArray[np.uint64]]


def _constant(value: int) -> Planes:
    """``value`` in every lane."""
    return [_ONES if value >> bit & 1 else _ZERO for bit in range(value.bit_length())]


def _plane(x: Planes, bit: int) -> NDArray[np.uint64]:
    return x[bit] if bit < len(x) else _ZERO


def _add(x: Planes, y: Planes) -> Planes:
    """Lane-wise ``x + y`` (a ripple of full adders over the planes)."""
    carry = _ZERO
    out = []
    for bit in range(max(len(x), len(y))):
        a, b = _plane(x, bit), _plane(y, bit)
        half = a ^ b
        out.append(half ^ carry)
        carry = (a & b) | (half & carry)
    return [*out, carry]


def _compare(x: Planes, y: Planes) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Lane masks where ``x > y`` and where ``x < y`` (decided from the top plane down)."""
    above = below = _ZERO
    for bit in reversed(range(max(len(x), len(y)))):
        a, b = _plane(x, bit), _plane(y, bit)
        undecided = ~(above | below)
        above = above | (undecided & a & ~b)
        below = below | (undecided & b & ~a)
    return above, below


def _ternary_vote(
    positive: Planes,
    nonzero: Planes,
    total: int,
    prior_positive: NDArray[np.uint64],
    prior_nonzero: NDArray[np.uint64],
) -> Planes:
    """New (positive, nonzero) planes from votes +1: P, -1: Z - P, 0: W - Z."""
    plus_minus = _compare([_ZERO, *positive], nonzero)  # P vs Z - P  <=>  2P vs Z
    plus_zero = _compare(_add(positive, nonzero), _constant(total))  # P vs W - Z
    minus_zero = _compare([_ZERO, *nonzero], _add(positive, _constant(total)))  # Z-P vs W-Z
    plus = plus_minus[0] & plus_zero[0]
    minus = plus_minus[1] & minus_zero[0]
    zero = plus_zero[1] & minus_zero[1]
    tie = ~(plus | minus | zero)
    return [plus | (tie & prior_positive), plus | minus | (tie & prior_nonzero)]


@contextlib.contextmanager
def _about(name: str) -> Iterator[None]:
    """Prefix a TallyError raised inside with the tensor it concerns."""
    try:
        yield
    except TallyError as error:
        raise TallyError(f"tensor {name!r}: {error}") from None


def _seal(magic: bytes, body: bytes) -> bytes:
    blob = _PREFIX.pack(magic, TALLY_FORMAT_VERSION) + body
    return blob + _CRC.pack(zlib.crc32(blob))


class _Reader:
    """Reads a checked blob front to back; running short is a :class:`TallyError`."""

    def __init__(self, view: memoryview, what: str) -> None:
        self._view = view
        self._offset = 0
        self._what = what

    def take(self, size: int) -> memoryview:
        if self._offset + size > len(self._view):
            raise TallyError(f"{self._what} blob is truncated")
        chunk = self._view[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def finish(self) -> None:
        if self._offset != len(self._view):
            raise TallyError(f"{self._what} blob has {len(self._view) - self._offset} extra bytes")


def _open(blob: object, magic: bytes, what: str) -> _Reader:
    """Check a blob's type, length, checksum, magic and version; read its body."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TallyError(f"a {what} blob must be bytes, got {type(blob).__name__}")
    view = memoryview(blob).cast("B")
    if len(view) < _PREFIX.size + _CRC.size:
        raise TallyError(f"{what} blob is truncated: {len(view)} bytes")
    (stored_crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[: -_CRC.size]) != stored_crc:
        raise TallyError(f"{what} blob is corrupted or truncated (checksum mismatch)")
    found, version = _PREFIX.unpack_from(view)
    if found != magic:
        raise TallyError(f"not a {what} blob (bad magic bytes {bytes(found)!r})")
    if version != TALLY_FORMAT_VERSION:
        raise TallyError(
            f"{what} blob has format version {version}; this bitfleet reads "
            f"{TALLY_FORMAT_VERSION}: run the same bitfleet version on every worker"
        )
    return _Reader(view[_PREFIX.size : -_CRC.size], what)


def _read_record(reader: _Reader) -> LayerTally:
    """One layer record: sizes are derived from the header and checked against the bytes."""
    code, rows, columns, total = reader.unpack(_RECORD)
    if code not in _CODE_ENCODINGS:
        raise TallyError(f"unknown tally encoding code {code}")
    if total > MAX_TOTAL_WEIGHT:
        raise TallyError(f"tally total weight {total} exceeds {MAX_TOTAL_WEIGHT}")
    tally = LayerTally(_CODE_ENCODINGS[code], rows, columns)
    counters, _, lanes = tally._acc.shape
    levels = total.bit_length()
    data = reader.take(counters * levels * lanes * 8)
    planes = np.frombuffer(data, dtype="<u8").reshape(counters, levels, lanes)
    tally._acc = planes.astype(np.uint64)  # a writable native copy
    tally._pend = np.zeros_like(tally._acc)
    tally._total = total
    tally._check_planes()
    return tally
