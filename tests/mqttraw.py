"""A bare paho client for tests that speak MQTT to the broker directly, as an attacker or
a probe would, without bitfleet's transports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bitfleet.tls import mqtt_tls_options
from tests.cluster import Broker


@contextmanager
def raw_client(
    broker: Broker, user: str, password: str, client_id: str
) -> Iterator[tuple[mqtt.Client, list[tuple[str, bytes]], threading.Event]]:
    """A bare paho client logged in as ``user``: (client, messages seen, disconnected)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    if broker.tls is not None:
        client.tls_set(**mqtt_tls_options())
    seen: list[tuple[str, bytes]] = []
    connected, dropped = threading.Event(), threading.Event()
    client.on_connect = lambda c, u, f, reason, p: (
        connected.set() if not reason.is_failure else None
    )
    client.on_disconnect = lambda c, u, f, reason, p: dropped.set()
    client.on_message = lambda c, u, message: seen.append((message.topic, bytes(message.payload)))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10), f"{user} could not connect"
    try:
        yield client, seen, dropped
    finally:
        client.disconnect()
        client.loop_stop()
