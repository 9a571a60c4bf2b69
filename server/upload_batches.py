"""Uploads from a pushing transport, handled in batches on a thread of their own.

The MQTT bridge's network thread hands each whole upload here and goes back to reading;
one writer thread takes what arrived while it wrote the last batch and hands it to
:meth:`UploadDesk.handle_batch <bitfleet.server.uploads.UploadDesk.handle_batch>`, which
stores a round's uploads in one transaction. Under load, batches grow and disk syncs per
upload shrink; when idle, an upload is handled as soon as it arrives.

Bounded: at most ``max_waiting_bytes`` of uploads wait. A transport thread that would go
over it waits for room, so the broker, not our memory, holds what we cannot take yet.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from bitfleet.server.conditions import ConditionLog
from bitfleet.server.uploads import Upload, UploadDesk

log = logging.getLogger("bitfleet.uploads")

MAX_BATCH = 128  # uploads handled (and stored per round) together
MAX_WAITING_BYTES = 256 << 20


class UploadBatches:
    def __init__(
        self,
        desk: UploadDesk,
        conditions: ConditionLog,
        max_batch: int = MAX_BATCH,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
    ) -> None:
        self._desk = desk
        self._conditions = conditions
        self._max_batch = max_batch
        self._max_waiting_bytes = max_waiting_bytes
        self._waiting: deque[Upload] = deque()
        self._waiting_bytes = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="upload-batches", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Handle what waits, then end the writer thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, upload: Upload) -> None:
        """Queue an upload (waiting for room if the queue is full; one larger than the
        whole bound waits for an empty queue)."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._stopping
                    or not self._waiting
                    or self._waiting_bytes + len(upload.data) <= self._max_waiting_bytes
                )
            )
            if self._stopping:
                return  # no receipt: the agent sends it again to whoever serves next
            self._waiting.append(upload)
            self._waiting_bytes += len(upload.data)
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or bool(self._waiting))
                if not self._waiting:
                    return
                batch = [
                    self._waiting.popleft() for _ in range(min(self._max_batch, len(self._waiting)))
                ]
                self._waiting_bytes -= sum(len(upload.data) for upload in batch)
                self._changed.notify_all()
            try:
                self._desk.handle_batch(batch)
                self._conditions.cleared("upload batches")
            except Exception as error:  # handle_batch answers every upload; this is a bug
                self._conditions.failing("upload batches", repr(error), traceback=True)
