"""Chunking of large frames for transports with a maximum message size (MQTT brokers).

A frame no larger than the limit travels as it is. A larger one is split into chunks, each
with a 36-byte header::

    0   magic b"BFCH"      4  u8 version (1)     5  u8 reserved (0)   6  u16 reserved (0)
    8   16-byte transfer id (random)             24 u32 chunk index   28 u32 chunk count
    32  u32 CRC32 of the whole frame             36 chunk data

Every chunk but the last carries the same number of bytes (at least 1), the last at most as
many, as :func:`split_frame` makes them.

:class:`Reassembler` rebuilds frames from chunks arriving in any order, interleaved across
senders, and treats every chunk as hostile. ``feed`` raises nothing but
:class:`FrameError`, and nothing partial is ever returned. A whole frame (no chunk
header) is returned as it is if it fits ``max_frame_bytes``. The bounds (defaults: 4
transfers per sender, 64 in all, ``BUFFER_FRAMES`` = 4 frames of buffer, 300 s):

* **Per chunk.** Empty data, nonzero reserved fields, an index outside the count, a count
  that could never fit ``max_frame_bytes`` (each chunk holds at least one byte), or a chunk
  whose size does not fit its transfer (not the same as its siblings, a last chunk bigger
  than them) is ``FrameError("chunk")``; a transfer whose chunks already imply a frame over
  ``max_frame_bytes`` is ``"oversized"`` on its first such chunk, not after buffering it.
* **Per sender** (``source``: one agent id). At most ``max_transfers_per_source``
  transfers in flight; a sender over it gets ``"busy"`` for its new transfer, and no one
  else notices.
* **Global.** At most ``max_transfers`` transfers and ``max_buffered_bytes`` of accounted
  memory, where each stored chunk costs ``CHUNK_OVERHEAD_BYTES`` plus its data (what
  CPython spends on the bytes object, dict slot and key), so a flood of tiny chunks is paid
  for. A transfer that could not fit the buffer even alone is refused (``"chunk"``) before
  it can push anyone out.
* **Time.** A transfer incomplete after ``ttl_seconds`` is dropped (``"expired"``).

When a global bound is hit, **the sender holding the most** (buffered bytes, or
transfers when slots run out) **loses its oldest transfer**, repeatedly, until the chunk
fits; if that sender is the one whose chunk is arriving (ties count against it) and the
oldest transfer is the one the chunk belongs to, the chunk is refused (``"busy"``)
instead. Refusing every new transfer would let one flooder lock everyone out for the whole
TTL, and evicting the globally oldest would let it kill honest uploads in progress; this
way the flooder pays, and an honest upload survives as long as someone else holds more
(against a single flooder: any upload smaller than half the buffer).

A transfer that was held and then completed, failed, expired or was evicted is remembered
(the last ``REMEMBERED_TRANSFERS``, for ``ttl_seconds``): a late duplicate of a delivered
transfer is ignored (MQTT QoS 1 redelivers), and any later chunk of a failed one gets the
same refusal instead of starting a transfer that can never complete. A chunk refused
before its transfer was held leaves no trace.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from bitfleet.errors import ConfigError
from bitfleet.frames import DEFAULT_MAX_FRAME_BYTES, MAGIC, FrameError

CHUNK_MAGIC = b"BFCH"
CHUNK_VERSION = 1
DEFAULT_CHUNK_BYTES = 256 * 1024
# Accounted memory per stored chunk beyond its data (measured: ~120 bytes in CPython 3.x).
CHUNK_OVERHEAD_BYTES = 128
# Default global buffer, in frames of max_frame_bytes: one flooder with a full frame in
# flight still leaves honest frames room.
BUFFER_FRAMES = 4
# Ended transfers remembered, so late chunks of them are answered without buffering.
REMEMBERED_TRANSFERS = 1024
_HEADER = struct.Struct("<4sBBH16sIII")

Key = tuple[str, bytes]


def split_frame(frame: bytes, max_message_bytes: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """The messages that carry ``frame``: itself if it fits, else numbered chunks."""
    if max_message_bytes <= _HEADER.size:
        raise ValueError(f"max message size must exceed {_HEADER.size} bytes")
    if len(frame) <= max_message_bytes:
        return [frame]
    room = max_message_bytes - _HEADER.size
    count = -(-len(frame) // room)
    transfer = os.urandom(16)
    crc = zlib.crc32(frame)
    return [
        _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, 0, 0, transfer, index, count, crc)
        + frame[index * room : (index + 1) * room]
        for index in range(count)
    ]


@dataclass(frozen=True)
class _Chunk:
    transfer: bytes
    index: int
    count: int
    crc: int
    data: bytes

    @property
    def final(self) -> bool:
        return self.index == self.count - 1

    @property
    def cost(self) -> int:
        return CHUNK_OVERHEAD_BYTES + len(self.data)


def _parse_chunk(message: bytes) -> _Chunk:
    if len(message) < _HEADER.size:
        raise FrameError("truncated", "chunk header is truncated")
    _, version, reserved, reserved16, transfer, index, count, crc = _HEADER.unpack_from(message)
    if version != CHUNK_VERSION:
        raise FrameError("version", f"chunk format version {version} is not supported")
    if reserved or reserved16:
        raise FrameError("chunk", "chunk header has nonzero reserved fields")
    if count == 0 or index >= count:
        raise FrameError("chunk", f"chunk index {index} is outside a {count}-chunk transfer")
    if len(message) == _HEADER.size:
        raise FrameError("chunk", f"chunk {index} of {count} is empty; every chunk carries data")
    return _Chunk(transfer, index, count, crc, message[_HEADER.size :])


@dataclass
class _Transfer:
    count: int
    crc: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    room: int = 0  # bytes in every chunk but the last, once one of them has arrived
    last: int = 0  # bytes in the last chunk, once it has arrived
    cost: int = 0  # accounted memory: data plus CHUNK_OVERHEAD_BYTES per stored chunk


@dataclass
class Reassembler:
    """Collects chunks per (source, transfer id) and returns each frame once complete.

    ``max_buffered_bytes`` defaults to ``BUFFER_FRAMES * max_frame_bytes``.
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_transfers: int = 64
    max_transfers_per_source: int = 4
    max_buffered_bytes: int | None = None
    ttl_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _buffer_limit: int = field(init=False, default=0)
    _buffered: int = field(init=False, default=0)
    # Both dicts are in arrival order, so their first entries are the oldest.
    _transfers: dict[Key, _Transfer] = field(init=False, default_factory=dict)
    _finished: dict[Key, tuple[float, str | None]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        limits = (self.max_frame_bytes, self.max_transfers, self.max_transfers_per_source)
        if min(limits) < 1 or (self.max_buffered_bytes is not None and self.max_buffered_bytes < 1):
            raise ConfigError(
                f"reassembly limits must be positive, got frame bytes {self.max_frame_bytes}, "
                f"transfers {self.max_transfers} ({self.max_transfers_per_source} per sender), "
                f"buffered bytes {self.max_buffered_bytes}"
            )
        self._buffer_limit = (
            BUFFER_FRAMES * self.max_frame_bytes
            if self.max_buffered_bytes is None
            else self.max_buffered_bytes
        )

    def feed(self, message: bytes, source: str = "") -> bytes | None:
        """A whole frame, the frame a chunk completes, or None while chunks are missing."""
        if message[:4] == MAGIC:
            if len(message) > self.max_frame_bytes:
                raise FrameError(
                    "oversized", f"frame of {len(message)} bytes exceeds {self.max_frame_bytes}"
                )
            return message
        if message[:4] != CHUNK_MAGIC:
            raise FrameError("magic", "message is neither a bitfleet frame nor a chunk")
        chunk = _parse_chunk(message)
        if chunk.count > self.max_frame_bytes:
            raise FrameError(
                "chunk",
                f"a {chunk.count}-chunk transfer can never fit a {self.max_frame_bytes}-byte frame",
            )
        now = self.clock()
        self._expire(now)
        key = (source, chunk.transfer)
        if key in self._finished:
            reason = self._finished[key][1]
            if reason is None:
                return None  # a late duplicate of a transfer already delivered
            raise FrameError(reason, f"this transfer was already refused ({reason}); send anew")
        try:
            return self._add(key, chunk, now)
        except FrameError as error:
            if key in self._transfers:
                self._finish(key, now, error.reason)
            raise

    @property
    def pending(self) -> int:
        """Transfers in flight."""
        return len(self._transfers)

    @property
    def buffered_bytes(self) -> int:
        """Accounted memory of the chunks held (at most ``max_buffered_bytes``)."""
        return self._buffered

    def _add(self, key: Key, chunk: _Chunk, now: float) -> bytes | None:
        transfer = self._transfers.get(key)
        if transfer is None:
            held = sum(1 for source, _ in self._transfers if source == key[0])
            if held >= self.max_transfers_per_source:
                raise FrameError(
                    "busy",
                    f"sender already has {held} incomplete transfers; finish one or retry later",
                )
            transfer = _Transfer(chunk.count, chunk.crc, now)
        self._check(transfer, chunk)
        if chunk.index in transfer.parts:
            return None
        self._make_room(key, chunk.cost, key not in self._transfers, now)
        self._transfers[key] = transfer
        transfer.parts[chunk.index] = chunk.data
        transfer.cost += chunk.cost
        self._buffered += chunk.cost
        if len(transfer.parts) < transfer.count:
            return None
        frame = b"".join(transfer.parts[i] for i in range(transfer.count))
        if zlib.crc32(frame) != transfer.crc:
            raise FrameError("checksum", "reassembled frame does not match its checksum")
        self._finish(key, now, None)
        return frame

    def _check(self, transfer: _Transfer, chunk: _Chunk) -> None:
        """The chunk fits its transfer, and the frame they imply fits every bound."""
        if (transfer.count, transfer.crc) != (chunk.count, chunk.crc):
            raise FrameError("chunk", "chunks of one transfer disagree on its size or checksum")
        size = len(chunk.data)
        room = transfer.room if chunk.final else size
        last = size if chunk.final else transfer.last
        if (not chunk.final and transfer.room not in (0, size)) or (room and last > room):
            raise FrameError(
                "chunk",
                "chunk sizes do not fit one frame: every chunk but the last must carry the "
                "same number of bytes and the last no more (split frames with split_frame)",
            )
        least = (chunk.count - 1) * (room or last) + (last or 1)
        if least > self.max_frame_bytes:
            raise FrameError(
                "oversized",
                f"chunked frame of at least {least} bytes exceeds {self.max_frame_bytes}",
            )
        if least + chunk.count * CHUNK_OVERHEAD_BYTES > self._buffer_limit:
            raise FrameError(
                "chunk",
                f"{chunk.count} chunks would need more than the {self._buffer_limit}-byte "
                "reassembly buffer; send larger chunks",
            )
        transfer.room, transfer.last = room, last

    def _make_room(self, key: Key, cost: int, new: bool, now: float) -> None:
        """Evict until ``cost`` more bytes (and a slot, for a ``new`` transfer) fit."""
        while True:
            short_of_bytes = self._buffered + cost > self._buffer_limit
            if not short_of_bytes and not (new and len(self._transfers) >= self.max_transfers):
                return
            victim = self._victim(key, cost, new, by_bytes=short_of_bytes)
            if victim == key:
                raise FrameError(
                    "busy",
                    "reassembly buffer is full and this sender holds the most; retry later",
                )
            self._finish(victim, now, "busy")

    def _victim(self, key: Key, cost: int, new: bool, by_bytes: bool) -> Key:
        """The oldest transfer of the sender holding the most, counting the arriving chunk."""
        held = {key[0]: [cost, int(new)]}  # first, so that a tie goes against the newcomer
        oldest: dict[str, Key] = {}
        for other, transfer in self._transfers.items():
            totals = held.setdefault(other[0], [0, 0])
            totals[0] += transfer.cost
            totals[1] += 1
            oldest.setdefault(other[0], other)
        oldest.setdefault(key[0], key)
        return oldest[max(held, key=lambda s: held[s] if by_bytes else held[s][::-1])]

    def _finish(self, key: Key, now: float, reason: str | None) -> None:
        """Drop a transfer and remember how it ended (None: delivered)."""
        self._buffered -= self._transfers.pop(key).cost
        self._finished[key] = (now, reason)
        if len(self._finished) > REMEMBERED_TRANSFERS:
            del self._finished[next(iter(self._finished))]

    def _expire(self, now: float) -> None:
        deadline = now - self.ttl_seconds
        while self._transfers and next(iter(self._transfers.values())).started < deadline:
            self._finish(next(iter(self._transfers)), now, "expired")
        while self._finished and next(iter(self._finished.values()))[0] < deadline:
            del self._finished[next(iter(self._finished))]
