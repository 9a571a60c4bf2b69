"""Mosquitto configuration owned by the coordinator: password file and per-agent ACL.

Agents log in to the broker with their enrollment pair (user = agent id, password = secret)
and may write only under their own id and read only under their own id (their tasks,
receipts and the models of rounds they were selected for); the coordinator user reads and
writes the whole tree. Client ids are bound to user names (``use_username_as_clientid``):
an agent connecting with another client's id cannot knock that client off the broker.
No agent id may be the coordinator's user name (``protocol.RESERVED_AGENT_IDS``).

:func:`write_broker_files` writes the broker's files: ``bitfleet.conf`` (listener, TLS,
password file, ACL) for the ``include_dir`` of a packaged broker (Debian's
``/etc/mosquitto/conf.d``), and ``mosquitto.conf``, the same lines under the settings of a
broker of our own (the demo cluster, the tests, the compose file). :class:`BrokerCredentials`
rewrites the password file after every enrollment or revocation and has the broker reload
it: a command (``systemctl reload mosquitto`` through sudo or polkit, for a broker running
as its own user) or SIGHUP to a pid file (a broker running as ours).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import logging
import os
import pwd
import signal
import stat
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bitfleet.atomicfile import write_atomic
from bitfleet.chunks import DEFAULT_CHUNK_BYTES
from bitfleet.errors import ConfigError
from bitfleet.protocol import AGENT_PUBLISHES, AGENT_SUBSCRIBES, TOPIC_ROOT
from bitfleet.server.state import StateStore

log = logging.getLogger("bitfleet.broker")

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) hashes

PRIVATE = 0o600  # the broker runs as our user (its own container, the demo, the tests)
GROUP_READABLE = 0o640  # a packaged broker runs as its own user and reads through the group
RELOAD_TIMEOUT_S = 30.0

AGENT_ACL = "".join(
    [f"pattern write {topic}\n" for topic in AGENT_PUBLISHES]
    + [f"pattern read {topic}\n" for topic in AGENT_SUBSCRIBES]
)


def acl_text(coordinator_users: Iterable[str]) -> str:
    """The ACL: each coordinator user (one per worker of a deployment) reads and writes the
    whole tree, agents only under their own id."""
    blocks = "".join(
        f"user {user}\ntopic readwrite {TOPIC_ROOT}/#\n\n" for user in coordinator_users
    )
    return f"# bitfleet broker ACL: agents write only under their own id.\n{blocks}{AGENT_ACL}"


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """A mosquitto password-file line (``$7$``: PBKDF2-SHA512)."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encoded_salt = base64.b64encode(salt).decode()
    encoded_hash = base64.b64encode(digest).decode()
    return f"{user}:$7${PBKDF2_ITERATIONS}${encoded_salt}${encoded_hash}"


def write_password_file(
    path: Path,
    users: dict[str, str],
    mode: int = PRIVATE,
    known: dict[tuple[str, str], str] | None = None,
) -> None:
    """Atomically replace the password file: the broker never reads half a file. ``known``
    keeps each (user, password)'s line between rewrites, so a rewrite hashes only the new
    ones (without it, enrolling N agents one by one cost N²/2 PBKDF2 hashes: 1,000 agents
    took minutes, measured with ``bitfleet bench fleet``)."""
    cache = {} if known is None else known
    lines = []
    for user, password in sorted(users.items()):
        line = cache.get((user, password))
        if line is None:
            line = cache[user, password] = password_line(user, password)
        lines.append(line + "\n")
    for stale in set(cache) - set(users.items()):
        del cache[stale]  # revoked agents' lines go with them
    write_atomic(path, "".join(lines).encode(), mode)


def check_group_directory(directory: Path, group: str) -> None:
    """The broker's user reads our files through ``group``, so each must belong to it from
    its creation: the directory's setgid bit does that. (A chgrp after writing would leave
    the broker a moment of unreadable file, and needs a membership we should not have.)"""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"--broker-group {group}: no such group on this machine") from None
    try:
        info = directory.stat()
    except FileNotFoundError:
        info = None
    if info is None or info.st_gid != gid or not info.st_mode & stat.S_ISGID:
        raise ConfigError(
            f"{directory} must be a directory of group {group} with the setgid bit, so that "
            f"{group} can read every file the coordinator writes there: "
            f"sudo install -d -o {_own_user() or 'USER'} -g {group} -m 2750 {directory}"
        )


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
    config: Path  # a whole configuration, for a broker of our own
    include: Path  # the listener alone, for the include_dir of a packaged broker
    passwords: Path
    acl: Path
    pid: Path


