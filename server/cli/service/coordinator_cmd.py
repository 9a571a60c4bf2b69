"""``bitfleet coordinator``: run the coordinator service (REST API, round engine, MQTT)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitfleet.chunks import DEFAULT_CHUNK_BYTES
from bitfleet.cliargs import int_range, positive_float, positive_int, tcp_port
from bitfleet.client import TOKEN_ENV
from bitfleet.errors import ConfigError
from bitfleet.frames import DEFAULT_MAX_FRAME_BYTES
from bitfleet.protocol import BrokerAddress, check_id, parse_mqtt_url
from bitfleet.tls import CA_FILE_ENV, require_secure

if TYPE_CHECKING:
    from bitfleet.server.registry import AgentRegistry
    from bitfleet.server.scheduler import WorkerRole
    from bitfleet.server.state import StateStore

MQTT_URL_ENV = "BITFLEET_MQTT_URL"
STORE_ENV = "BITFLEET_STORE"
LONE_WORKER = "coordinator"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "coordinator",
        help="run the coordinator service",
        description=(
            "Serve the REST API (jobs, agents, fleet) with uvicorn, drive training rounds, and "
            "bridge to an MQTT broker when --mqtt-url is given (HTTP transport only otherwise)."
        ),
    )
    _serving_arguments(parser.add_argument_group("serving"))
    _mqtt_arguments(parser.add_argument_group("the MQTT link"))
    _broker_arguments(parser.add_argument_group("the broker's files (passwords, ACL, config)"))
    _limit_arguments(parser.add_argument_group("limits"))
    _worker_arguments(parser.add_argument_group("several workers (one deployment)"))
    parser.add_argument(
        "--provision-agents",
        type=Path,
        help='JSON list of {"agent_id": ..., "secret": ...} to enroll at start if missing '
        "(fleets provisioned by configuration management; the compose demo)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log verbosity (one line per event on stderr)",
    )
    parser.set_defaults(func=run)


def _serving_arguments(group: Any) -> None:
    group.add_argument("--data-dir", required=True, help="state directory (SQLite database)")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on")
    group.add_argument("--port", type=tcp_port, default=8080, help="port to listen on")
    group.add_argument(
        "--admin-token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for the control API (env {TOKEN_ENV})",
    )
    group.add_argument(
        "--no-admin-token",
        action="store_true",
        help="serve the control API without a token (local experiments only; unsafe)",
    )
    # Files are checked when the coordinator starts, not when its command line is parsed:
    # in a container they appear on a volume another service fills.
    group.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    group.add_argument("--tls-key", help="the private key of --tls-cert")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext HTTP or mqtt:// off loopback (agent secrets and the admin token "
        "then cross the network in clear)",
    )


def _mqtt_arguments(group: Any) -> None:
    group.add_argument(
        "--mqtt-url",
        default=os.environ.get(MQTT_URL_ENV),
        help=f"mqtt://[user:pass@]host:port of the broker (env {MQTT_URL_ENV})",
    )
    group.add_argument(
        "--ca-file",
        default=os.environ.get(CA_FILE_ENV),
        help=f"CA to verify an mqtts:// broker against (env {CA_FILE_ENV}; default: system CAs)",
    )
    group.add_argument(
        "--mqtt-client-cert", help="client certificate for a broker that requires one (mTLS)"
    )
    group.add_argument("--mqtt-client-key", help="the key of --mqtt-client-cert")
    group.add_argument(
        "--max-message-bytes",
        type=int_range(1024),
        default=DEFAULT_CHUNK_BYTES,
        help="largest MQTT message; bigger frames travel in chunks (default %(default)s)",
    )


def _worker_arguments(group: Any) -> None:
    group.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help="the state database: a postgresql://user:pass@host/db URL, shared by every "
        f"worker of a deployment (env {STORE_ENV}; default: SQLite at DATA_DIR/bitfleet.db)",
    )
    group.add_argument(
        "--worker-id",
        default=LONE_WORKER,
        help="this worker's name among the coordinators sharing --store, unique to it "
        "(default %(default)s: a lone coordinator)",
    )
    group.add_argument(
        "--leader-lease",
        type=positive_float,
        default=10.0,
        help="seconds the worker that leads the round engine keeps the lead unrenewed: "
        "another takes over this long after it dies (default %(default)s)",
    )
    group.add_argument(
        "--shared-subscription",
        metavar="GROUP",
        help="split the agents' uploads across the workers subscribed with this MQTT 5 "
        "shared-subscription group; needs a postgresql:// --store and a --worker-id",
    )


def _broker_arguments(group: Any) -> None:
    group.add_argument(
        "--broker-passwd-file",
        type=Path,
        help="mosquitto password file to keep in step with enrolled agents",
    )
    group.add_argument(
        "--broker-pid-file",
        type=Path,
        help="SIGHUP this broker to reload its password file (a broker running as our user)",
    )
    group.add_argument(
        "--broker-reload-command",
        help="run this after every password change to make the broker reload (no shell; e.g. "
        "'sudo -n systemctl reload mosquitto' for the packaged broker, which runs as its own "
        "user: docs/system-broker.md)",
    )
    group.add_argument(
        "--broker-config-dir",
        type=Path,
        help="write the broker configuration here, listening at the --mqtt-url port: "
        "passwords, acl, bitfleet.conf (the listener, for a packaged broker's include_dir, "
        "e.g. /etc/mosquitto/conf.d) and mosquitto.conf (all of it, for a broker of its own, "
        "e.g. in another container)",
    )
    group.add_argument(
        "--broker-worker-logins",
        type=Path,
        help='JSON list of {"user": ..., "password": ...}: the broker logins of the other '
        "coordinator workers of this deployment, kept in the password file and ACL beside "
        "this one's (each worker needs a broker user of its own)",
    )
    group.add_argument(
        "--broker-group",
        help="make the broker files readable by this group (0640; e.g. mosquitto, the packaged "
        "broker's user); their directory must be of this group with the setgid bit",
    )
    group.add_argument(
        "--broker-listen-host",
        default="0.0.0.0",
        help="interface the broker of --broker-config-dir listens on (default %(default)s)",
    )
    group.add_argument(
        "--broker-tls-cert",
        type=Path,
        help="the broker's certificate, as the broker sees the path: with --broker-config-dir "
        "and an mqtts:// --mqtt-url, the broker gets a TLS listener",
    )
    group.add_argument("--broker-tls-key", type=Path, help="the key of --broker-tls-cert")
    group.add_argument(
        "--broker-client-ca",
        type=Path,
        help="require agents to present a client certificate signed by this CA (mutual TLS)",
    )


def _limit_arguments(group: Any) -> None:
    group.add_argument(
        "--max-frame-bytes",
        type=int_range(1024),
        default=DEFAULT_MAX_FRAME_BYTES,
        help="largest update frame accepted (default %(default)s)",
    )
    group.add_argument(
        "--max-request-bytes",
        type=int_range(1024),
        help="largest request body of the control API, refused before it is read (default 16 MiB)",
    )
    group.add_argument(
        "--max-model-weights",
        type=positive_int,
        help="largest model a job may ask for, in weights (default 4,000,000)",
    )
    group.add_argument(
        "--presence-timeout",
        type=positive_float,
        default=30.0,
        help="seconds after which a silent HTTP agent counts as offline",
    )


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from bitfleet.server.api.app import create_app
        from bitfleet.server.api.limits import ApiLimits
        from bitfleet.server.mqtt_bridge import MqttBridge
        from bitfleet.server.service import Coordinator, CoordinatorSettings
        from bitfleet.server.state import open_store
    except ImportError as error:
        raise ConfigError(
            "the coordinator needs the server extra: pip install 'bitfleet[server]' "
            f"({error.name or error} is missing)"
        ) from None

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    broker = _checked_links(args)
    role = _checked_role(args)
    clock = time.time  # one clock for the store's stamps and the engine's deadlines
    store = open_store(args.store or args.data_dir, clock)
    try:
        settings = CoordinatorSettings(
            presence_timeout_s=args.presence_timeout,
            max_frame_bytes=args.max_frame_bytes,
            role=role,
            **_given(max_model_weights=args.max_model_weights),
        )
        coordinator = Coordinator(store, settings, clock)
        _admit_agents(args, broker, store, coordinator.registry)
        if broker is not None:
            bridge = MqttBridge(coordinator.fleet, args.mqtt_url, **_mqtt_options(args))
            coordinator.add_transport("mqtt", bridge)
        app = create_app(
            coordinator,
            None if args.no_admin_token else args.admin_token,
            ApiLimits(**_given(max_request_bytes=args.max_request_bytes)),
        )
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
        )
    finally:
        store.close()
    return 0


def _checked_role(args: argparse.Namespace) -> WorkerRole:
    """This coordinator's place among the workers of its deployment."""
    from bitfleet.server.scheduler import WorkerRole

    check_id(args.worker_id, "--worker-id")
    if args.shared_subscription is not None:
        check_id(args.shared_subscription, "--shared-subscription group")
        if not (args.store or "").startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "workers splitting uploads with --shared-subscription share their state "
                "through PostgreSQL: add --store postgresql://user:pass@host/db"
            )
        if args.worker_id == LONE_WORKER:
            raise ConfigError(
                "workers splitting uploads with --shared-subscription each need a name of "
                "their own: add --worker-id (e.g. the host name)"
            )
    return WorkerRole(worker_id=args.worker_id, lease_s=args.leader_lease)


