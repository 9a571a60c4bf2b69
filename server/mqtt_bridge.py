"""The coordinator's MQTT transport: presence and uploads in, rounds and receipts out.

paho-mqtt 2 (callback API v2), MQTT 5, QoS 1. Subscriptions are made in ``on_connect`` so a
reconnect restores them, and each (re)connect republishes the open rounds: a broker that
restarted without persistence gets its retained models and tasks back.

Every inbound message is hostile until checked: whatever it holds, it is refused with a
reason counted in ``bitfleet_messages_refused_total`` (or answered with a receipt), and
nothing it does can stop the network thread. A round's model is published once, sealed
(:mod:`bitfleet.sealing`); each selected agent's task, on its own topic, carries the key.

Several workers of one deployment subscribe to uploads in one shared-subscription group, so
the broker hands each upload message to one of them. Each keeps the coordinator's status
topic online while it lives: a worker that dies leaves its Last Will (offline) there, and the
others answer it with online, which also tells agents to resend what they hold.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt

from bitfleet.chunks import CHUNK_MAGIC, DEFAULT_CHUNK_BYTES, Reassembler
from bitfleet.errors import BitfleetError
from bitfleet.frames import FrameError
from bitfleet.mqttclient import QOS, connect_in_background, new_client
from bitfleet.protocol import (
    ALL_DECLINE_TOPICS,
    ALL_STATUS_TOPICS,
    ALL_UPDATE_TOPICS,
    COORDINATOR_OFFLINE,
    COORDINATOR_ONLINE,
    COORDINATOR_STATUS_TOPIC,
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
    round_model_topics,
)
from bitfleet.sealing import SealedModel, seal
from bitfleet.server.service import FleetHandlers
from bitfleet.server.upload_batches import UploadBatches
from bitfleet.server.uploads import Upload

log = logging.getLogger("bitfleet.mqtt")
# At most one log line per refusal reason in this many seconds: a flood stays a counter.
REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class _SealedRound:
    """A round's model, sealed, and the retained messages that carry it."""

    model: bytes
    sealed: SealedModel
    messages: list[tuple[str, bytes]]

    @classmethod
    def of(
        cls, model: bytes, job_id: str, round_index: int, max_message_bytes: int
    ) -> _SealedRound:
        sealed = seal(model)
        slices = sealed.slices(max_message_bytes)
        _, topics = round_model_topics(job_id, round_index, len(slices))
        return cls(model, sealed, list(zip(topics, slices, strict=True)))