# Per client, what the broker holds for it while its in-flight window is full: a round's
# uploads at several thousand agents. An agent flooding its update topic can make the
# coordinator's queue this big, no bigger; past it, mosquitto drops (agents resend).
MAX_QUEUED_MESSAGES = 200_000
MAX_QUEUED_BYTES = 512 << 20


def write_broker_files(
    directory: Path,
    port: int,
    coordinator_logins: dict[str, str],
    host: str = "127.0.0.1",
    max_packet_bytes: int = 4 * DEFAULT_CHUNK_BYTES,
    tls: BrokerTls | None = None,
    mode: int = PRIVATE,
) -> BrokerFiles:
    """A mosquitto configuration: authenticated listener (TLS when ``tls`` is given),
    password file (``coordinator_logins``: user -> password of each coordinator worker),
    per-agent ACL, client ids bound to user names; every file ``mode``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        directory / "mosquitto.conf",
        directory / "bitfleet.conf",
        directory / "passwords",
        directory / "acl",
        directory / "mosquitto.pid",
    )
    write_password_file(files.passwords, coordinator_logins, mode)
    write_atomic(files.acl, acl_text(coordinator_logins).encode(), mode)
    # Authentication is global in mosquitto (per_listener_settings false): a broker that
    # includes this listener serves bitfleet alone.
    listener = (
        f"listener {port} {host}\n"
        f"{tls.listener_lines() if tls else ''}"
        "allow_anonymous false\n"
        "use_username_as_clientid true\n"
        f"password_file {files.passwords}\n"
        f"acl_file {files.acl}\n"
        f"max_packet_size {max_packet_bytes}\n"
        # mosquitto queues 1,000 messages per client by default and drops the rest: the
        # coordinator, taking a round's uploads and statuses in a burst, lost uploads at
        # 1,000 agents (each then resent after the agent's 15 s receipt wait). Bound the
        # queue by bytes instead.
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        f"max_queued_bytes {MAX_QUEUED_BYTES}\n"
    )
    write_atomic(
        files.include,
        f"# bitfleet's listener (the coordinator writes it)\n{listener}".encode(),
        mode,
    )
    # Started as root, mosquitto drops to the user named here (its default user could not
    # read files that are ours alone); started as anyone else, it ignores the line.
    user = _own_user()
    own_broker = (
        (f"user {user}\n" if user else "")
        + f"pid_file {files.pid}\n"
        + "persistence false\n"
        + "log_dest stderr\n"
        + "log_type error\nlog_type warning\nlog_type notice\n"
    )
    write_atomic(files.config, (own_broker + listener).encode(), mode)
    return files


def _own_user() -> str | None:
    """The name of the user we run as (None without a passwd entry, as in some containers)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


@dataclass
class BrokerCredentials:
    """Keeps the broker's password file equal to the coordinator workers' logins (user ->
    password) + enrolled, unrevoked agents."""

    store: StateStore
    password_file: Path
    coordinator_logins: dict[str, str]
    pid_file: Path | None = None
    reload_command: list[str] | None = None
    mode: int = PRIVATE
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _lines: dict[tuple[str, str], str] = field(default_factory=dict)

    def sync(self) -> None:
        """Rewrite the password file; enrollments run in parallel threads, so one at a time
        (an older agent list must never replace a newer one)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        users = dict(self.coordinator_logins)
        for agent in self.store.list_agents():
            secret = self.store.agent_secret(agent.agent_id)
            if agent.agent_id in self.coordinator_logins:
                log.error(
                    "agent id %r is the coordinator's broker user: it gets no broker login "
                    "(revoke it with 'bitfleet agents revoke %s')",
                    agent.agent_id,
                    agent.agent_id,
                )
            elif secret is not None:
                users[agent.agent_id] = secret
        write_password_file(self.password_file, users, self.mode, self._lines)
        self._reload()

    def _reload(self) -> None:
        """Ask the broker to reread the password file; a broker that is down reads it when it
        starts, so a failure is a warning, never an enrollment refused."""
        if self.reload_command is not None:
            try:
                done = subprocess.run(
                    self.reload_command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=RELOAD_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                log.warning("broker reload command failed: %s", error)
                return
            if done.returncode != 0:
                said = " ".join(done.stderr.decode(errors="replace").split())[-500:]
                log.warning("broker reload command exited %d: %s", done.returncode, said)
            return
        if self.pid_file is None:
            return
        try:
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as error:
            log.warning("could not signal the broker to reload its passwords: %s", error)
