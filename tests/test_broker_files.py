"""The broker's password file: mosquitto's $7$ lines, rewritten without rehashing everyone."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from bitfleet.protocol import TOPIC_ROOT, update_topic
from bitfleet.server.broker import PBKDF2_ITERATIONS, write_password_file
from tests.cluster import Broker
from tests.mqttraw import raw_client


def _lines(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def _verifies(line: str, password: str) -> bool:
    _, kind, iterations, salt, digest = line.split("$")
    assert (kind, int(iterations)) == ("7", PBKDF2_ITERATIONS)
    again = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return again == base64.b64decode(digest)


def test_a_rewrite_hashes_only_new_users_and_forgets_removed_ones(tmp_path: Path) -> None:
    path, known = tmp_path / "passwd", {}
    write_password_file(path, {"coordinator": "c-pw", "a1": "s1"}, known=known)
    first = _lines(path)
    write_password_file(path, {"coordinator": "c-pw", "a1": "s1", "a2": "s2"}, known=known)
    second = _lines(path)
    assert second["a1"] == first["a1"] and second["coordinator"] == first["coordinator"]
    assert all(_verifies(second[user], pw) for user, pw in (("a1", "s1"), ("a2", "s2")))
    write_password_file(path, {"coordinator": "c-pw", "a2": "s2-new"}, known=known)
    third = _lines(path)
    assert set(third) == {"coordinator", "a2"} and _verifies(third["a2"], "s2-new")
    assert set(known) == {("coordinator", "c-pw"), ("a2", "s2-new")}  # no stale secrets kept


def test_a_busy_coordinator_loses_none_of_a_rounds_burst(tmp_path: Path, tls_ca: Any) -> None:
    """Real mosquitto with the files bitfleet writes: the coordinator's client is held (as a
    coordinator busy closing a round holds its network thread) while 3,000 uploads arrive;
    mosquitto's default queue of 1,000 messages per client dropped the rest."""
    broker = Broker(tmp_path / "broker", worker_users=["w2"], tls=tls_ca).start()
    burst = 3000
    held = threading.Event()
    try:
        with (
            raw_client(broker, broker.user, broker.password, "slow") as (slow, seen, _),
            raw_client(broker, "w2", broker.worker_passwords["w2"], "w2") as (sender, _, _),
        ):

            def take(client: Any, userdata: Any, message: Any) -> None:
                held.wait(60)
                seen.append((message.topic, bytes(message.payload)))

            slow.on_message = take
            subscribed = threading.Event()
            slow.on_subscribe = lambda *args: subscribed.set()
            slow.subscribe(f"{TOPIC_ROOT}/jobs/+/rounds/+/updates/+", qos=1)
            assert subscribed.wait(10)
            sent = [
                sender.publish(update_topic("j", 0, f"a{i}"), b"u" * 1000, qos=1)
                for i in range(burst)
            ]
            for info in sent:
                info.wait_for_publish(timeout=30)
            held.set()
            deadline = time.monotonic() + 60
            while len(seen) < burst and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        held.set()
        broker.stop()
    assert len({topic for topic, _ in seen}) == burst
    log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert "dropped" not in log