class MqttBridge:
    """Adapts the broker's messages to the fleet handlers, and publishes what they send out
    (a :class:`~bitfleet.server.service.Transport`, added by the composition root)."""

    def __init__(
        self,
        fleet: FleetHandlers,
        url: str,
        client_id: str = "bitfleet-coordinator",
        max_message_bytes: int = DEFAULT_CHUNK_BYTES,
        shared_group: str | None = None,
        worker_id: str | None = None,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> None:
        self.fleet = fleet
        self.address = parse_mqtt_url(url)
        self.max_message_bytes = max_message_bytes
        self.shared_group = shared_group
        self.connected = threading.Event()
        self._reassembler = Reassembler(max_frame_bytes=fleet.uploads.max_frame_bytes)
        self._uploads = UploadBatches(fleet.uploads, fleet.conditions)
        # Per open round, its sealed model and the retained topics it is on: a republished
        # round keeps its key, so tasks already out stay good.
        self._sealed: dict[tuple[str, int], _SealedRound] = {}
        self._refusals_logged: dict[str, float] = {}
        self.client = new_client(
            self.address,
            f"{client_id}-{worker_id}" if shared_group and worker_id else client_id,
            (COORDINATOR_STATUS_TOPIC, COORDINATOR_OFFLINE),
            username=self.address.username,
            password=self.address.password,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
        )
        # Short backoff: a restarted broker must cost a round seconds, not half a minute.
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        self._uploads.start()
        connect_in_background(self.client, self.address)

    def is_up(self) -> bool:
        return self.connected.is_set()

    def stop(self) -> None:
        if self.connected.is_set():
            info = self.client.publish(
                COORDINATOR_STATUS_TOPIC, COORDINATOR_OFFLINE, qos=QOS, retain=True
            )
            info.wait_for_publish(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()
        self._uploads.stop()

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
        topics = [(ALL_STATUS_TOPICS, QOS), (ALL_UPDATE_TOPICS, QOS), (ALL_DECLINE_TOPICS, QOS)]
        if self.shared_group:
            topics[1] = (f"$share/{self.shared_group}/{ALL_UPDATE_TOPICS}", QOS)
            topics.append((COORDINATOR_STATUS_TOPIC, QOS))
        client.subscribe(topics)
        self.connected.set()
        log.info("connected to broker %s:%d", self.address.host, self.address.port)
        try:
            self.fleet.scheduler.republish()
        finally:
            # Last: agents that see it resend the uploads they hold, now that we listen.
            client.publish(COORDINATOR_STATUS_TOPIC, COORDINATOR_ONLINE, qos=QOS, retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from the broker (%s); reconnecting", reason)

    # inbound
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = bytes(message.payload)
            if message.topic == COORDINATOR_STATUS_TOPIC:
                self._coordinator_status(payload)
            elif message.topic.endswith("/status"):
                self._status(message.topic, payload)
            elif "/declines/" in message.topic:
                self._decline(message.topic, payload)
            else:
                self._update(message.topic, payload)
        except BitfleetError as error:
            self._refuse(getattr(error, "reason", "protocol"), message.topic, str(error))
        except Exception as error:  # a bug in our code: counted, logged once, thread lives on
            self.fleet.metrics.messages_refused.inc(reason="internal")
            self.fleet.conditions.failing("mqtt inbound", repr(error), traceback=True)

    def _refuse(self, reason: str, topic: str, detail: str) -> None:
        """Count a refused message; log it unless this reason was logged just now."""
        self.fleet.metrics.messages_refused.inc(reason=reason)
        now = time.monotonic()
        if (
            now - self._refusals_logged.get(reason, -REFUSAL_LOG_INTERVAL_S)
            >= REFUSAL_LOG_INTERVAL_S
        ):
            self._refusals_logged[reason] = now
            log.warning("refused message on %.200s (%s): %.300s", topic, reason, detail)

    def _coordinator_status(self, payload: bytes) -> None:
        """Another worker went offline (its Last Will): the deployment is still up."""
        if payload == COORDINATOR_OFFLINE and self.connected.is_set():
            self.client.publish(COORDINATOR_STATUS_TOPIC, COORDINATOR_ONLINE, qos=QOS, retain=True)

    def _status(self, topic: str, payload: bytes) -> None:
        agent_id = parse_status_topic(topic)
        if not payload:  # a cleared retained status
            return
        status = parse_message(AgentStatus, payload)
        if status.agent_id != agent_id:
            self._refuse("mismatch", topic, f"status names another agent {status.agent_id}")
            return
        online = status.state != "offline"
        if not self.fleet.registry.presence(agent_id, online, "mqtt", status.capabilities or None):
            self._refuse("unknown_agent", topic, f"status from unknown or revoked {agent_id}")

    def _decline(self, topic: str, payload: bytes) -> None:
        job_id, round_index, agent_id = parse_update_topic(topic, "declines")
        decline = parse_message(Decline, payload)
        if (decline.job_id, decline.round, decline.agent_id) != (job_id, round_index, agent_id):
            self._refuse("mismatch", topic, "decline names another job, round or agent")
            return
        self.fleet.tasks.decline(job_id, round_index, agent_id, decline.reason)

    def _update(self, topic: str, payload: bytes) -> None:
        job_id, round_index, agent_id = parse_update_topic(topic)
        try:
            if self.shared_group and payload[:4] == CHUNK_MAGIC:  # its siblings go elsewhere
                raise FrameError(
                    "chunked",
                    "workers sharing uploads take each in one message: the agent's "
                    "--max-message-bytes must exceed its update",
                )
            frame = self._reassembler.feed(payload, source=agent_id)
        except FrameError as error:
            self.fleet.uploads.receipt(job_id, round_index, agent_id, error.reason, "mqtt")
            return
        if frame is not None:
            self._uploads.submit(Upload(job_id, round_index, agent_id, frame, "mqtt"))

    # outbound (a Publisher of the fan-out)
    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None:
        """The round's sealed model on its retained topic (in slices if needed), then each
        agent's task with the key."""
        self._clear_model(job_id, round_index - 1)
        held = self._sealed_round(job_id, round_index, model)
        for topic, part in held.messages:
            self.client.publish(topic, part, qos=QOS, retain=True)
        for agent_id, task in tasks.items():
            keyed = replace(
                task,
                model_chunks=len(held.messages),
                model_key=held.sealed.key,
                model_sha256=held.sealed.sha256,
            )
            message = encode_message(keyed)
            self.client.publish(agent_tasks_topic(agent_id), message, qos=QOS, retain=True)

    def _sealed_round(self, job_id: str, round_index: int, model: bytes) -> _SealedRound:
        """The round's model sealed once (sealed anew only if the model changed)."""
        held = self._sealed.get((job_id, round_index))
        if held is None or held.model != model:
            held = _SealedRound.of(model, job_id, round_index, self.max_message_bytes)
            self._sealed[(job_id, round_index)] = held
        return held

    def _clear_model(self, job_id: str, round_index: int) -> None:
        """Drop a finished round's retained model so the broker does not keep every round."""
        held = self._sealed.pop((job_id, round_index), None)
        for topic, _ in held.messages if held else []:
            self.client.publish(topic, b"", qos=QOS, retain=True)

    def withdraw_tasks(self, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            self.client.publish(agent_tasks_topic(agent_id), b"", qos=QOS, retain=True)

    def publish_receipt(self, receipt: UploadReceipt) -> None:
        self.client.publish(agent_events_topic(receipt.agent_id), encode_message(receipt), qos=QOS)
