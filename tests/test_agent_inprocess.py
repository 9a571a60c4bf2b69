"""The agent's runtime in-process, against a scripted coordinator behind a MockTransport.

The fast tier beside tests/test_agent.py's real processes: the real runtime, journal,
outbox and trainer (on a share of the digits data), only the coordinator's side scripted.
Every backoff draws 0 (an injected random source), so a retry waits nothing; each run ends
when the script has seen what it waits for and sets the agent's stop event, so nothing
here waits on a clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bitfleet.algorithms.bitflip import bitflip_config, initial_global_model
from bitfleet.edge_agent.backoff import Backoff
from bitfleet.edge_agent.journal import Journal
from bitfleet.edge_agent.outbox import Outbox
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports import TransportTimeout
from bitfleet.edge_agent.transports.mock import (
    Announce,
    DeclineNotice,
    MockTransport,
    ModelDownload,
    Poll,
    Request,
    Upload,
)
from bitfleet.frames import KIND_UPDATE, decode_frame
from bitfleet.protocol import RESENT, Task, UploadReceipt
from bitfleet.server.algorithms import JOB_ALGORITHMS
from tests.manual import shards

AGENT, SECRET = "pi-1", "pi-1-secret"
UNREACHABLE = "coordinator unreachable"
BACK = "coordinator reachable again"


def _receipt(task: Task, accepted: bool = True, reason: str = "") -> UploadReceipt:
    return UploadReceipt(task.job_id, task.round, AGENT, accepted, reason)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return shards(3)[0]


@pytest.fixture(scope="module")
def task() -> Task:
    return Task("job-1", 0, "bitflip", deadline=time.time() + 3600, local_epochs=1, seed=5)


@pytest.fixture(scope="module")
def model(task: Task) -> bytes:
    config = bitflip_config({}, "binary", task.local_epochs, task.seed)
    return initial_global_model([64, 32, 10], config, "majority")


@dataclass
class Script:
    """The coordinator: hands out ``task``, serves ``model``, answers the agent's uploads
    with ``receipts`` in turn, and stops the agent at the first poll after the last of them.

    ``down_after_upload`` requests after the first upload get no answer (the coordinator
    restarts); ``offline_polls`` polls after it see the coordinator's status "offline"
    (as MQTT says it), then it comes back.
    """

    task: Task
    model: bytes
    receipts: list[UploadReceipt | None]
    down_after_upload: int = 0
    offline_polls: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    transport: MockTransport = field(init=False)
    uploads_while_away: int = 0

    def __post_init__(self) -> None:
        self.transport = MockTransport(self)

    def __call__(self, request: Request) -> Task | bytes | UploadReceipt | None:
        uploads = len(self.transport.sent(Upload)) - isinstance(request, Upload)
        if isinstance(request, Upload) and self.transport.coordinator_away() is not None:
            self.uploads_while_away += 1
        if uploads and self.down_after_upload:
            self.down_after_upload -= 1
            raise TransportTimeout("the coordinator is restarting")
        if isinstance(request, Poll):
            return self._poll(uploads)
        if isinstance(request, ModelDownload):
            return self.model
        if isinstance(request, Upload):
            if uploads == 0 and self.offline_polls:
                self.transport.go_away("it is offline (its status on the broker says so)")
            return self.receipts[uploads]
        return None

    def _poll(self, uploads: int) -> Task:
        if self.transport.coordinator_away() is not None and self.offline_polls:
            self.offline_polls -= 1
            if not self.offline_polls:
                self.transport.come_back()
        if uploads >= len(self.receipts):
            self.stop.set()
        return self.task


def _runtime(
    script: Script,
    x: np.ndarray,
    y: np.ndarray,
    tmp_path: Path,
    memory_limit_bytes: int | None = None,
) -> AgentRuntime:
    instant = Backoff(max_s=1.0, random=lambda: 0.0)
    return AgentRuntime(
        AGENT,
        SECRET,
        x,
        y,
        script.transport,
        journal=Journal(tmp_path),
        outbox=Outbox(None, backoff=instant),
        backoff=instant.fresh(),
        memory_limit_bytes=memory_limit_bytes,
    )


def _events(tmp_path: Path) -> list[str]:
    return [entry["event"] for entry in Journal(tmp_path).entries()]


def test_a_task_is_downloaded_trained_and_uploaded_signed(
    data: tuple[np.ndarray, np.ndarray], task: Task, model: bytes, tmp_path: Path
) -> None:
    script = Script(task, model, [_receipt(task)])
    runtime = _runtime(script, *data, tmp_path)
    runtime.run(script.stop)
    transport = script.transport
    assert transport.started and transport.closed
    assert [r.task for r in transport.sent(ModelDownload)] == [task]
    (upload,) = transport.sent(Upload)
    assert upload.task == task
    frame = decode_frame(upload.frame, secret_for=lambda meta: SECRET.encode())
    assert frame.kind == KIND_UPDATE and frame.signed
    assert frame.meta == {"agent_id": AGENT, "job_id": "job-1", "round": 0, "samples": len(data[1])}
    JOB_ALGORITHMS["bitflip"].check_update(decode_frame(model), frame)  # fits the global model
    assert _events(tmp_path) == ["started", "uploaded"]
    assert Journal(tmp_path).entries()[-1]["outcome"] == "accepted"
    states = [r.status.state for r in transport.sent(Announce)]
    assert states == ["online", "training", "online"]
    assert runtime.outbox.pending() == []


def test_a_task_too_big_for_the_board_is_declined_with_the_reason(
    data: tuple[np.ndarray, np.ndarray], task: Task, model: bytes, tmp_path: Path
) -> None:
    script = Script(task, model, [])
    runtime = _runtime(script, *data, tmp_path, memory_limit_bytes=1024)
    runtime.run(script.stop)
    (notice,) = script.transport.sent(DeclineNotice)
    assert (notice.decline.job_id, notice.decline.round, notice.decline.agent_id) == (
        "job-1",
        0,
        AGENT,
    )
    assert "training needs about" in notice.decline.reason
    assert "this board can give 0 MiB" in notice.decline.reason
    assert script.transport.sent(Upload) == []
    assert _events(tmp_path) == ["started", "declined"]


@pytest.mark.parametrize(
    "answers, outcome",
    [
        (["none", "resent"], "accepted"),  # the receipt was lost; the resend is answered
        (["busy", "accepted"], "accepted"),  # refused for now, then taken
        (["late"], "refused (late)"),  # final: never resent
    ],
)
def test_held_uploads_are_resent_until_a_receipt_is_final(
    data: tuple[np.ndarray, np.ndarray],
    task: Task,
    model: bytes,
    tmp_path: Path,
    answers: list[str],
    outcome: str,
) -> None:
    receipts = {
        "none": None,
        "resent": _receipt(task, True, RESENT),
        "busy": _receipt(task, False, "busy"),
        "accepted": _receipt(task),
        "late": _receipt(task, False, "late"),
    }
    script = Script(task, model, [receipts[a] for a in answers])
    runtime = _runtime(script, *data, tmp_path)
    runtime.run(script.stop)
    uploads = script.transport.sent(Upload)
    assert len(uploads) == len(answers)
    assert len({u.frame for u in uploads}) == 1  # the same update
    entries = Journal(tmp_path).entries()
    assert entries[-1]["outcome"] == outcome
    assert _events(tmp_path) == ["started", "uploaded"] + ["receipt"] * (len(answers) > 1)
    assert runtime.outbox.pending() == []


def test_an_outage_holds_the_upload_and_it_is_resent_when_the_coordinator_returns(
    data: tuple[np.ndarray, np.ndarray],
    task: Task,
    model: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The coordinator dies with the upload's receipt unsent and stays down for a few
    requests; nothing is sent meanwhile, the upload goes once it is back, and the outage is
    logged once when it starts and once when it ends."""
    script = Script(task, model, [None, _receipt(task, True, RESENT)], down_after_upload=4)
    runtime = _runtime(script, *data, tmp_path)
    caplog.set_level(logging.INFO, logger="bitfleet.agent")
    runtime.run(script.stop)
    assert len(script.transport.sent(Upload)) == 2 and script.uploads_while_away == 0
    assert script.transport.coordinator_returns == 1
    assert caplog.text.count(UNREACHABLE) == 1 and caplog.text.count(BACK) == 1
    assert caplog.text.count("resent upload accepted") == 1
    assert _events(tmp_path) == ["started", "uploaded", "receipt"]
    assert runtime.outbox.pending() == []


