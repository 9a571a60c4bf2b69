"""The agent's training loop, unaware of which transport carries its bytes.

Wait for a task, download the round's global model, train locally on the agent's own data
with the job's algorithm, upload the signed update, repeat. Every round is journaled before
training starts, so a round interrupted by a crash is abandoned, never trained twice; a
job that would not fit the board's memory is declined with the reason. Every update is held
in the outbox until a final receipt, and resent between tasks (idempotent on the
coordinator), so no coordinator or broker outage loses it. An outage is ridden out: every
retry follows the agent's one backoff policy, and the outage is logged once when it starts
and once when it ends (:class:`~bitfleet.edge_agent.backoff.Outage`), however long it lasts
— unless the agent was told to give up after a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.algorithms.local import LocalJobs
from bitfleet.edge_agent.backoff import Backoff, Outage
from bitfleet.edge_agent.journal import Journal, TaskKey
from bitfleet.edge_agent.outbox import Outbox, Pending
from bitfleet.edge_agent.transports import Transport, is_outage
from bitfleet.errors import BitfleetError
from bitfleet.federated import TrainingInterrupted, update_frame
from bitfleet.frames import Tensor, decode_frame
from bitfleet.protocol import TRANSIENT_REASONS, AgentStatus, Decline, Task, UploadReceipt

log = logging.getLogger("bitfleet.agent")


def available_memory() -> int:
    """Bytes the OS can still give this process (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def capabilities(y: NDArray[np.integer]) -> dict[str, Any]:
    """What the coordinator may want to know before giving this board work."""
    return {
        "cpus": os.cpu_count() or 1,
        "ram_available_bytes": available_memory(),
        "numba": kernels.HAVE_NUMBA,
        "samples": len(y),
        "label_histogram": np.bincount(np.asarray(y)).tolist() if len(y) else [],
    }


# How long the agent waits for a new task before it looks at its outbox and link again
# (MQTT wakes it at once for a task, or the coordinator coming or going), and the least
# time between two asks of a transport that answers at once.
TASK_WAIT_S = 1.0
IDLE_POLL_S = 0.2


@dataclass
class AgentRuntime:
    agent_id: str
    secret: str
    x: NDArray[np.uint8]
    y: NDArray[np.integer]
    transport: Transport
    journal: Journal | None = None
    memory_limit_bytes: int | None = None
    upload_timeout_s: float = 30.0
    outbox: Outbox = field(default_factory=lambda: Outbox(None))
    # How long one send waits for its receipt (a busy coordinator evaluating a round may
    # take seconds); an unanswered (or "later") upload is sent again on the outbox's
    # backoff schedule, and at once when the coordinator comes back
    # (transport.coordinator_returns ends the wait too): an outage costs a round about a
    # second, not a timeout.
    receipt_wait_s: float = 15.0
    # The wait between tries of a failed task poll or model download.
    backoff: Backoff = field(default_factory=Backoff)
    outage: Outage = field(default_factory=Outage)
    done: set[TaskKey] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    _state: dict[str, Any] = field(default_factory=dict)
    # How tasks become updates: training on x, y (a load test's agents echo instead).
    jobs: LocalJobs | None = None
    _coordinator_returns: int = 0
    _jobs: LocalJobs = field(init=False)
    _poll_error: str | None = None

    def __post_init__(self) -> None:
        self._jobs = self.jobs if self.jobs is not None else LocalJobs(self.agent_id)

    def status(self, state: str) -> AgentStatus:
        return AgentStatus(self.agent_id, state, capabilities(self.y))

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve tasks until ``stop`` (or ``self.stop``) is set, then disconnect cleanly;
        :class:`~bitfleet.edge_agent.backoff.GaveUp` if the coordinator stayed away longer
        than ``outage.give_up_after_s``."""
        if stop is not None:
            self.stop = stop
        if self.journal is not None:
            attempted, interrupted = self.journal.recover()
            self.done |= attempted
            for job_id, round_index, _ in interrupted:
                log.warning("job %s round %d was interrupted; abandoned", job_id, round_index)
        self.transport.start(self.status("online"))
        self._report(state="waiting", task=None)
        log.info(
            "agent %s started (%s transport, %d samples)",
            self.agent_id,
            self.transport.name,
            len(self.y),
        )
        try:
            seen: Task | None = None  # the current task, once served: wait for another
            while not self.stop.is_set():
                self._watch()
                self._flush_outbox()
                asked = time.monotonic()
                task = self._next_task(seen)
                if task is None or _key(task) in self.done:
                    seen = task
                    # A transport that answers at once is not asked again at once.
                    self.stop.wait(max(0.0, IDLE_POLL_S - (time.monotonic() - asked)))
                    continue
                self.serve(task)
        finally:
            self.transport.close()
            self._report(state="stopped", task=None)
            log.info("agent %s stopped", self.agent_id)

    def serve(self, task: Task) -> UploadReceipt | None:
        """Train one round and upload it; a failure gives the round up, logged."""
        self.done.add(_key(task))
        key = (task.job_id, task.round)
        if task.deadline < time.time():
            log.warning("job %s round %d is past its deadline; skipped", *key)
            return None
        self._journal(task, "started")
        self._report(state="training", task={"job_id": task.job_id, "round": task.round})
        self._announce("training")
        try:
            return self._train_and_upload(task)
        except TrainingInterrupted as error:
            self._journal(task, "abandoned", reason=str(error))
            log.warning("job %s round %d abandoned: %s", *key, error)
        except (BitfleetError, OSError) as error:  # OSError: this board's own disk
            self._journal(task, "failed", reason=str(error))
            if isinstance(error, BitfleetError) and is_outage(error):
                # e.g. the model download met a restarting coordinator: take it again.
                self.done.discard(_key(task))
                log.warning("job %s round %d interrupted by an outage: %s", *key, error)
                self.stop.wait(self.backoff.failed())
            else:
                log.error("job %s round %d failed: %s", *key, error)
        finally:
            if not self.stop.is_set():
                self._announce("online")
            self._report(state="waiting", task=None)
        return None

    def _train_and_upload(self, task: Task) -> UploadReceipt | None:
        started = time.monotonic()
        global_frame = decode_frame(self.transport.fetch_model(task, self.upload_timeout_s))
        plan = self._jobs.plan(task, global_frame)
        if self._declined(task, plan.memory_needed):
            return None
        tensors, meta = self._jobs.train(
            task, global_frame, plan, self.x, self.y, should_stop=self.stop.is_set
        )
        return self._upload(task, tensors, meta, started)

    def _declined(self, task: Task, needed: int) -> bool:
        """Decline (and say why) when training needs more memory than the board can give."""
        limit = self.memory_limit_bytes or available_memory()
        if not limit or needed <= limit:
            return False
        reason = f"training needs about {needed >> 20} MiB, this board can give {limit >> 20} MiB"
        self.transport.decline(Decline(task.job_id, task.round, self.agent_id, reason))
        self._journal(task, "declined", reason=reason)
        log.warning("job %s round %d declined: %s", task.job_id, task.round, reason)
        return True

    def _upload(
        self, task: Task, tensors: list[Tensor], meta: dict[str, Any], started: float
    ) -> UploadReceipt | None:
        frame = update_frame(tensors, meta, self.agent_id, self.secret.encode())
        receipt = self._send(self.outbox.put(task, frame))
        outcome = _outcome(receipt)
        self._journal(task, "uploaded", outcome=outcome, bytes=len(frame))
        self._report(last_round={"job_id": task.job_id, "round": task.round, "outcome": outcome})
        log.info(
            "job %s round %d trained in %.1fs; upload %s (%d bytes)",
            task.job_id,
            task.round,
            time.monotonic() - started,
            outcome,
            len(frame),
        )
        return receipt

    def _next_task(self, seen: Task | None) -> Task | None:
        """The transport's current task, once it is not ``seen`` or a second has passed;
        None while the coordinator is unreachable (the agent rides out the outage, backing
        off)."""
        try:
            task = self.transport.next_task(timeout=TASK_WAIT_S, seen=seen)
        except BitfleetError as error:
            self._poll_error = str(error)
            self._watch()
            self.stop.wait(self.backoff.failed())
            return None
        self._poll_error = None
        self.backoff.reset()
        self._watch()
        return task

    def _watch(self) -> None:
        """Log an outage's start and end once each (the transport's view, or the last task
        poll's error); when it ends, tell the coordinator this agent is here (one that was
        down may not have heard it)."""
        if self.outage.update(self.transport.coordinator_away() or self._poll_error):
            self._announce("online")

    def _announce(self, state: str) -> None:
        """Tell the coordinator this agent's state; an outage only delays it."""
        try:
            self.transport.announce(self.status(state))
        except BitfleetError as error:
            if self.transport.coordinator_away() is None:  # else the outage is logged
                log.warning("could not announce %s: %s", state, error)

    def _send(self, pending: Pending) -> UploadReceipt | None:
        """Send a held upload once, unless the coordinator is away (it is sent when it
        returns); drop it from the outbox when its receipt is final."""
        if self.transport.coordinator_away() is not None:
            return None
        try:
            receipt = self.transport.upload(pending.task, pending.frame, self.receipt_wait_s)
        except BitfleetError as error:  # coordinator or broker unreachable: resend later
            log.warning("upload for job %s round %d not sent: %s", *_where(pending), error)
            receipt = None
        if _final(receipt):
            with contextlib.suppress(OSError):  # a leftover file is resent, answered "resent"
                self.outbox.remove(pending)
        else:
            self.outbox.later(pending)
        return receipt

    def _flush_outbox(self) -> None:
        """Resend every held upload that is due; journal the final receipts."""
        if self.transport.coordinator_returns != self._coordinator_returns:
            self._coordinator_returns = self.transport.coordinator_returns
            self.outbox.retry_now()
        for pending in self.outbox.due():
            if self.stop.is_set():
                return
            receipt = self._send(pending)
            if _final(receipt):
                self._journal(pending.task, "receipt", outcome=_outcome(receipt))
                log.info("job %s round %d: resent upload %s", *_where(pending), _outcome(receipt))

    def _journal(self, task: Task, event: str, **details: Any) -> None:
        """Record an event; a full or failing disk is logged, never the end of the agent."""
        if self.journal is not None:
            try:
                self.journal.record(_key(task), event, **details)
            except OSError as error:
                log.error("journal not written (%s %s): %s", event, _key(task), error)

    def _report(self, **changes: Any) -> None:
        self._state.update(changes, agent_id=self.agent_id, transport=self.transport.name)
        if self.journal is not None:
            try:
                self.journal.write_status(self._state)
            except OSError as error:
                log.error("status not written: %s", error)


def _key(task: Task) -> TaskKey:
    return (task.job_id, task.round, task.attempt)


def _where(pending: Pending) -> tuple[str, int]:
    return pending.task.job_id, pending.task.round


def _final(receipt: UploadReceipt | None) -> bool:
    """Whether a receipt settles an upload (accepted, or refused for good)."""
    return receipt is not None and (receipt.accepted or receipt.reason not in TRANSIENT_REASONS)


def _outcome(receipt: UploadReceipt | None) -> str:
    if receipt is None:
        return "held, no receipt yet (will resend)"
    if receipt.accepted:
        return "accepted"
    if receipt.reason in TRANSIENT_REASONS:
        return f"refused for now ({receipt.reason}; will resend)"
    return f"refused ({receipt.reason})"
