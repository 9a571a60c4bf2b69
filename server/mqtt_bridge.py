"""The coordinator's MQTT transport: presence and uploads in, rounds and receipts out.

paho-mqtt 2 (callback API v2), MQTT 5, QoS 1. Subscriptions are made in ``on_connect`` so a
reconnect restores them, and each (re)connect republishes the open rounds: a broker that
restarted without persistence gets its retained models and tasks back.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from server.engine import RoundEngine
from shared.chunks import DEFAULT_CHUNK_BYTES, Reassembler, split_frame
from shared.errors import BitfleetError
from shared.frames import FrameError
from shared.protocol import (
    ALL_DECLINE_TOPICS,
    ALL_STATUS_TOPICS,
    ALL_UPDATE_TOPICS,
    AgentStatus,
    Decline,
    Task,
    UploadReceipt,
    agent_events_topic,
    agent_tasks_topic,
    encode_message,
    parse_message,
    parse_mqtt_url,
    parse_status_topic,
    parse_update_topic,
    round_model_topic,
)

log = logging.getLogger("bitfleet.mqtt")
QOS = 1


class MqttBridge:
    """Connects the round engine to a broker; registers itself as an engine publisher."""

    def __init__(
        self,
        engine: RoundEngine,
        url: str,
        client_id: str = "bitfleet-coordinator",
        max_message_bytes: int = DEFAULT_CHUNK_BYTES,
        shared_group: str | None = None,
    ) -> None:
        self.engine = engine
        self.address = parse_mqtt_url(url)
        self.max_message_bytes = max_message_bytes
        self.shared_group = shared_group
        self.connected = threading.Event()
        self._reassembler = Reassembler(max_frame_bytes=engine.settings.max_frame_bytes)
        self._model_chunks: dict[tuple[str, int], int] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if self.address.username:
            self.client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        engine.publishers.append(self)

    def start(self) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # connection
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%d refused the coordinator (%s): check the user and password in "
                "--mqtt-url",
                self.address.host,
                self.address.port,
                reason,
            )
            return
        updates = ALL_UPDATE_TOPICS
        if self.shared_group:
            updates = f"$share/{self.shared_group}/{updates}"
        client.subscribe([(ALL_STATUS_TOPICS, QOS), (updates, QOS), (ALL_DECLINE_TOPICS, QOS)])
        self.connected.set()
        log.info("connected to broker %s:%d", self.address.host, self.address.port)
        self.engine.republish()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from the broker (%s); reconnecting", reason)

    # inbound
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            if message.topic.endswith("/status"):
                self._status(message.topic, payload)
            elif "/declines/" in message.topic:
                self._decline(message.topic, payload)
            else:
                self._update(message.topic, payload)
        except BitfleetError as error:
            log.warning("ignored message on %s: %s", message.topic, error)

    def _status(self, topic: str, payload: bytes) -> None:
        agent_id = parse_status_topic(topic)
        if not payload:  # a cleared retained status
            return
        status = parse_message(AgentStatus, payload)
        if status.agent_id != agent_id:
            log.warning("status on %s names another agent %s", topic, status.agent_id)
            return
        online = status.state != "offline"
        if not self.engine.agent_presence(agent_id, online, "mqtt", status.capabilities or None):
            log.warning("status from unknown or revoked agent %s ignored", agent_id)

    def _decline(self, topic: str, payload: bytes) -> None:
        job_id, round_index, agent_id = parse_update_topic(topic, "declines")
        decline = parse_message(Decline, payload)
        if (decline.job_id, decline.round, decline.agent_id) != (job_id, round_index, agent_id):
            log.warning("decline on %s names another job, round or agent", topic)
            return
        self.engine.decline(job_id, round_index, agent_id, decline.reason)

    def _update(self, topic: str, payload: bytes) -> None:
        job_id, round_index, agent_id = parse_update_topic(topic)
        try:
            frame = self._reassembler.feed(payload, source=topic)
        except FrameError as error:
            self.engine.receipt(job_id, round_index, agent_id, error.reason, "mqtt")
            return
        if frame is not None:
            self.engine.handle_upload(job_id, round_index, agent_id, frame, "mqtt")

    # outbound (engine Publisher)
    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None:
        self._clear_model(job_id, round_index - 1)
        chunks = split_frame(model, self.max_message_bytes)
        topic = round_model_topic(job_id, round_index)
        if len(chunks) == 1:
            self.client.publish(topic, model, qos=QOS, retain=True)
        else:
            for index, chunk in enumerate(chunks):
                self.client.publish(f"{topic}/{index}", chunk, qos=QOS, retain=True)
        self._model_chunks[(job_id, round_index)] = len(chunks)
        for agent_id, task in tasks.items():
            message = encode_message(replace(task, model_chunks=len(chunks)))
            self.client.publish(agent_tasks_topic(agent_id), message, qos=QOS, retain=True)

    def _clear_model(self, job_id: str, round_index: int) -> None:
        """Drop a finished round's retained model so the broker does not keep every round."""
        count = self._model_chunks.pop((job_id, round_index), 0)
        topic = round_model_topic(job_id, round_index) if round_index >= 0 else None
        if topic is None:
            return
        topics = [topic] if count <= 1 else [f"{topic}/{i}" for i in range(count)]
        for name in topics:
            self.client.publish(name, b"", qos=QOS, retain=True)

    def withdraw_tasks(self, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            self.client.publish(agent_tasks_topic(agent_id), b"", qos=QOS, retain=True)

    def publish_receipt(self, receipt: UploadReceipt) -> None:
        self.client.publish(agent_events_topic(receipt.agent_id), encode_message(receipt), qos=QOS)
