"""One MQTT client setup for both sides: MQTT 5 with paho's v2 callbacks, TLS, a Last Will.

The coordinator's bridge and the agent's transport differ in what they subscribe to and
publish, not in how a client is made; this is that common part. ``bitfleet`` itself needs
only numpy: paho-mqtt, which both the agent and the server extras carry, is imported when a
client is made (as numba is only when present), so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitfleet.protocol import BrokerAddress
from bitfleet.tls import mqtt_tls_options

QOS = 1  # every bitfleet message is at-least-once; receipts make redelivery harmless
KEEPALIVE_S = 30

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def new_client(
    address: BrokerAddress,
    client_id: str,
    will: tuple[str, bytes],
    *,
    username: str | None,
    password: str | None,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> mqtt.Client:
    """A client for ``address`` that, when its link dies, leaves ``will`` retained."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    if address.tls:
        client.tls_set(**mqtt_tls_options(ca_file, client_cert, client_key))
    topic, payload = will
    client.will_set(topic, payload, qos=QOS, retain=True)
    # A callback that raises must not end paho's network loop (it would, silently).
    client.suppress_exceptions = True
    return client


def connect_in_background(client: mqtt.Client, address: BrokerAddress) -> None:
    """Connect and run the network loop on paho's thread; paho reconnects by itself."""
    client.connect_async(address.host, address.port, keepalive=KEEPALIVE_S)
    client.loop_start()
