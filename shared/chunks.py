"""Chunking of large frames for transports with a maximum message size (MQTT brokers).

A frame no larger than the limit travels as it is. A larger one is split into chunks, each
with a 36-byte header::

    0   magic b"BFCH"      4  u8 version (1)     5  u8 reserved (0)   6  u16 reserved (0)
    8   16-byte transfer id (random)             24 u32 chunk index   28 u32 chunk count
    32  u32 CRC32 of the whole frame             36 chunk data

:class:`Reassembler` rebuilds frames from chunks arriving in any order, with bounded memory:
a limit on the frame size, on transfers in flight and on how long a transfer may stay
incomplete. A malformed chunk raises :class:`FrameError`; nothing partial is returned.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.frames import DEFAULT_MAX_FRAME_BYTES, MAGIC, FrameError

CHUNK_MAGIC = b"BFCH"
CHUNK_VERSION = 1
DEFAULT_CHUNK_BYTES = 256 * 1024
_HEADER = struct.Struct("<4sBBH16sIII")


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


@dataclass
class _Transfer:
    count: int
    crc: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass
class Reassembler:
    """Collects chunks per (source, transfer id) and returns each frame once complete."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_transfers: int = 64
    ttl_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _transfers: dict[tuple[str, bytes], _Transfer] = field(default_factory=dict)

    def feed(self, message: bytes, source: str = "") -> bytes | None:
        """A whole frame, the frame a chunk completes, or None while chunks are missing."""
        if message[:4] == MAGIC:
            return message
        if message[:4] != CHUNK_MAGIC:
            raise FrameError("magic", "message is neither a bitfleet frame nor a chunk")
        if len(message) < _HEADER.size:
            raise FrameError("truncated", "chunk header is truncated")
        _, version, _, _, transfer_id, index, count, crc = _HEADER.unpack_from(message)
        if version != CHUNK_VERSION:
            raise FrameError("version", f"chunk format version {version} is not supported")
        if count == 0 or index >= count:
            raise FrameError("chunk", f"chunk index {index} is outside a {count}-chunk transfer")
        self._expire()
        key = (source, transfer_id)
        transfer = self._transfers.get(key)
        if transfer is None:
            if len(self._transfers) >= self.max_transfers:
                raise FrameError("busy", "too many incomplete transfers; retry later")
            transfer = self._transfers[key] = _Transfer(count, crc, self.clock())
        if (transfer.count, transfer.crc) != (count, crc):
            del self._transfers[key]
            raise FrameError("chunk", "chunks of one transfer disagree on its size or checksum")
        data = message[_HEADER.size :]
        if index not in transfer.parts:
            transfer.parts[index] = data
            transfer.size += len(data)
        if transfer.size > self.max_frame_bytes:
            del self._transfers[key]
            raise FrameError("oversized", f"chunked frame exceeds {self.max_frame_bytes} bytes")
        if len(transfer.parts) < count:
            return None
        del self._transfers[key]
        frame = b"".join(transfer.parts[i] for i in range(count))
        if zlib.crc32(frame) != crc:
            raise FrameError("checksum", "reassembled frame does not match its checksum")
        return frame

    @property
    def pending(self) -> int:
        return len(self._transfers)

    def _expire(self) -> None:
        deadline = self.clock() - self.ttl_seconds
        for key in [k for k, t in self._transfers.items() if t.started < deadline]:
            del self._transfers[key]
