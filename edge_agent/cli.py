"""``bitfleet-agent``: enroll a board, run the agent, show what it is doing.

Exit codes: 0 success, 1 the coordinator stayed unreachable for longer than
``--give-up-after`` (``run`` waits forever unless given it; ``enroll`` a minute), 2 a user
error (bad option, refused credentials, unreadable data, a state directory another agent
holds: one line on stderr, and with ``--json`` one JSON error object on stdout, see
:mod:`bitfleet.cliargs`), 130 interrupted. ``run`` stops cleanly on SIGTERM or Ctrl-C (also
while it waits for the coordinator): a round in training is abandoned (and journaled), the
transport says "offline" and disconnects.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from bitfleet import __version__, kernels
from bitfleet.chunks import DEFAULT_CHUNK_BYTES
from bitfleet.cliargs import (
    EXIT_FAILURE,
    CliParser,
    add_label_column_argument,
    existing_file,
    http_url,
    positive_int,
    report_error,
    run_cli,
)
from bitfleet.datasets import load_dataset
from bitfleet.edge_agent.backoff import DEFAULT_MAX_BACKOFF_S, Backoff, GaveUp, Outage
from bitfleet.edge_agent.config import (
    MAX_BACKOFF_LIMIT_S,
    AgentConfig,
    check_seconds,
    default_config_path,
    default_state_dir,
)
from bitfleet.edge_agent.journal import Journal
from bitfleet.edge_agent.outbox import Outbox
from bitfleet.edge_agent.runtime import AgentRuntime
from bitfleet.edge_agent.transports import Transport, is_outage
from bitfleet.edge_agent.transports.http import HttpTransport
from bitfleet.errors import ConfigError
from bitfleet.federated import update_frame
from bitfleet.frames import decode_frame
from bitfleet.httpclient import ApiClient, ApiError
from bitfleet.protocol import FLEET_WHOAMI, fleet_path, parse_mqtt_url
from bitfleet.tls import CA_FILE_ENV, mqtt_tls_options, require_secure

log = logging.getLogger("bitfleet.agent")

ENROLL_GIVE_UP_S = 60.0  # an installer must not hang on a coordinator that is not there


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="bitfleet-agent",
        description="The bitfleet edge agent: trains on this board's data, uploads bits.",
    )
    parser.add_argument("--version", action="version", version=f"bitfleet-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    enroll = commands.add_parser(
        "enroll",
        help="check an enrollment pair and store it in the config file",
        description="Check the agent id and secret ('bitfleet agents add' prints them) "
        "against the coordinator and save them (0600) for 'run'.",
    )
    enroll.add_argument(
        "--coordinator", type=http_url, required=True, help="coordinator URL, http(s)://..."
    )
    enroll.add_argument("--agent-id", required=True, help="the id 'bitfleet agents add' printed")
    enroll.add_argument("--secret", required=True, help="the secret printed with it")
    enroll.add_argument(
        "--mqtt-url", help="broker URL, mqtts://host:port (mqtt:// on loopback; omit: HTTP only)"
    )
    _add_tls_options(enroll)
    enroll.add_argument(
        "--give-up-after",
        type=_seconds(0.0, math.inf),
        default=ENROLL_GIVE_UP_S,
        metavar="SECONDS",
        help="wait this long for an unreachable coordinator, retrying with backoff, then "
        f"exit 1 (default {ENROLL_GIVE_UP_S:g})",
    )
    enroll.add_argument(
        "--config", type=Path, help=f"config file (default {default_config_path()})"
    )
    enroll.add_argument("--json", action="store_true", help="print JSON for scripts")
    enroll.set_defaults(func=run_enroll)

    run = commands.add_parser(
        "run",
        help="connect, wait for rounds, train and upload until stopped",
        description="Run the agent. Credentials come from the config file, or from "
        "--coordinator/--agent-id/--secret.",
    )
    run.add_argument(
        "--data",
        required=True,
        help="local data: .npz (as 'bitfleet data partition' writes), IDX or CSV",
    )
    add_label_column_argument(run)
    run.add_argument("--config", type=Path, help=f"config file (default {default_config_path()})")
    run.add_argument(
        "--coordinator",
        type=http_url,
        default=os.environ.get("BITFLEET_COORDINATOR"),
        help="coordinator URL instead of a config file (env BITFLEET_COORDINATOR)",
    )
    run.add_argument(
        "--agent-id", default=os.environ.get("BITFLEET_AGENT_ID"), help="(env BITFLEET_AGENT_ID)"
    )
    run.add_argument(
        "--secret",
        default=os.environ.get("BITFLEET_AGENT_SECRET"),
        help="(env BITFLEET_AGENT_SECRET; keeps it out of the process list)",
    )
    run.add_argument(
        "--mqtt-url",
        default=os.environ.get("BITFLEET_MQTT_URL"),
        help="broker URL, overrides the config file (env BITFLEET_MQTT_URL)",
    )
    _add_tls_options(run)
    run.add_argument(
        "--transport",
        choices=("auto", "mqtt", "http"),
        default="auto",
        help="auto: MQTT when the broker is reachable, else HTTP",
    )
    run.add_argument(
        "--state-dir", type=Path, help=f"journal and status (default {default_state_dir()})"
    )
    run.add_argument(
        "--max-memory",
        type=positive_int,
        metavar="MB",
        help="decline jobs needing more (default: the memory the OS has free)",
    )
    run.add_argument(
        "--max-backoff",
        type=_seconds(1.0, MAX_BACKOFF_LIMIT_S),
        metavar="SECONDS",
        help="retries of an unreachable coordinator or broker wait from 1 s, doubling with "
        f"full jitter, up to this (config max_backoff_s; default {DEFAULT_MAX_BACKOFF_S:g})",
    )
    run.add_argument(
        "--give-up-after",
        type=_seconds(0.0, math.inf),
        metavar="SECONDS",
        help="exit 1 once the coordinator has been unreachable this long (config "
        "give_up_after_s; default: never, the agent rides out any outage)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log verbosity (one line per event on stderr)",
    )
    run.set_defaults(func=run_agent)

    selftest = commands.add_parser(
        "selftest",
        help="train one local round on local data; report speed and peak memory",
        description="Run the agent's training path once (one epoch of bit-flip training of "
        "a features-HIDDEN-classes binary network), without a coordinator.",
    )
    selftest.add_argument(
        "--data", default="fashion-mnist", help="data set name or file (default fashion-mnist)"
    )
    selftest.add_argument("--samples", type=positive_int, default=10_000, help="(default 10000)")
    selftest.add_argument("--hidden", type=positive_int, default=512, help="(default 512)")
    selftest.add_argument("--json", action="store_true", help="print JSON for scripts")
    selftest.set_defaults(func=run_selftest)

    swarm = commands.add_parser(
        "swarm",
        help="run many simulated agents (real protocol, no training) for a load test",
        description="Run one agent per line of --agents-file ('AGENT_ID SECRET', enrolled "
        "already) in this process: each announces itself, takes tasks, downloads the model, "
        "uploads a signed update voting the model's own weights and waits for its receipt. "
        "Prints one JSON line per step on stdout; stops on SIGTERM or Ctrl-C. "
        "'bitfleet bench fleet' starts these.",
    )
    swarm.add_argument("--agents-file", type=existing_file, required=True)
    swarm.add_argument("--coordinator", type=http_url, required=True, help="coordinator URL")
    swarm.add_argument("--mqtt-url", help="broker URL (with --transport mqtt)")
    swarm.add_argument("--transport", choices=("mqtt", "http"), default="mqtt")
    swarm.add_argument(
        "--samples", type=positive_int, default=1000, help="samples each agent declares"
    )
    _add_tls_options(swarm)
    swarm.set_defaults(func=run_swarm_command)

    status = commands.add_parser("status", help="what the agent is doing and has done")
    status.add_argument("--config", type=Path, help="config file (names the agent when idle)")
    status.add_argument("--state-dir", type=Path, help=f"(default {default_state_dir()})")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=run_status)
    return parser


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-file",
        type=existing_file,
        help=f"CA to verify the coordinator and broker against (env {CA_FILE_ENV}; default: "
        "the system's CAs)",
    )
    parser.add_argument(
        "--client-cert", type=existing_file, help="client certificate for a mutual-TLS broker"
    )
    parser.add_argument("--client-key", type=existing_file, help="the key of --client-cert")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow http:// or mqtt:// off loopback (the secret then crosses the network in clear)",
    )


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type for a duration in seconds within ``low..high``."""

    def parse(text: str) -> float:
        try:
            return check_seconds(float(text), "the value", low, high)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitfleet-agent`` console script."""
    return run_cli(build_parser(), argv)


def run_enroll(args: argparse.Namespace) -> int:
    config = AgentConfig(args.coordinator, args.agent_id, args.secret, args.mqtt_url, **_tls(args))
    _check_links(config, args.insecure)
    outage = Outage(args.give_up_after)
    try:
        _check_credentials(config, Backoff(max_s=config.max_backoff_s), outage, threading.Event())
    except GaveUp as error:
        report_error("bitfleet-agent", "GaveUp", str(error), args.json)
        return EXIT_FAILURE
    path = args.config or default_config_path()
    config.save(path)
    if args.json:
        print(json.dumps({"agent_id": config.agent_id, "config": str(path)}))
    else:
        print(f"enrolled {config.agent_id} with {config.coordinator}; config written to {path}")
    return 0


class TlsFiles(TypedDict, total=False):
    ca_file: str
    client_cert: str
    client_key: str


def _tls(args: argparse.Namespace) -> TlsFiles:
    """The TLS options given on the command line."""
    files = TlsFiles()
    for name in ("ca_file", "client_cert", "client_key"):
        if getattr(args, name) is not None:
            files[name] = getattr(args, name)
    return files


def _check_links(config: AgentConfig, insecure: bool) -> None:
    """The secret signs every frame: it may cross only loopback in clear, unless asked."""
    coordinator = urlsplit(config.coordinator)
    require_secure(
        coordinator.hostname or "", coordinator.scheme == "https", insecure, "the coordinator"
    )
    if config.mqtt_url:
        broker = parse_mqtt_url(config.mqtt_url)
        require_secure(broker.host, broker.tls, insecure, "the broker")
    mqtt_tls_options(config.ca_file, config.client_cert, config.client_key)  # both or none


def _check_credentials(
    config: AgentConfig, backoff: Backoff, outage: Outage, stop: threading.Event
) -> bool:
    """Whether the coordinator takes this agent's id and secret (a refusal is a
    ConfigError); an unreachable one is waited for, retrying with backoff, until ``outage``
    gives up (GaveUp). False if ``stop`` was set meanwhile."""
    client = ApiClient(
        config.coordinator, f"{config.agent_id}:{config.secret}", ca_file=config.ca_file
    )
    while not stop.is_set():
        try:
            client.request("GET", fleet_path(FLEET_WHOAMI))
        except ApiError as error:
            if error.status in (401, 403):
                message = f"the coordinator refused agent {config.agent_id}: {error}"
                raise ConfigError(message) from None
            if not is_outage(error):
                raise
            outage.update(str(error))
            stop.wait(backoff.failed())
            continue
        outage.update(None)
        return True
    return False


def _config(args: argparse.Namespace) -> AgentConfig:
    if args.coordinator or args.agent_id or args.secret:
        if not (args.coordinator and args.agent_id and args.secret):
            raise ConfigError("give all of --coordinator, --agent-id and --secret, or --config")
        config = AgentConfig(args.coordinator, args.agent_id, args.secret, args.mqtt_url)
    else:
        config = AgentConfig.load(args.config or default_config_path())
    if args.mqtt_url:
        config = replace(config, mqtt_url=args.mqtt_url)
    if args.max_backoff is not None:
        config = replace(config, max_backoff_s=args.max_backoff)
    if args.give_up_after is not None:
        config = replace(config, give_up_after_s=args.give_up_after)
    config = replace(config, **_tls(args))
    _check_links(config, args.insecure)
    return config


def _transport(config: AgentConfig, choice: str, backoff: Backoff) -> Transport:
    http = HttpTransport(config.coordinator, config.agent_id, config.secret, ca_file=config.ca_file)
    if choice == "http" or (choice == "auto" and not config.mqtt_url):
        return http
    if not config.mqtt_url:
        raise ConfigError("--transport mqtt needs a broker URL: --mqtt-url mqtt://host:port")
    address = parse_mqtt_url(config.mqtt_url)
    if choice == "auto" and not _reachable(address.host, address.port):
        log.warning("broker %s:%d unreachable; using HTTP", address.host, address.port)
        return http
    from bitfleet.edge_agent.transports.mqtt import MqttTransport

    return MqttTransport(
        config.mqtt_url,
        config.agent_id,
        config.secret,
        ca_file=config.ca_file,
        client_cert=config.client_cert,
        client_key=config.client_key,
        backoff=backoff.fresh(),
    )


def run_swarm_command(args: argparse.Namespace) -> int:
    """Many agents on real transports in this process, until a signal (``swarm``)."""
    from bitfleet.edge_agent.swarm import read_agents, run_swarm

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    agents = read_agents(Path(args.agents_file))
    base = AgentConfig(args.coordinator, agents[0][0], agents[0][1], args.mqtt_url)
    base = replace(base, **_tls(args))
    _check_links(base, args.insecure)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if args.transport == "mqtt":  # one loop thread drives every client (edge_agent/loopswarm.py)
        from bitfleet.edge_agent.loopswarm import LoopSwarm

        if not base.mqtt_url:
            raise ConfigError("--transport mqtt needs a broker URL: --mqtt-url mqtt://host:port")
        tls = {
            "ca_file": base.ca_file,
            "client_cert": base.client_cert,
            "client_key": base.client_key,
        }
        address = parse_mqtt_url(base.mqtt_url)
        LoopSwarm(agents, address, args.samples, DEFAULT_CHUNK_BYTES, tls).run(stop)
        return 0

    def transport(agent_id: str, secret: str) -> Transport:
        config = replace(base, agent_id=agent_id, secret=secret)
        return _transport(config, args.transport, Backoff(max_s=config.max_backoff_s))

    run_swarm(agents, transport, args.samples, stop)
    return 0


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    journal = Journal(args.state_dir or default_state_dir())
    journal.lock()  # first: a second agent on this directory stops before any work
    config = _config(args)
    data = load_dataset(args.data, label_column=args.label_column)
    stop = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # One policy for every retry; each user of it keeps its own schedule.
    backoff = Backoff(max_s=config.max_backoff_s)
    outage = Outage(config.give_up_after_s)  # one outage, from the first check to the last
    try:
        if not _check_credentials(config, backoff.fresh(), outage, stop):
            return 0
        AgentRuntime(
            config.agent_id,
            config.secret,
            data.x_train,
            data.y_train,
            _transport(config, args.transport, backoff),
            journal=journal,
            memory_limit_bytes=args.max_memory << 20 if args.max_memory else None,
            outbox=Outbox(journal.directory, backoff=backoff),
            backoff=backoff.fresh(),
            outage=outage,
            stop=stop,
        ).run()
    except GaveUp as error:
        report_error("bitfleet-agent", "GaveUp", str(error), False)
        return EXIT_FAILURE
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Read-only: works beside a running agent (no lock) and creates nothing."""
    state_dir = args.state_dir or default_state_dir()
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(
            f"state directory {state_dir} is not a directory: pass the agent's --state-dir DIR"
        )
    journal = Journal(state_dir)
    status = journal.read_status() or {"state": "never run"}
    config_path = args.config or default_config_path()
    if "agent_id" not in status and config_path.exists():
        config = AgentConfig.load(config_path)
        status.update(agent_id=config.agent_id, coordinator=config.coordinator)
    if status.get("pid") and status.get("state") != "stopped" and not _alive(int(status["pid"])):
        status["state"] = "stopped (not running)"
    entries = journal.entries()
    status["rounds"] = {
        event: sum(1 for e in entries if e["event"] == event)
        for event in ("uploaded", "declined", "failed", "abandoned")
    }
    status["recent"] = entries[-5:]
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(
        f"agent {status.get('agent_id', '?')}: {status['state']}"
        f" ({status.get('transport', '-')} transport)"
    )
    if status.get("task"):
        print(f"training job {status['task']['job_id']} round {status['task']['round']}")
    print("rounds: " + ", ".join(f"{n} {event}" for event, n in status["rounds"].items()))
    for entry in status["recent"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["time"]))
        detail = entry.get("outcome") or entry.get("reason") or ""
        print(f"  {when} {entry['job_id']} round {entry['round']}: {entry['event']} {detail}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_selftest(args: argparse.Namespace) -> int:
    """Train one local round exactly as a task would, and report speed and peak memory."""
    import resource

    import numpy as np

    from bitfleet.algorithms.bitflip import BitFlip, aggregation_of, initial_global_model

    data = load_dataset(args.data)
    x, y = data.x_train[: args.samples], data.y_train[: args.samples]
    layers = [data.num_features, args.hidden, data.num_classes]
    algorithm = BitFlip()
    config = algorithm.config({}, "binary", 1, seed=0)
    frame = decode_frame(initial_global_model(layers, config, aggregation_of({})))
    state = algorithm.local("selftest", frame, config)
    started = time.monotonic()
    tensors, meta = state.train_round(frame, 0, config, x, y)
    seconds = time.monotonic() - started
    update = update_frame(tensors, meta, "selftest", b"selftest")
    result = {
        "layers": layers,
        "samples": len(y),
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(y) / seconds, 1),
        "update_bytes": len(update),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "numba": kernels.HAVE_NUMBA,
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:20s} {value}")
    return 0
