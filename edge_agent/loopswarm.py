"""Many simulated MQTT agents driven from one thread, for load tests (``bitfleet bench fleet``).

A swarm of agent runtimes (:func:`bitfleet.edge_agent.swarm.run_swarm`) gives each agent a
thread and paho's network thread beside it; at a thousand agents the load generator spent
most of its CPU switching between those threads (60 % of its samples in the kernel). Here
every agent is a paho client whose socket one selector watches (paho's external-loop API),
and its protocol steps run in that client's callbacks: announce, take the retained task,
download and open the sealed model, upload a signed echo update (chunked if it must be),
wait for the receipt — and send the upload again if none comes in ``RECEIPT_WAIT_S``, as
an agent's outbox does. Each step is printed as the same JSON event lines.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from bitfleet.chunks import split_frame
from bitfleet.edge_agent.runtime import capabilities
from bitfleet.edge_agent.swarm import EchoJobs, Events
from bitfleet.errors import BitfleetError
from bitfleet.federated import update_frame
from bitfleet.frames import decode_frame
from bitfleet.mqttclient import KEEPALIVE_S, QOS, new_client
from bitfleet.protocol import (
    COORDINATOR_ONLINE,
    COORDINATOR_STATUS_TOPIC,
    AgentStatus,
    BrokerAddress,
    Task,
    UploadReceipt,
    agent_events_topic,
    agent_status_topic,
    agent_tasks_topic,
    encode_message,
    open_round_model,
    parse_message,
    round_model_topics,
    update_topic,
)

RECEIPT_WAIT_S = 15.0  # as the agent runtime's receipt_wait_s
TICK_S = 0.5  # keepalives and overdue resends are looked at this often
MAX_READS = 1000  # reads of one socket per wake (TLS may hold records select cannot see)


@dataclass
class SimulatedAgent:
    """One agent's protocol state; every method runs on the swarm's loop thread."""

    agent_id: str
    secret: str
    capabilities: dict[str, Any]
    client: mqtt.Client
    events: Events
    jobs: EchoJobs
    max_message_bytes: int
    task: Task | None = None
    parts: dict[str, bytes] = field(default_factory=dict)
    done: set[tuple[str, int, int]] = field(default_factory=set)
    receipt_wait_s: float = RECEIPT_WAIT_S
    held: tuple[Task, bytes, float] | None = None  # the upload awaiting its receipt
    lost: bool = False  # the broker link dropped: reconnect at the next tick

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.events.emit("refused", self.agent_id, reason=str(reason))
            return
        client.subscribe(
            [
                (agent_tasks_topic(self.agent_id), QOS),
                (agent_events_topic(self.agent_id), QOS),
                (COORDINATOR_STATUS_TOPIC, QOS),
            ]
        )
        self.announce("online")

    def on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.lost = True
        self.events.emit("disconnected", self.agent_id, reason=str(reason))

    def reconnect(self) -> None:
        self.lost = False
        try:
            self.client.reconnect()
        except OSError:
            self.lost = True  # the next tick tries again

    def announce(self, state: str) -> None:
        status = AgentStatus(self.agent_id, state, self.capabilities)
        topic = agent_status_topic(self.agent_id)
        self.client.publish(topic, encode_message(status), qos=QOS, retain=True)

    def on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._take(message.topic, bytes(message.payload))
        except BitfleetError as error:  # a bad message costs this agent its round, no more
            self.events.emit("failed", self.agent_id, self.task, reason=str(error)[:200])

    def _take(self, topic: str, payload: bytes) -> None:
        if topic == agent_tasks_topic(self.agent_id):
            self._new_task(parse_message(Task, payload) if payload else None)
        elif topic == agent_events_topic(self.agent_id):
            self._receipt(parse_message(UploadReceipt, payload))
        elif topic == COORDINATOR_STATUS_TOPIC:
            if payload == COORDINATOR_ONLINE and self.held is not None:
                self._send(*self.held[:2])  # it (re)started: what it had not answered
        elif self.task is not None and payload:
            self.parts[topic] = payload
            self._open_model()

    def _new_task(self, task: Task | None) -> None:
        if self.task is not None and self.task != task:
            self.client.unsubscribe(self._model_subscription(self.task))
        self.task, self.parts = task, {}
        if task is None or (task.job_id, task.round, task.attempt) in self.done:
            return
        self.events.emit("task", self.agent_id, task)
        self.announce("training")
        self.client.subscribe(self._model_subscription(task), QOS)

    @staticmethod
    def _model_subscription(task: Task) -> str:
        return round_model_topics(task.job_id, task.round, task.model_chunks)[0]

    def _open_model(self) -> None:
        task = self.task
        assert task is not None
        try:
            model = open_round_model(task, self.parts)
        except BitfleetError:
            return  # slices of a round sealed anew: its task follows
        if model is None:
            return
        self.client.unsubscribe(self._model_subscription(task))
        self.parts = {}
        self.done.add((task.job_id, task.round, task.attempt))
        self.events.emit("model", self.agent_id, task, bytes=len(model))
        samples = self.capabilities["samples"]
        tensors, meta = self.jobs.echo(task, decode_frame(model), samples)
        self._send(task, update_frame(tensors, meta, self.agent_id, self.secret.encode()))

    def _send(self, task: Task, frame: bytes) -> None:
        self.events.emit("upload", self.agent_id, task, bytes=len(frame))
        topic = update_topic(task.job_id, task.round, self.agent_id)
        for chunk in split_frame(frame, self.max_message_bytes):
            self.client.publish(topic, chunk, qos=QOS)
        self.held = (task, frame, time.monotonic())

    def _receipt(self, receipt: UploadReceipt) -> None:
        task = self.held[0] if self.held is not None else None
        if task is None or (receipt.job_id, receipt.round) != (task.job_id, task.round):
            return
        self.held = None
        reason = None if receipt.accepted else receipt.reason
        self.events.emit("receipt", self.agent_id, task, accepted=receipt.accepted, reason=reason)
        self.announce("online")

    def resend_overdue(self, now: float) -> None:
        if self.held is not None and now - self.held[2] >= self.receipt_wait_s:
            self._send(*self.held[:2])


class LoopSwarm:
    """The agents' clients on one selector; :meth:`run` drives them until ``stop``."""

    def __init__(
        self,
        agents: list[tuple[str, str]],
        address: BrokerAddress,
        samples: int,
        max_message_bytes: int,
        tls: dict[str, str | None],
        receipt_wait_s: float = RECEIPT_WAIT_S,
    ) -> None:
        self.address = address
        self.events = Events()
        self.selector = selectors.DefaultSelector()
        jobs = EchoJobs("swarm")
        declared = capabilities(np.zeros(samples, np.int64))
        self.agents: list[SimulatedAgent] = []
        for agent_id, secret in agents:
            offline = encode_message(AgentStatus(agent_id, "offline"))
            client = new_client(
                address,
                f"bitfleet-{agent_id}",
                (agent_status_topic(agent_id), offline),
                username=agent_id,
                password=secret,
                **tls,
            )
            agent = SimulatedAgent(
                agent_id,
                secret,
                declared,
                client,
                self.events,
                jobs,
                max_message_bytes,
                receipt_wait_s=receipt_wait_s,
            )
            client.on_connect = agent.on_connect
            client.on_disconnect = agent.on_disconnect
            client.on_message = agent.on_message
            client.enable_logger()  # paho logs an exception a callback raised
            client.on_socket_open = self._opened
            client.on_socket_close = self._closed
            client.on_socket_register_write = self._want_write
            client.on_socket_unregister_write = self._written
            self.agents.append(agent)

    # paho's external-loop callbacks: which sockets to watch, and for what
    def _opened(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _written(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ, client)

    def run(self, stop: threading.Event) -> None:
        for agent in self.agents:
            agent.client.connect(self.address.host, self.address.port, keepalive=KEEPALIVE_S)
        ticked = time.monotonic()
        while not stop.is_set():
            for key, mask in self.selector.select(timeout=TICK_S):
                client: mqtt.Client = key.data
                if mask & selectors.EVENT_READ:
                    _read_all(client)
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            if now - ticked >= TICK_S:
                ticked = now
                for agent in self.agents:
                    if agent.lost:
                        agent.reconnect()
                    agent.client.loop_misc()
                    agent.resend_overdue(now)
        for agent in self.agents:
            agent.announce("offline")
            agent.client.loop_write()
            agent.client.disconnect()


def _read_all(client: mqtt.Client) -> None:
    """Read until the socket (and TLS's own buffer, which select cannot see) is empty."""
    for _ in range(MAX_READS):
        client.loop_read()
        sock = client.socket()
        if not isinstance(sock, socket.socket) or not getattr(sock, "pending", lambda: 0)():
            return
