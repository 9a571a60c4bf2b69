"""Upload checking: a frame in, a receipt out, whatever the transport.

Every byte is hostile: the frame is bounded, decoded and its signature checked against the
sender's secret before anything else; then it must be for the job's open round, from an
agent selected for it, and fit the round's model. Refusals are receipts with a reason,
counted in ``/metrics``, never exceptions; an accepted upload is stored before it is tallied,
and an upload that completes its round only rings the engine (which closes it on its own
thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bitfleet.errors import BitfleetError
from bitfleet.frames import FrameError, decode_frame
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
from bitfleet.server.state.base import StoreError

log = logging.getLogger("bitfleet.uploads")


class UploadDesk:
    def __init__(self, context: Context, max_frame_bytes: int) -> None:
        self._ctx = context
        self.max_frame_bytes = max_frame_bytes

    def handle(
        self, job_id: str, round_index: int, agent_id: str, data: bytes, transport: str
    ) -> UploadReceipt:
        """Verify, store and tally one upload.

        A full disk refuses with ``storage`` (the agent keeps the upload and resends it),
        logged once while the condition lasts."""
        self._ctx.metrics.bytes_in.inc(len(data))
        try:
            reason = self._accept(job_id, round_index, agent_id, data)
            if reason == "":  # stored: the disk takes uploads again
                self._ctx.conditions.cleared("storing uploads")
        except FrameError as error:
            reason = error.reason
            log.warning("upload from %s refused (%s): %s", agent_id, reason, error)
        except StoreError as error:
            reason = "storage"
            self._ctx.conditions.failing("storing uploads", f"uploads refused: {error}")
        except BitfleetError as error:
            reason = "invalid"
            log.warning("upload from %s refused (%s): %s", agent_id, reason, error)
        except Exception as error:  # a bug: the agent retries, the operator sees it once
            reason = "internal"
            self._ctx.conditions.failing("handling uploads", repr(error), traceback=True)
        return self.receipt(job_id, round_index, agent_id, reason, transport)

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
        self._ctx.fanout.receipt(receipt)
        return receipt

    def _accept(self, job_id: str, round_index: int, agent_id: str, data: bytes) -> str:
        """'' when accepted, else the refusal reason."""
        frame = decode_frame(
            data, secret_for=self._secret_lookup(agent_id), max_bytes=self.max_frame_bytes
        )
        if (frame.meta.get("job_id"), frame.meta.get("round")) != (job_id, round_index):
            return "mismatch"
        with self._ctx.rounds.lock:  # the job's round cannot move on while this holds
            try:
                job = self._ctx.jobs.record(job_id)
            except NotFound:
                return UNKNOWN_JOB
            state = self._ctx.rounds.by_job.get(job_id)
            if job.status in ACTIVE and (state is None or state.record.round < job.round):
                state = self._follow(job_id)  # another worker opened the round just now
            open_round = state.record.round if state is not None else None
            if round_index != open_round and self._ctx.store.counted(job_id, round_index, agent_id):
                return RESENT  # counted before its round closed; the receipt was lost
            if job.status not in ACTIVE:
                return JOB_NOT_RUNNING
            if round_index < job.round or (state is None and round_index == job.round):
                return LATE
            if state is None or round_index > job.round:
                return WRONG_ROUND
            if agent_id not in state.record.selected:
                return NOT_SELECTED
            if agent_id in state.accepted:
                return RESENT
            screened = state.check(frame)
            if screened is not None:
                return screened
            samples = int(frame.meta["samples"])
            if not self._ctx.store.add_upload(job_id, round_index, agent_id, samples, data):
                return RESENT
            state.add(agent_id, frame, len(data))
            log.info(
                "job %s round %d: upload from %s accepted (%d/%d)",
                job_id,
                round_index,
                agent_id,
                len(state.accepted),
                state.spec.close_at,
            )
            if state.ready():
                self._ctx.wake()
        return ""

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