def _admit_agents(
    args: argparse.Namespace,
    broker: BrokerAddress | None,
    store: StateStore,
    registry: AgentRegistry,
) -> None:
    """Who may connect: the broker user is no agent id, provisioned agents are enrolled,
    and the broker's password file follows the registry."""
    logins = _coordinator_logins(args, broker)
    registry.reserved_agent_ids.update(logins)
    if args.provision_agents is not None:
        provision_agents(registry, args.provision_agents)
    _keep_broker_files(args, broker, logins, store, registry)


# Bound on --broker-worker-logins: a few thousand workers' logins.
MAX_LOGINS_BYTES = 1 << 20


def _coordinator_logins(args: argparse.Namespace, broker: BrokerAddress | None) -> dict[str, str]:
    """Broker user -> password of this worker (from --mqtt-url) and of the other workers."""
    logins = {}
    if broker is not None and broker.username:
        logins[broker.username] = broker.password or ""
    path = args.broker_worker_logins
    if path is None:
        return logins
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LOGINS_BYTES + 1)
        if len(data) > MAX_LOGINS_BYTES:
            raise ValueError(f"larger than {MAX_LOGINS_BYTES} bytes")
        entries = json.loads(data)
        others = {check_id(str(e["user"]), "broker user"): str(e["password"]) for e in entries}
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as error:
        raise ConfigError(
            f"--broker-worker-logins {path}: expected a JSON list of "
            f'{{"user": ..., "password": ...}} ({error})'
        ) from None
    return {**others, **logins}


