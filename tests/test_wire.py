"""Signed frames, chunking and the protocol module: every defect is a typed, reasoned error."""

from __future__ import annotations

import numpy as np
import pytest

from bitfleet.chunks import Reassembler, split_frame
from bitfleet.frames import KIND_UPDATE, FrameError, Tensor, decode_frame, encode_frame
from bitfleet.protocol import (
    AgentStatus,
    ProtocolError,
    Task,
    UploadReceipt,
    encode_message,
    parse_message,
    parse_mqtt_url,
    parse_status_topic,
    parse_update_topic,
    round_model_topic,
    update_topic,
)
from bitfleet.sealing import seal, unseal

SECRET = b"agent-secret"
SEALED = seal(b"a round's model" * 1000)


def _frame(size: int = 1000, secret: bytes | None = SECRET) -> bytes:
    data = np.arange(size, dtype=np.int64).astype(np.uint8)
    tensors = [Tensor("t", "uint8", (size,), data)]
    return encode_frame(KIND_UPDATE, {"agent_id": "a1"}, tensors, secret)


def _secret_for(meta: dict) -> bytes:
    if meta.get("agent_id") != "a1":
        raise FrameError("unknown_agent", "who?")
    return SECRET


def test_signed_frame_verifies_with_the_senders_secret() -> None:
    frame = decode_frame(_frame(), secret_for=_secret_for)
    assert frame.signed and frame.tensors["t"].data[5] == 5


