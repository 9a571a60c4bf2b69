"""Fan-out to the transports that push to agents (the MQTT bridge); HTTP agents poll instead.

The handlers publish through one :class:`Fanout`; the composition root
(:mod:`bitfleet.server.service`) adds each transport to it. A transport never adds itself.
"""

from __future__ import annotations

from typing import Protocol

from bitfleet.protocol import Task, UploadReceipt


class Publisher(Protocol):
    """What a pushing transport does with rounds, withdrawn tasks and receipts."""

    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None: ...

    def withdraw_tasks(self, agent_ids: list[str]) -> None: ...

    def publish_receipt(self, receipt: UploadReceipt) -> None: ...


class Fanout:
    """Every registered publisher, called in the order they were added."""

    def __init__(self) -> None:
        self._publishers: list[Publisher] = []

    def add(self, publisher: Publisher) -> None:
        self._publishers.append(publisher)

    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None:
        for publisher in self._publishers:
            publisher.publish_round(job_id, round_index, model, tasks)

    def withdraw(self, agent_ids: list[str]) -> None:
        for publisher in self._publishers:
            publisher.withdraw_tasks(agent_ids)

    def receipt(self, receipt: UploadReceipt) -> None:
        for publisher in self._publishers:
            publisher.publish_receipt(receipt)