def _mqtt_options(args: argparse.Namespace) -> dict[str, Any]:
    """The MQTT bridge's options from the command line."""
    return {
        "max_message_bytes": args.max_message_bytes,
        "shared_group": args.shared_subscription,
        "worker_id": args.worker_id,
        "ca_file": args.ca_file,
        "client_cert": args.mqtt_client_cert,
        "client_key": args.mqtt_client_key,
    }


def _checked_links(args: argparse.Namespace) -> BrokerAddress | None:
    """Check the token, the TLS files and that every link is secure before anything starts;
    the broker's URL, if there is one."""
    if not args.admin_token and not args.no_admin_token:
        raise ConfigError(
            f"no admin token: pass --admin-token or set {TOKEN_ENV} (or --no-admin-token to "
            "run without one, for local experiments only)"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("HTTPS needs both --tls-cert and --tls-key")
    for flag in ("tls_cert", "tls_key", "ca_file", "mqtt_client_cert", "mqtt_client_key"):
        if getattr(args, flag) is not None and not Path(getattr(args, flag)).is_file():
            option = "--" + flag.replace("_", "-")
            raise ConfigError(f"{option} {getattr(args, flag)}: no such file")
    require_secure(args.host, args.tls_cert is not None, args.insecure, "the REST API on --host")
    broker = parse_mqtt_url(args.mqtt_url) if args.mqtt_url else None
    if broker is not None:
        require_secure(broker.host, broker.tls, args.insecure, "the broker link (--mqtt-url)")
    check_listen_address(args.host, args.port)
    if args.no_admin_token:
        logging.getLogger("bitfleet").warning(
            "INSECURE: the control API accepts requests without a token"
        )
    return broker


def _keep_broker_files(
    args: argparse.Namespace,
    broker: BrokerAddress | None,
    logins: dict[str, str],
    store: StateStore,
    registry: AgentRegistry,
) -> None:
    """Write the broker's files if asked, and keep its password file in step with the
    enrolled agents from now on."""
    from bitfleet.server.broker import (
        GROUP_READABLE,
        PRIVATE,
        BrokerCredentials,
        check_group_directory,
        write_broker_files,
    )

    passwords = args.broker_passwd_file
    if args.broker_config_dir is None and passwords is None:
        if args.broker_pid_file or args.broker_reload_command or args.broker_group:
            raise ConfigError(
                "--broker-pid-file, --broker-reload-command and --broker-group concern the "
                "files of --broker-passwd-file or --broker-config-dir: give one of those"
            )
        return
    if broker is None or not broker.username or broker.password is None:
        raise ConfigError(
            "--broker-passwd-file and --broker-config-dir need --mqtt-url with the "
            "coordinator's user:pass"
        )
    reload_command = _reload_command(args)
    mode = PRIVATE
    if args.broker_group is not None:
        check_group_directory(args.broker_config_dir or passwords.parent, args.broker_group)
        mode = GROUP_READABLE
    if args.broker_config_dir is not None:
        require_secure(
            args.broker_listen_host, broker.tls, args.insecure, "the broker we configure"
        )
        files = write_broker_files(
            args.broker_config_dir,
            broker.port,
            logins,
            args.broker_listen_host,
            tls=_broker_tls(args, broker.tls),
            mode=mode,
        )
        passwords = files.passwords
    credentials = BrokerCredentials(
        store,
        passwords,
        logins,
        args.broker_pid_file,
        reload_command,
        mode,
    )
    registry.credential_listeners.append(credentials.sync)
    credentials.sync()


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (the others keep their defaults where they are defined)."""
    return {name: value for name, value in options.items() if value is not None}


def _reload_command(args: argparse.Namespace) -> list[str] | None:
    """The argv of --broker-reload-command, checked before anything starts."""
    if args.broker_reload_command is None:
        return None
    if args.broker_pid_file is not None:
        raise ConfigError("give --broker-reload-command or --broker-pid-file, not both")
    try:
        argv = shlex.split(args.broker_reload_command)
    except ValueError as error:
        raise ConfigError(f"--broker-reload-command: {error}") from None
    if not argv or shutil.which(argv[0]) is None:
        shown = argv[0] if argv else "''"
        raise ConfigError(f"--broker-reload-command: {shown}: no such command")
    return argv


def _broker_tls(args: argparse.Namespace, mqtts: bool) -> Any:
    """The TLS listener of a broker configuration we write: required for mqtts://."""
    if not mqtts:
        if args.broker_tls_cert or args.broker_client_ca:
            raise ConfigError("--broker-tls-cert/--broker-client-ca need an mqtts:// --mqtt-url")
        return None
    if args.broker_tls_cert is None or args.broker_tls_key is None:
        raise ConfigError(
            "an mqtts:// --mqtt-url with --broker-config-dir needs --broker-tls-cert and "
            "--broker-tls-key (the broker's certificate and key, as the broker sees the paths)"
        )
    from bitfleet.server.broker import BrokerTls

    return BrokerTls(
        args.broker_tls_cert,
        args.broker_tls_key,
        client_ca=args.broker_client_ca,
    )


def check_listen_address(host: str, port: int) -> None:
    """Bind HOST:PORT once before anything starts, as uvicorn will: a taken port or a bad
    host is then a clear error (exit 2) instead of uvicorn's log and exit 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise ConfigError(
            f"--host {host!r} is not an address of this machine ({error.strerror}): "
            "pass an IP address or name of this host, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use: stop the other process or pass --port"
                ) from None
            raise ConfigError(
                f"cannot listen on {host} port {port} ({error.strerror}): pass a --host "
                "address of this machine, and a --port of 1024 or more unless running as root"
            ) from None


def provision_agents(registry: AgentRegistry, path: Path) -> None:
    """Enroll the agents listed in ``path`` that do not exist yet (idempotent)."""
    try:
        entries = json.loads(path.read_text())
        pairs = [(str(e["agent_id"]), str(e["secret"])) for e in entries]
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ConfigError(
            f"--provision-agents {path}: expected a JSON list of "
            f'{{"agent_id": ..., "secret": ...}} ({error})'
        ) from None
    for agent_id, secret in pairs:
        if not registry.exists(check_id(agent_id, "agent id")):
            registry.enroll(agent_id, secret)