def test_a_coordinator_offline_by_its_status_gets_the_held_upload_when_back_online(
    data: tuple[np.ndarray, np.ndarray],
    task: Task,
    model: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As over MQTT: the broker still answers, the coordinator's status says offline."""
    script = Script(task, model, [None, _receipt(task)], offline_polls=3)
    runtime = _runtime(script, *data, tmp_path)
    caplog.set_level(logging.INFO, logger="bitfleet.agent")
    runtime.run(script.stop)
    assert len(script.transport.sent(Upload)) == 2 and script.uploads_while_away == 0
    assert caplog.text.count(UNREACHABLE) == 1 and caplog.text.count(BACK) == 1
    assert _events(tmp_path) == ["started", "uploaded", "receipt"]


def test_stop_during_a_round_abandons_it_between_batches_and_uploads_nothing(
    data: tuple[np.ndarray, np.ndarray], task: Task, model: bytes, tmp_path: Path
) -> None:
    """SIGTERM sets the stop event (bitfleet-agent's handler); here it comes while the
    model downloads, so training stops after its first batch."""
    script = Script(task, model, [_receipt(task)])

    def stop_while_downloading(request: Request) -> Task | bytes | UploadReceipt | None:
        if isinstance(request, ModelDownload):
            script.stop.set()
        return script(request)

    script.transport.handler = stop_while_downloading
    runtime = _runtime(script, *data, tmp_path)
    runtime.run(script.stop)
    assert script.transport.sent(Upload) == [] and script.transport.closed
    entries = Journal(tmp_path).entries()
    assert [e["event"] for e in entries] == ["started", "abandoned"]
    assert entries[-1]["reason"].startswith("stopped after 1 of ")
    announced = [r.status.state for r in script.transport.sent(Announce)]
    assert announced == ["online", "training"]  # not "online" again: it is stopping
    status = Journal(tmp_path).read_status()
    assert status is not None and status["state"] == "stopped"
