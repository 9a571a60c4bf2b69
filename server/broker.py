"""Mosquitto configuration owned by the coordinator: password file and per-agent ACL.

Agents log in to the broker with their enrollment pair (user = agent id, password = secret)
and may write only under their own id and read only under their own id (their tasks,
receipts and the models of rounds they were selected for); the coordinator user reads and
writes the whole tree. Client ids are bound to user names (``use_username_as_clientid``):
an agent connecting with another client's id cannot knock that client off the broker.
No agent id may be the coordinator's user name (``protocol.RESERVED_AGENT_IDS``).

:func:`write_broker_files` writes a complete broker configuration (used by the demo
cluster, the tests and the Docker image); :class:`BrokerCredentials` rewrites the password
file after every enrollment or revocation and asks the broker to reload it (SIGHUP).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bitfleet.atomicfile import write_atomic
from bitfleet.chunks import DEFAULT_CHUNK_BYTES
from bitfleet.protocol import TOPIC_ROOT
from bitfleet.server.state import StateStore

log = logging.getLogger("bitfleet.broker")

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) hashes

ACL_TEMPLATE = f"""# bitfleet broker ACL: agents write only under their own id.
user {{coordinator}}
topic readwrite {TOPIC_ROOT}/#

pattern write {TOPIC_ROOT}/agents/%u/status
pattern read {TOPIC_ROOT}/agents/%u/tasks
pattern read {TOPIC_ROOT}/agents/%u/events
pattern read {TOPIC_ROOT}/agents/%u/models/#
pattern read {TOPIC_ROOT}/coordinator/status
pattern write {TOPIC_ROOT}/jobs/+/rounds/+/updates/%u
pattern write {TOPIC_ROOT}/jobs/+/rounds/+/declines/%u
"""


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """A mosquitto password-file line (``$7$``: PBKDF2-SHA512)."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encoded_salt = base64.b64encode(salt).decode()
    encoded_hash = base64.b64encode(digest).decode()
    return f"{user}:$7${PBKDF2_ITERATIONS}${encoded_salt}${encoded_hash}"


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Atomically replace the password file (0600)."""
    lines = "".join(password_line(u, p) + "\n" for u, p in sorted(users.items()))
    write_atomic(path, lines.encode())


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS listener: its certificate and key (paths as the broker sees them)
    and, for mutual TLS, the CA whose client certificates agents must present besides
    their password."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def listener_lines(self) -> str:
        lines = f"certfile {self.cert}\nkeyfile {self.key}\ntls_version tlsv1.2\n"
        if self.client_ca is None:
            return lines + "require_certificate false\n"
        return lines + f"cafile {self.client_ca}\nrequire_certificate true\n"


@dataclass
class BrokerFiles:
    config: Path
    passwords: Path
    acl: Path
    pid: Path


def write_broker_files(
    directory: Path,
    port: int,
    coordinator_user: str,
    coordinator_password: str,
    host: str = "127.0.0.1",
    max_packet_bytes: int = 4 * DEFAULT_CHUNK_BYTES,
    tls: BrokerTls | None = None,
) -> BrokerFiles:
    """A mosquitto configuration: authenticated listener (TLS when ``tls`` is given),
    password file, per-agent ACL, client ids bound to user names."""
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        directory / "mosquitto.conf",
        directory / "passwords",
        directory / "acl",
        directory / "mosquitto.pid",
    )
    write_password_file(files.passwords, {coordinator_user: coordinator_password})
    files.acl.write_text(ACL_TEMPLATE.format(coordinator=coordinator_user))
    files.config.write_text(
        # Run as the user owning these files (mosquitto started as root drops to its own
        # user by default, which could not read the 0600 password file).
        f"user {getpass.getuser()}\n"
        f"listener {port} {host}\n"
        f"{tls.listener_lines() if tls else ''}"
        "allow_anonymous false\n"
        "use_username_as_clientid true\n"
        f"password_file {files.passwords}\n"
        f"acl_file {files.acl}\n"
        f"pid_file {files.pid}\n"
        "persistence false\n"
        f"max_packet_size {max_packet_bytes}\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    return files


@dataclass
class BrokerCredentials:
    """Keeps the broker's password file equal to coordinator + enrolled, unrevoked agents."""

    store: StateStore
    password_file: Path
    coordinator_user: str
    coordinator_password: str
    pid_file: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self) -> None:
        """Rewrite the password file; enrollments run in parallel threads, so one at a time
        (an older agent list must never replace a newer one)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        users = {self.coordinator_user: self.coordinator_password}
        for agent in self.store.list_agents():
            secret = self.store.agent_secret(agent.agent_id)
            if agent.agent_id == self.coordinator_user:
                log.error(
                    "agent id %r is the coordinator's broker user: it gets no broker login "
                    "(revoke it with 'bitfleet agents revoke %s')",
                    agent.agent_id,
                    agent.agent_id,
                )
            elif secret is not None:
                users[agent.agent_id] = secret
        write_password_file(self.password_file, users)
        self._reload()

    def _reload(self) -> None:
        if self.pid_file is None:
            return
        try:
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as error:
            log.warning("could not signal the broker to reload its passwords: %s", error)
