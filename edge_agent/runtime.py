"""The agent's training loop, unaware of which transport carries its bytes.

Wait for a task, download the round's global model, train locally on the agent's own data
with the job's algorithm, upload the signed update, repeat. A round is attempted once:
``done`` remembers (job, round) pairs so a retained task is never trained twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.transports import Transport
from shared import kernels
from shared.errors import BitfleetError
from shared.federated import (
    LocalBitFlip,
    agent_seed,
    bitflip_config,
    new_local_state,
    update_frame,
)
from shared.frames import decode_frame
from shared.modelfile import bitmlp_from_frame
from shared.protocol import AgentStatus, Task, UploadReceipt

log = logging.getLogger("bitfleet.agent")


def capabilities(y: NDArray[np.integer]) -> dict[str, Any]:
    """What the coordinator may want to know before giving this board work."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    return {
        "cpus": os.cpu_count() or 1,
        "ram_bytes": int(pages * page_size),
        "numba": kernels.HAVE_NUMBA,
        "samples": len(y),
        "label_histogram": np.bincount(np.asarray(y)).tolist() if len(y) else [],
    }


@dataclass
class AgentRuntime:
    agent_id: str
    secret: str
    x: NDArray[np.uint8]
    y: NDArray[np.integer]
    transport: Transport
    done: set[tuple[str, int]] = field(default_factory=set)
    upload_timeout_s: float = 30.0
    _jobs: dict[str, LocalBitFlip] = field(default_factory=dict)

    def status(self, state: str) -> AgentStatus:
        return AgentStatus(self.agent_id, state, capabilities(self.y))

    def run(self, stop: threading.Event) -> None:
        """Serve tasks until ``stop`` is set."""
        self.transport.start(self.status("online"))
        try:
            while not stop.is_set():
                task = self.transport.next_task(timeout=0.5)
                if task is None or (task.job_id, task.round) in self.done:
                    stop.wait(0.2)
                    continue
                self.serve(task)
        finally:
            self.transport.close()

    def serve(self, task: Task) -> UploadReceipt | None:
        """Train one round and upload it; errors are logged and the round is given up."""
        self.done.add((task.job_id, task.round))
        if task.deadline < time.time():
            log.warning("task %s round %d is past its deadline; skipped", task.job_id, task.round)
            return None
        self.transport.announce(self.status("training"))
        try:
            started = time.monotonic()
            frame = self.train(task)
            receipt = self.transport.upload(task, frame, self.upload_timeout_s)
            log.info(
                "job %s round %d: trained in %.1fs, upload %s",
                task.job_id,
                task.round,
                time.monotonic() - started,
                "accepted"
                if receipt and receipt.accepted
                else f"refused ({receipt and receipt.reason})",
            )
            return receipt
        except BitfleetError as error:
            log.error("job %s round %d abandoned: %s", task.job_id, task.round, error)
            return None
        finally:
            self.transport.announce(self.status("online"))

    def train(self, task: Task) -> bytes:
        """The signed update frame for ``task``."""
        if task.algorithm != "bitflip":
            raise BitfleetError(f"algorithm {task.algorithm!r} is not supported by this agent")
        global_frame = decode_frame(self.transport.fetch_model(task, self.upload_timeout_s))
        model = bitmlp_from_frame(global_frame)
        seed = agent_seed(task.seed, task.round, self.agent_id)
        config = bitflip_config(task.hyperparameters, model.encoding, task.local_epochs, seed)
        state = self._jobs.get(task.job_id)
        if state is None:
            state = self._jobs[task.job_id] = new_local_state(
                task.job_id, model.layer_sizes, config
            )
        tensors, meta = state.train_round(global_frame, task.round, config, self.x, self.y)
        return update_frame(tensors, meta, self.agent_id, self.secret.encode())
