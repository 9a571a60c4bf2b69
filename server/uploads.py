"""Upload checking: frames in, receipts out, whatever the transport.

Every byte is hostile: the frame is bounded, decoded and its signature checked against the
sender's secret before anything else; then it must be for the job's open round, from an
agent selected for it, and fit the round's model. Refusals are receipts with a reason,
counted in ``/metrics``, never exceptions; an accepted upload is stored before it is tallied
and answered, and an upload that completes its round only rings the engine (which closes it
on its own thread).

Uploads come one at a time (an HTTP request) or in batches (what the MQTT bridge received
while the last batch was written): a batch's uploads to one round are stored in one
transaction, so a thousand uploads cost tens of disk syncs rather than a thousand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bitfleet.errors import BitfleetError
from bitfleet.frames import Frame, FrameError, decode_frame
from bitfleet.jobstatus import ACTIVE
from bitfleet.protocol import (
    JOB_NOT_RUNNING,
    LATE,
    NOT_SELECTED,
    RESENT,
    UNKNOWN_JOB,
    WRONG_ROUND,
    UploadReceipt,
)
from bitfleet.server.context import Context
from bitfleet.server.errors import NotFound
from bitfleet.server.rounds import OpenRound
from bitfleet.server.state.base import StoreError, UnknownRecord, UploadRecord

log = logging.getLogger("bitfleet.uploads")


@dataclass(frozen=True)
class Upload:
    """An upload as a transport received it: hostile bytes, and whom they say they are for."""

    job_id: str
    round_index: int
    agent_id: str
    data: bytes
    transport: str


@dataclass(frozen=True)
class _Passed:
    """An upload that passed every check, to store and tally in its round."""

    index: int
    upload: Upload
    frame: Frame
    state: OpenRound


class UploadDesk:
    def __init__(self, context: Context, max_frame_bytes: int) -> None:
        self._ctx = context
        self.max_frame_bytes = max_frame_bytes

    def handle(
        self, job_id: str, round_index: int, agent_id: str, data: bytes, transport: str
    ) -> UploadReceipt:
        """Verify, store and tally one upload."""
        return self.handle_batch([Upload(job_id, round_index, agent_id, data, transport)])[0]

    def handle_batch(self, uploads: Sequence[Upload]) -> list[UploadReceipt]:
        """Verify each upload, store those to count (one transaction per round), tally
        them, and answer each, in order.

        A full disk refuses with ``storage`` (the agent keeps the upload and resends it),
        logged once while the condition lasts."""
        reasons = [""] * len(uploads)
        frames: dict[int, Frame] = {}
        for index, upload in enumerate(uploads):  # signatures: no lock needed
            self._ctx.metrics.bytes_in.inc(len(upload.data))
            try:
                frames[index] = self._verified(upload)
            except Exception as error:
                reasons[index] = self._refusal(upload, error)
        with self._ctx.rounds.lock:  # no round can move on while this holds
            passed: dict[tuple[str, int], list[_Passed]] = {}
            for index, frame in frames.items():
                upload = uploads[index]
                try:
                    reason, state = self._check(upload, frame, passed)
                except Exception as error:
                    reason, state = self._refusal(upload, error), None
                reasons[index] = reason
                if state is not None:
                    key = (upload.job_id, upload.round_index)
                    passed.setdefault(key, []).append(_Passed(index, upload, frame, state))
            for group in passed.values():
                self._store(group, reasons)
        return [
            self.receipt(u.job_id, u.round_index, u.agent_id, reasons[i], u.transport)
            for i, u in enumerate(uploads)
        ]

    def receipt(
        self, job_id: str, round_index: int, agent_id: str, reason: str, transport: str
    ) -> UploadReceipt:
        """Count and announce the outcome of an upload (reason '' = accepted)."""
        receipt = UploadReceipt(job_id, round_index, agent_id, reason in ("", RESENT), reason)
        if reason == RESENT:
            self._ctx.metrics.uploads_resent.inc(transport=transport)
        elif receipt.accepted:
            self._ctx.metrics.uploads_accepted.inc(transport=transport)
        else:
            self._ctx.metrics.uploads_refused.inc(reason=reason)
            self._ctx.refusals.count(job_id, agent_id, reason)
        self._ctx.fanout.receipt(receipt)
        return receipt

    def _verified(self, upload: Upload) -> Frame:
        """The upload's frame, its size bounded and its signature checked; FrameError if
        it is not for the job and round it was sent to."""
        frame = decode_frame(
            upload.data,
            secret_for=self._secret_lookup(upload.agent_id),
            max_bytes=self.max_frame_bytes,
        )
        if (frame.meta.get("job_id"), frame.meta.get("round")) != (
            upload.job_id,
            upload.round_index,
        ):
            raise FrameError("mismatch", "the frame names another job or round than its topic")
        return frame

    def _check(
        self, upload: Upload, frame: Frame, passed: dict[tuple[str, int], list[_Passed]]
    ) -> tuple[str, OpenRound | None]:
        """('', its open round) for an upload to count; (refusal reason, None) otherwise.
        ``passed`` holds this batch's uploads already to count (a second from one agent is
        a resend)."""
        job_id, round_index, agent_id = upload.job_id, upload.round_index, upload.agent_id
        try:
            job = self._ctx.jobs.record(job_id)
        except NotFound:
            return UNKNOWN_JOB, None
        state = self._ctx.rounds.by_job.get(job_id)
        if job.status in ACTIVE and (state is None or state.record.round < job.round):
            state = self._follow(job_id)  # another worker opened the round just now
        open_round = state.record.round if state is not None else None
        if round_index != open_round and self._ctx.store.counted(job_id, round_index, agent_id):
            return RESENT, None  # counted before its round closed; the receipt was lost
        if job.status not in ACTIVE:
            return JOB_NOT_RUNNING, None
        if round_index < job.round or (state is None and round_index == job.round):
            return LATE, None
        if state is None or round_index > job.round:
            return WRONG_ROUND, None
        if agent_id not in state.record.selected:
            return NOT_SELECTED, None
        batch = passed.get((job_id, round_index), [])
        if agent_id in state.accepted or any(p.upload.agent_id == agent_id for p in batch):
            return RESENT, None
        screened = state.check(frame)
        if screened is not None:
            return screened, None
        return "", state

    def _store(self, group: list[_Passed], reasons: list[str]) -> None:
        """Store one round's uploads that passed in one transaction, then tally them."""
        first = group[0].upload
        records = [
            UploadRecord(p.upload.agent_id, int(p.frame.meta["samples"]), p.upload.data)
            for p in group
        ]
        try:
            stored = self._ctx.store.add_uploads(first.job_id, first.round_index, records)
        except Exception as error:
            # UnknownRecord: another worker closed the round while these were checked.
            refused = LATE if isinstance(error, UnknownRecord) else self._refusal(first, error)
            for passed in group:
                reasons[passed.index] = refused
            return
        self._ctx.conditions.cleared("storing uploads")
        state = group[0].state
        for passed, new in zip(group, stored, strict=True):
            if not new:
                reasons[passed.index] = RESENT
                continue
            try:  # stored: it counts even if this tally fails (the close reads the store)
                state.add(passed.upload.agent_id, passed.frame, len(passed.upload.data))
            except Exception as error:
                self._ctx.conditions.failing("tallying uploads", repr(error), traceback=True)
        log.info(
            "job %s round %d: %d upload(s) accepted (%d/%d)",
            first.job_id,
            first.round_index,
            sum(stored),
            len(state.accepted),
            state.spec.close_at,
        )
        if state.ready():
            self._ctx.wake()

    def _refusal(self, upload: Upload, error: Exception) -> str:
        """The refusal reason for an upload that raised ``error``, logged or reported."""
        if isinstance(error, FrameError):
            log.warning("upload from %s refused (%s): %s", upload.agent_id, error.reason, error)
            return error.reason
        if isinstance(error, StoreError):
            self._ctx.conditions.failing("storing uploads", f"uploads refused: {error}")
            return "storage"
        if isinstance(error, BitfleetError):
            log.warning("upload from %s refused (invalid): %s", upload.agent_id, error)
            return "invalid"
        # a bug: the agent retries, the operator sees it once
        self._ctx.conditions.failing("handling uploads", repr(error), traceback=True)
        return "internal"

    def _follow(self, job_id: str) -> OpenRound | None:
        """The job's open round as the store has it."""
        return self._ctx.rounds.synced(self._ctx.store, self._ctx.jobs, self._ctx.jobs.get(job_id))

    def _secret_lookup(self, agent_id: str) -> Callable[[dict[str, object]], bytes]:
        def lookup(meta: dict[str, object]) -> bytes:
            if meta.get("agent_id") != agent_id:
                raise FrameError("mismatch", "frame sender differs from the uploading agent")
            secret = self._ctx.registry.secret(agent_id)
            if secret is None:
                raise FrameError("unknown_agent", f"agent {agent_id!r} is not enrolled")
            return secret.encode()

        return lookup
