"""A round's model sealed once for every agent selected for it.

The coordinator publishes a round's model once, on a topic every agent may read, instead
of one copy per agent on topics only that agent may read: at a thousand agents that was a
thousand copies (109 MB a round) through the coordinator's TLS link and the broker's
retained store. The copy is sealed with a fresh random key that only the selected agents
get, in their tasks, on their own topics, so an agent still learns nothing of a round it
was not selected for.

The cipher is a SHAKE-256 keystream XORed onto the model (SHAKE-256 is an extendable-output
function: keyed, its output is a keystream; a key is used for one model only, so there is
no nonce to manage). The task also carries the SHA-256 of the sealed bytes, which the agent
checks before anything else: the model it opens is the one the coordinator sealed. Both are
in Python's standard library, so boards need no cryptography package (PyPI has no wheels for
32-bit ARM).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import numpy as np

from bitfleet.frames import FrameError

KEY_BYTES = 32
_DOMAIN = b"bitfleet round model seal v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SealedModel:
    """A model's sealed bytes, the key that opens them and their SHA-256 (both hex)."""

    sealed: bytes
    key: str
    sha256: str

    def slices(self, max_message_bytes: int) -> list[bytes]:
        """The sealed bytes in messages of at most ``max_message_bytes`` (one if it fits)."""
        size = max(1, max_message_bytes)
        return [self.sealed[i : i + size] for i in range(0, len(self.sealed), size)] or [b""]


def is_hex_key(value: str) -> bool:
    """Whether ``value`` is a 32-byte key or digest written as 64 lowercase hex digits."""
    return _HEX64.fullmatch(value) is not None


def seal(model: bytes) -> SealedModel:
    """Seal ``model`` under a fresh random key."""
    key = secrets.token_bytes(KEY_BYTES)
    sealed = _xor_keystream(model, key)
    return SealedModel(sealed, key.hex(), hashlib.sha256(sealed).hexdigest())


def unseal(sealed: bytes, key: str, sha256: str) -> bytes:
    """The model inside ``sealed``; FrameError("sealed") if the bytes are not the ones the
    task names, or the task's key or digest is malformed."""
    if not (is_hex_key(key) and is_hex_key(sha256)):
        raise FrameError("sealed", "the task's model key or digest is not 64 hex digits")
    if not hmac.compare_digest(hashlib.sha256(sealed).hexdigest(), sha256):
        raise FrameError("sealed", "the model's bytes do not match the digest in the task")
    return _xor_keystream(sealed, bytes.fromhex(key))


def _xor_keystream(data: bytes, key: bytes) -> bytes:
    stream = hashlib.shake_256(_DOMAIN + key).digest(len(data))
    return np.bitwise_xor(np.frombuffer(data, np.uint8), np.frombuffer(stream, np.uint8)).tobytes()
