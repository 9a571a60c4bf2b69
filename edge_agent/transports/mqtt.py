"""The MQTT transport: retained tasks and sealed round models in, chunked signed updates out.

Presence is a retained status with an "offline" Last Will; subscriptions are made in
``on_connect`` so every reconnect restores them. paho reconnects on its own; how long it
waits between tries is the agent's one backoff policy (jittered, so a fleet does not return
to a restarted broker in step), set before each wait from the connection callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt

from bitfleet.chunks import DEFAULT_CHUNK_BYTES, split_frame
from bitfleet.edge_agent.backoff import Backoff
from bitfleet.edge_agent.transports import TransportTimeout
from bitfleet.errors import BitfleetError
from bitfleet.frames import FrameError
from bitfleet.mqttclient import QOS, connect_in_background, new_client
from bitfleet.protocol import (
    COORDINATOR_OFFLINE,
    COORDINATOR_ONLINE,
    COORDINATOR_STATUS_TOPIC,
    AgentStatus,
    Decline,
    Task,
    UploadReceipt,
    agent_events_topic,
    agent_status_topic,
    agent_tasks_topic,
    decline_topic,
    encode_message,
    open_round_model,
    parse_message,
    parse_mqtt_url,
    round_model_topics,
    update_topic,
)

log = logging.getLogger("bitfleet.agent.mqtt")


class MqttTransport:
    name = "mqtt"

    def __init__(
        self,
        url: str,
        agent_id: str,
        secret: str,
        max_message_bytes: int = DEFAULT_CHUNK_BYTES,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = parse_mqtt_url(url)
        self.agent_id = agent_id
        self.max_message_bytes = max_message_bytes
        self.connected = threading.Event()
        self._changed = threading.Condition()
        self._task: Task | None = None
        self._models: dict[str, bytes] = {}
        self._receipts: dict[tuple[str, int], UploadReceipt] = {}
        self._status: AgentStatus | None = None
        self._model_subscription: str | None = None
        self._closing = False
        self.coordinator_returns = 0
        self.backoff = backoff or Backoff()
        self._link_problem: str | None = None  # why the broker link is down, once it failed
        self._coordinator_offline = False  # its retained status (or Last Will) says so
        offline = encode_message(AgentStatus(agent_id, "offline"))
        self.client = new_client(
            self.address,
            f"bitfleet-{agent_id}",
            (agent_status_topic(agent_id), offline),
            username=agent_id,
            password=secret,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
        )
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # connection
    def start(self, status: AgentStatus) -> None:
        self._status = status
        connect_in_background(self.client, self.address)

    def coordinator_away(self) -> str | None:
        if self._link_problem is not None:
            return self._link_problem
        if self._coordinator_offline:
            return "it is offline (its status on the broker says so)"
        return None

    def announce(self, status: AgentStatus) -> None:
        self._status = status
        if self.connected.is_set():
            self._publish_status()

    def _publish_status(self) -> None:
        if self._status is not None:
            topic = agent_status_topic(self.agent_id)
            self.client.publish(topic, encode_message(self._status), qos=QOS, retain=True)

    def close(self) -> None:
        """Say offline explicitly (a clean disconnect does not fire the Last Will)."""
        self._closing = True
        if self.connected.is_set():
            offline = encode_message(AgentStatus(self.agent_id, "offline"))
            info = self.client.publish(
                agent_status_topic(self.agent_id), offline, qos=QOS, retain=True
            )
            info.wait_for_publish(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused agent %s: %s (check id and secret)", self.agent_id, reason)
            self._link_problem = f"the broker refused this agent ({reason})"
            self._retry_later()
            return
        self._link_problem = None
        self.backoff.reset()
        client.subscribe(
            [
                (agent_tasks_topic(self.agent_id), QOS),
                (agent_events_topic(self.agent_id), QOS),
                (COORDINATOR_STATUS_TOPIC, QOS),
            ]
        )
        if self._model_subscription is not None:  # a model download in progress
            client.subscribe(self._model_subscription, QOS)
        self._publish_status()
        self.connected.set()
        log.info("connected to broker %s:%d", self.address.host, self.address.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        if self._closing:
            log.info("disconnected from the broker")
            return
        log.warning("disconnected from the broker (%s); reconnecting with backoff", reason)
        self._link_problem = f"lost the link to the broker ({reason})"
        self._retry_later()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        broker = f"{self.address.host}:{self.address.port}"
        self._link_problem = f"cannot connect to the broker at {broker}"
        self._retry_later()

    def _retry_later(self) -> None:
        """Set the wait before paho's next try (paho counts whole seconds: at least 1)."""
        delay = max(1, round(self.backoff.failed()))
        self.client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            with self._changed:
                self._store(message.topic, bytes(message.payload))
                self._changed.notify_all()
        except BitfleetError as error:
            log.warning("ignored message on %s: %s", message.topic, error)

    def _store(self, topic: str, payload: bytes) -> None:
        if topic == agent_tasks_topic(self.agent_id):
            self._task = parse_message(Task, payload) if payload else None
        elif topic == COORDINATOR_STATUS_TOPIC:
            if payload == COORDINATOR_ONLINE:  # (re)started, or we reconnected: resend
                self._coordinator_offline = False
                self.coordinator_returns += 1
            elif payload == COORDINATOR_OFFLINE:  # stopped, or its Last Will
                self._coordinator_offline = True
        elif topic == agent_events_topic(self.agent_id):
            receipt = parse_message(UploadReceipt, payload)
            self._receipts[(receipt.job_id, receipt.round)] = receipt
        elif payload:
            self._models[topic] = payload

    # work
    def next_task(self, timeout: float, seen: Task | None = None) -> Task | None:
        """Also returns early when the coordinator comes or goes, for the agent to resend
        what it holds (or note the outage) at once."""
        with self._changed:
            coordinator = (self.coordinator_returns, self._coordinator_offline)
            self._changed.wait_for(
                lambda: (
                    (self._task is not None and self._task != seen)
                    or (self.coordinator_returns, self._coordinator_offline) != coordinator
                ),
                timeout,
            )
            return self._task

    def fetch_model(self, task: Task, timeout: float) -> bytes:
        """Subscribe to the round's retained sealed model (or its slices) and open it with
        the task's key. A round published anew (a restarted coordinator seals it under
        another key) replaces the slices first and the task after: slices that do not
        match the task are waited past, and once the task changes the download is given
        up at once (an outage: the agent takes the new task)."""
        subscription, _ = round_model_topics(task.job_id, task.round, task.model_chunks)
        with self._changed:
            self._models = {}
        self._model_subscription = subscription
        self.client.subscribe(subscription, QOS)
        opened: list[bytes] = []

        def ready() -> bool:
            if self._task != task:
                return True
            with contextlib.suppress(FrameError):  # not this task's model: wait for its own
                model = open_round_model(task, self._models)
                opened[:] = [model] if model is not None else []
            return bool(opened)

        try:
            with self._changed:
                self._changed.wait_for(ready, timeout)
                replaced = self._task != task
                received = dict(self._models)
        finally:
            self._model_subscription = None
            self.client.unsubscribe(subscription)
        where = f"model of {task.job_id} round {task.round}"
        if opened:
            return opened[0]
        if replaced:
            raise TransportTimeout(f"{where}: the task changed while it downloaded")
        model = open_round_model(task, received)  # raises if it is not the task's model
        if model is None:
            raise TransportTimeout(f"{where} did not arrive")
        return model

    def decline(self, decline: Decline) -> None:
        topic = decline_topic(decline.job_id, decline.round, self.agent_id)
        info = self.client.publish(topic, encode_message(decline), qos=QOS)
        try:
            info.wait_for_publish(timeout=10)
        except (RuntimeError, ValueError) as error:  # paho: not connected, queue full
            raise TransportTimeout(f"decline not sent: {error}") from None

    def upload(self, task: Task, frame: bytes, timeout: float) -> UploadReceipt | None:
        """Publish the update once connected (never queue copies while the broker is away:
        the agent's outbox resends) and wait for the receipt — or until the coordinator
        (re)appears, when this send may have gone to nobody and the outbox resends at once."""
        topic = update_topic(task.job_id, task.round, self.agent_id)
        key = (task.job_id, task.round)
        with self._changed:
            self._receipts.pop(key, None)
            returns = self.coordinator_returns
        if not self.connected.wait(timeout):
            return None
        for chunk in split_frame(frame, self.max_message_bytes):
            self.client.publish(topic, chunk, qos=QOS)
        with self._changed:
            self._changed.wait_for(
                lambda: key in self._receipts or self.coordinator_returns != returns, timeout
            )
            return self._receipts.get(key)