@pytest.mark.parametrize(
    "frame, reason",
    [
        (_frame(secret=b"someone-else"), "forged"),
        (_frame(secret=None), "unsigned"),
        (_frame(size=5000), "oversized"),
    ],
)
def test_forged_unsigned_and_oversized_frames_are_refused(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(frame, secret_for=_secret_for, max_bytes=4000)
    assert error.value.reason == reason


def test_an_unknown_sender_is_refused_before_any_tensor_is_read() -> None:
    frame = encode_frame(KIND_UPDATE, {"agent_id": "nobody"}, [], SECRET)
    with pytest.raises(FrameError) as error:
        decode_frame(frame, secret_for=_secret_for)
    assert error.value.reason == "unknown_agent"


def test_small_frames_travel_whole_and_large_ones_in_chunks_in_any_order() -> None:
    small = _frame(100)
    assert split_frame(small, 4096) == [small]
    large = _frame(100_000)
    chunks = split_frame(large, 4096)
    assert len(chunks) > 20 and all(len(c) <= 4096 for c in chunks)
    reassembler = Reassembler()
    order = list(reversed(chunks))
    results = [reassembler.feed(chunk, "agent-a") for chunk in [*order, order[0]]]
    assert results[len(order) - 1] == large
    assert all(r is None for r in results[: len(order) - 1])
    assert results[-1] is None and reassembler.pending == 0  # a late duplicate is ignored


def test_reassembly_is_bounded_and_refuses_bad_chunks() -> None:
    chunks = split_frame(_frame(50_000), 4096)
    with pytest.raises(FrameError) as oversized:
        reassembler = Reassembler(max_frame_bytes=10_000)
        for chunk in chunks:
            reassembler.feed(chunk)
    assert oversized.value.reason == "oversized" and reassembler.pending == 0
    busy = Reassembler(max_transfers=1)
    busy.feed(chunks[0], "a")
    with pytest.raises(FrameError) as full:
        busy.feed(split_frame(_frame(50_000), 4096)[0], "b")
    assert full.value.reason == "busy"
    clock = [0.0]
    expiring = Reassembler(ttl_seconds=10, clock=lambda: clock[0])
    expiring.feed(chunks[0], "a")
    clock[0] = 11
    expiring.feed(split_frame(_frame(200), 150)[0], "b")
    assert expiring.pending == 1
    for bad, reason in [
        (b"nope", "magic"),
        (b"BFCH\x01", "truncated"),
        (chunks[0][:4] + b"\x09" + chunks[0][5:], "version"),
    ]:
        with pytest.raises(FrameError) as error:
            Reassembler().feed(bad)
        assert error.value.reason == reason
    corrupted = [chunks[0], chunks[1][:-1] + bytes([chunks[1][-1] ^ 1]), *chunks[2:]]
    with pytest.raises(FrameError) as checksum:
        reassembler = Reassembler()
        for chunk in corrupted:
            reassembler.feed(chunk)
    assert checksum.value.reason == "checksum"


def test_topics_round_trip_and_reject_bad_ids() -> None:
    assert parse_update_topic(update_topic("job-1", 4, "pi_7")) == ("job-1", 4, "pi_7")
    assert parse_status_topic("bitfleet/v2/agents/pi-1/status") == "pi-1"
    assert round_model_topic("job-1", 2) == "bitfleet/v2/jobs/job-1/rounds/2/model"
    for bad in ("Upper", "with/slash", "", "-lead", "x" * 65, "+", "#"):
        with pytest.raises(ProtocolError):
            update_topic("job-1", 0, bad)
    for topic in (
        "bitfleet/v2/jobs/j/rounds/x/updates/a",
        "bitfleet/v1/jobs/j/rounds/1/updates/a",
        "a/b",
    ):
        with pytest.raises(ProtocolError):
            parse_update_topic(topic)


def test_messages_round_trip_and_validate() -> None:
    for message in (
        AgentStatus("a1", "online", {"cpus": 4}),
        Task("job-1", 3, "bitflip", 1e9, hyperparameters={"lr": 1.0}),
        UploadReceipt("job-1", 3, "a1", False, "late"),
    ):
        assert parse_message(type(message), encode_message(message)) == message
    cases = [
        (Task, b"not json", "not valid JSON"),
        (Task, b"[]", "JSON object"),
        (Task, b'{"job_id": "j"}', "lacks the field"),
        (Task, b'{"job_id": "j", "round": true, "algorithm": "a", "deadline": 1}', "must be int"),
        (AgentStatus, b'{"agent_id": "a", "state": "dancing"}', "agent state"),
        (AgentStatus, b'{"agent_id": "A!", "state": "online"}', "agent id"),
        (AgentStatus, b'{"agent_id": "a", "state": "online", "protocol": 1}', "protocol version 1"),
    ]
    task = b'"job_id": "j", "round": 0, "algorithm": "a", "deadline": 1'
    cases += [
        (Task, b"{%s, %s}" % (task, field), "Task.model_")
        for field in (
            b'"model_chunks": 0',
            b'"model_chunks": 65537',
            b'"model_key": "00"',
            b'"model_key": "%s"' % (b"A" * 64),
            b'"model_sha256": "%s"' % (b"g" * 64),
        )
    ]
    for kind, raw, message in cases:
        with pytest.raises(ProtocolError, match=message):
            parse_message(kind, raw)


def test_broker_urls() -> None:
    address = parse_mqtt_url("mqtt://coord:p%40ss@127.0.0.1:1999")
    assert (address.host, address.port, address.username, address.password) == (
        "127.0.0.1",
        1999,
        "coord",
        "p@ss",
    )
    assert parse_mqtt_url("mqtts://broker.local").port == 8883
    for bad in ("http://x", "mqtt://", "mqtt://h:notaport"):
        with pytest.raises(ProtocolError):
            parse_mqtt_url(bad)


def test_a_sealed_model_opens_only_with_its_key_and_digest() -> None:
    model = b"a round's model" * 1000
    assert SEALED.sealed != model and model[:64] not in SEALED.sealed
    assert unseal(SEALED.sealed, SEALED.key, SEALED.sha256) == model
    again = seal(model)
    assert again.key != SEALED.key and again.sealed != SEALED.sealed  # a fresh key each time
    assert b"".join(SEALED.slices(4000)) == SEALED.sealed
    assert [len(part) for part in SEALED.slices(4000)] == [4000] * 3 + [3000]
    flipped = bytes([SEALED.sealed[0] ^ 1]) + SEALED.sealed[1:]
    wrong_key = seal(b"").key
    for sealed, key, digest in (
        (flipped, SEALED.key, SEALED.sha256),  # damaged or replaced bytes
        (SEALED.sealed[:-1], SEALED.key, SEALED.sha256),  # a slice missing
        (SEALED.sealed, "", SEALED.sha256),  # a task without a key
        (SEALED.sealed, SEALED.key, "0" * 63),
    ):
        with pytest.raises(FrameError) as refused:
            unseal(sealed, key, digest)
        assert refused.value.reason == "sealed"
    # The right digest with another key opens to noise, never to the model.
    assert unseal(SEALED.sealed, wrong_key, SEALED.sha256) != model
