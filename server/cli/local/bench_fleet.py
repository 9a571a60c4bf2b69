"""``bitfleet bench fleet``: one coordinator under N agents, measured round by round.

A real Mosquitto and a real coordinator start on loopback (TLS on every link, as the demo);
N agents are enrolled through the REST API and run in a few ``bitfleet-agent swarm``
processes, each agent a real agent runtime on its own MQTT client (or HTTP session) that
does everything but train: its update votes the round's own weights. Each round reports
the fan-out (round open until every agent holds the model), the upload phase and its
acceptance rate, the close (last receipt until the next round opens: vote, evaluation,
store), the coordinator's CPU seconds, and the broker's bytes in and out; the run reports
both processes' peak RSS, and the model and update bytes the agents moved. Everything but
training is round overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bitfleet.cliargs import positive_int
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.jobstatus import TERMINAL
from bitfleet.server.cli.demo.cluster import Broker, Coordinator, stop_process
from bitfleet.server.cli.output import print_json
from bitfleet.server.cli.service.tls_cmd import load_tlsca

MAX_AGENTS = 10_000
MAX_ROUNDS = 100
MAX_PROCESSES = 64
MAX_WORKERS = 8
# Agents per swarm process by default: MQTT agents share one loop thread (measured at 1,000
# agents on 2 cores: 2 processes of 500 gave 2.61-2.87 s rounds, 4 of 250 2.73-3.03 s);
# HTTP agents are a thread each.
AGENTS_PER_PROCESS = {"mqtt": 500, "http": 250}
MAX_EVENT_BYTES = 4096  # one swarm event line; a longer one is cut and skipped
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COORDINATOR = "coordinator-"  # the sampler's key of each worker, numbered
SWARM = "swarm-"  # and of each swarm process


def register(benches: Any) -> None:
    parser = benches.add_parser(
        "fleet",
        help="one coordinator under N simulated agents: round overhead, rates, memory",
        description=(
            "Starts Mosquitto and a coordinator on loopback and N agents (real protocol, "
            "no training) in a few processes, runs a 784-512-10 bit-flip job with every "
            "agent (or --selected of them) in every round, and reports per round: fan-out, "
            "upload rate, close, "
            "coordinator CPU seconds and broker bytes; and both processes' peak RSS."
        ),
    )
    parser.add_argument("--agents", type=positive_int, required=True, help=f"1..{MAX_AGENTS}")
    parser.add_argument(
        "--enrolled",
        type=positive_int,
        help=f"agents enrolled, of which --agents run (default: --agents; at most {MAX_AGENTS})",
    )
    parser.add_argument(
        "--selected",
        type=positive_int,
        help="agents selected per round, of the N online (default: all N)",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="(default 3)")
    parser.add_argument("--transport", choices=("mqtt", "http"), default="mqtt")
    parser.add_argument(
        "--processes",
        type=positive_int,
        help="swarm processes (default: one per "
        f"{AGENTS_PER_PROCESS['mqtt']} MQTT or {AGENTS_PER_PROCESS['http']} HTTP agents)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="coordinator workers splitting the uploads (MQTT shared subscription; "
        f"1..{MAX_WORKERS}, default 1); more than one needs --store",
    )
    parser.add_argument(
        "--store",
        help="a postgresql:// URL of an empty database for the coordinators' state (default: "
        "SQLite in the coordinator's directory)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class ProcessSample:
    """What /proc says of one process at one moment."""

    cpu_s: float
    peak_rss_mb: float
    bytes_read: int
    bytes_written: int


def sample_process(pid: int) -> ProcessSample:
    """CPU seconds (user + system), peak RSS and the bytes it read and wrote (sockets
    included) of a live process of this user."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    peak = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    io: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as counters:
        for line in counters:
            name, value = line.split(":")
            io[name] = int(value)
    return ProcessSample(cpu, peak, io["rchar"], io["wchar"])


class Sampler:
    """Samples processes every ``interval`` seconds in a thread, so that figures per round
    can be read at the rounds' own boundaries (from the agents' events)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, ProcessSample]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        now = time.time()
        self.samples.append((now, {name: sample_process(pid) for name, pid in self.pids.items()}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def at(self, moment: float) -> dict[str, ProcessSample]:
        """The last sample taken at or before ``moment`` (the first one if none was)."""
        chosen = self.samples[0][1]
        for taken, sample in self.samples:
            if taken > moment:
                break
            chosen = sample
        return chosen


@dataclass
class EventLog:
    """Every JSON line the swarms print, gathered by one reader thread per swarm."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, stream: IO[bytes]) -> None:
        while raw := stream.readline(MAX_EVENT_BYTES):
            try:
                event = json.loads(raw)
            except (ValueError, RecursionError):
                continue  # a swarm's stray output is not an event
            if _well_formed(event):
                with self.lock:
                    self.events.append(event)

    def of(self, kind: str, round_index: int) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e for e in self.events if e.get("event") == kind and e.get("round") == round_index
            ]


def _well_formed(event: object) -> bool:
    """An event the figures can use: a kind, an agent, a time, and a round where it has one."""
    if not isinstance(event, dict):
        return False
    kinds_ok = isinstance(event.get("event"), str) and isinstance(event.get("agent"), str)
    time_ok = isinstance(event.get("t"), int | float) and not isinstance(event.get("t"), bool)
    round_ok = "round" not in event or (
        isinstance(event["round"], int) and not isinstance(event["round"], bool)
    )
    bytes_ok = isinstance(event.get("bytes", 0), int)
    return kinds_ok and time_ok and round_ok and bytes_ok


def _check(args: argparse.Namespace) -> int:
    if args.agents > MAX_AGENTS:
        raise ConfigError(f"--agents {args.agents} is above {MAX_AGENTS}")
    if args.enrolled is not None and not args.agents <= args.enrolled <= MAX_AGENTS:
        raise ConfigError(f"--enrolled must be between --agents ({args.agents}) and {MAX_AGENTS}")
    if args.selected is not None and args.selected > args.agents:
        raise ConfigError(f"--selected {args.selected} is more than --agents {args.agents}")
    if args.rounds > MAX_ROUNDS:
        raise ConfigError(f"--rounds {args.rounds} is above {MAX_ROUNDS}")
    if args.workers > MAX_WORKERS:
        raise ConfigError(f"--workers {args.workers} is above {MAX_WORKERS}")
    if args.workers > 1 and (args.store is None or args.transport != "mqtt"):
        raise ConfigError(
            "several --workers share a PostgreSQL --store and split MQTT uploads: add "
            "--store postgresql://user:pass@host/db (and keep --transport mqtt)"
        )
    processes = args.processes or -(-args.agents // AGENTS_PER_PROCESS[args.transport])
    if processes > min(MAX_PROCESSES, args.agents):
        raise ConfigError(f"--processes must be at most {min(MAX_PROCESSES, args.agents)}")
    return processes


def _say(text: str) -> None:
    """Progress on stderr: stdout is the result."""
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    processes = _check(args)
    workdir = Path(tempfile.mkdtemp(prefix="bitfleet-fleet-"))
    ca = load_tlsca().create_ca(workdir / "tls")
    names = [f"w{index + 1}" for index in range(args.workers)] if args.workers > 1 else []
    broker = Broker(workdir / "broker", tls=ca, worker_users=[f"worker-{n}" for n in names])
    agents = _provisioned(workdir, args.enrolled or args.agents)[: args.agents]
    workers = _workers(workdir, broker if args.transport == "mqtt" else None, ca, names, args)
    coordinator = workers[0]
    swarms: list[subprocess.Popen[bytes]] = []
    log = EventLog()
    try:
        if args.transport == "mqtt":
            broker.start()
        _say(
            f"starting {len(workers)} coordinator(s) with {args.enrolled or args.agents} "
            "agents provisioned"
        )
        for worker in workers:
            worker.start()
        for index in range(processes):
            part = agents[index::processes]
            swarms.append(_start_swarm(workdir, index, part, coordinator, broker, args, log))
        coordinator.wait_online(args.agents, timeout=60 + args.agents / 10)
        _say(f"{args.agents} agents online in {processes} swarm process(es); job starts")
        result = _run_job(workers, broker if args.transport == "mqtt" else None, swarms, args, log)
        result |= {"agents": args.agents, "selected": args.selected or args.agents}
        result |= {"workers": len(workers), "store": "postgresql" if args.store else "sqlite"}
        result |= {"enrolled": args.enrolled or args.agents}
        result |= {"transport": args.transport, "processes": processes}
        if args.json:
            print_json(result)
        else:
            _print(result)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    except BitfleetError as error:
        raise BitfleetError(f"{error} (logs kept in {workdir})") from None
    finally:
        for swarm in swarms:
            stop_process(swarm)
        for worker in workers:
            worker.stop()
        broker.stop()


def _workers(
    workdir: Path, broker: Broker | None, ca: Any, names: list[str], args: argparse.Namespace
) -> list[Coordinator]:
    """The lone coordinator, or one worker per name sharing --store and the uploads."""
    provision = ["--provision-agents", str(workdir / "agents.json")]
    store = ["--store", args.store] if args.store else []
    if not names:
        return [Coordinator(workdir / "coordinator", broker, tls=ca, extra_args=provision + store)]
    return [
        Coordinator(
            workdir / name,
            broker,
            tls=ca,
            extra_args=[*provision, *store, "--worker-id", name, "--shared-subscription", "bench"],
            broker_user=f"worker-{name}",
        )
        for name in names
    ]


def _provisioned(workdir: Path, count: int) -> list[tuple[str, str]]:
    """Agents the coordinator enrolls at start (``--provision-agents``, how a fleet managed
    by configuration management is enrolled): one password-file write for all of them,
    where N enrollments through the API rewrite it N times."""
    agents = [(f"sim-{index:05d}", secrets.token_hex(24)) for index in range(count)]
    listing = workdir / "agents.json"
    listing.write_text(json.dumps([{"agent_id": a, "secret": s} for a, s in agents]))
    listing.chmod(0o600)
    return agents


def _start_swarm(
    workdir: Path,
    index: int,
    agents: list[tuple[str, str]],
    coordinator: Coordinator,
    broker: Broker,
    args: argparse.Namespace,
    log: EventLog,
) -> subprocess.Popen[bytes]:
    listing = workdir / f"swarm-{index}.agents"
    listing.write_text("".join(f"{agent_id} {secret}\n" for agent_id, secret in agents))
    listing.chmod(0o600)
    command = [
        sys.executable,
        "-m",
        "bitfleet.edge_agent",
        "swarm",
        "--agents-file",
        str(listing),
        "--coordinator",
        coordinator.url,
        "--transport",
        args.transport,
        "--ca-file",
        str(ca_path(coordinator)),
    ]
    if args.transport == "mqtt":
        command += ["--mqtt-url", broker.agent_url]
    errors = open(workdir / f"swarm-{index}.log", "wb")  # noqa: SIM115 - the child owns it
    swarm = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
    assert swarm.stdout is not None
    threading.Thread(target=log.read, args=(swarm.stdout,), daemon=True).start()
    return swarm


def ca_path(coordinator: Coordinator) -> str:
    if coordinator.ca_file is None:
        raise BitfleetError("the bench cluster runs with TLS")
    return coordinator.ca_file


def _run_job(
    workers: list[Coordinator],
    broker: Broker | None,
    swarms: list[subprocess.Popen[bytes]],
    args: argparse.Namespace,
    log: EventLog,
) -> dict[str, Any]:
    coordinator = workers[0]
    spec = {
        "name": f"bench-fleet-{args.agents}",
        "algorithm": "bitflip",
        "model": {"layers": [784, 512, 10], "weights": "binary"},
        "dataset": "fashion-mnist",
        "rounds": args.rounds,
        "agents_per_round": args.selected or args.agents,
        "min_agents": args.selected or args.agents,
        "round_deadline_s": 600,
        "seed": 0,
    }
    stored_before = _state_bytes(coordinator, args.store)
    job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=spec).json()["id"]
    pids = {}
    for index, worker in enumerate(workers):
        assert worker.process is not None
        pids[f"{COORDINATOR}{index}"] = worker.process.pid
    if broker is not None and broker.process is not None:
        pids["broker"] = broker.process.pid
    for index, swarm in enumerate(swarms):
        pids[f"{SWARM}{index}"] = swarm.pid
    seen_round, deadline = 0, time.monotonic() + 600 + 2 * args.agents
    with Sampler(pids) as sampler:
        while True:
            job = coordinator.job(job_id)
            if job["round"] > seen_round:
                seen_round = job["round"]
                _say(f"round {seen_round} of {args.rounds} opened")
            if job["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise BitfleetError(f"the bench job did not finish: {job}")
            time.sleep(0.25)  # each poll is an HTTPS request to the coordinator
    if job["status"] != "completed":
        raise BitfleetError(f"the bench job {job['status']}: {job.get('reason')}")
    _settle(log, args.rounds, args.selected or args.agents)
    stored = {"state_bytes_before": stored_before}
    stored["state_bytes_after"] = _state_bytes(coordinator, args.store)
    accepted = [int(metric_total(worker, "bitfleet_uploads_accepted_total")) for worker in workers]
    return _figures(log, sampler, args.rounds) | stored | {"uploads_per_worker": accepted}


def _settle(log: EventLog, rounds: int, selected: int, timeout: float = 30.0) -> None:
    """Wait for the swarms' last events: a round closes on its last stored upload, and the
    receipt of it reaches its agent (and the log) a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        len({e["agent"] for e in log.of("receipt", r) if e.get("accepted")}) < selected
        for r in range(rounds)
    ):
        time.sleep(0.1)


def _state_bytes(coordinator: Coordinator, store: str | None) -> int:
    """What the coordinators keep: the PostgreSQL database's size, or every file under the
    coordinator's directory (its SQLite file and write-ahead log; freed pages stay in the
    file and are reused)."""
    if store is not None:
        import psycopg

        with psycopg.connect(store) as db:
            row = db.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0
    directory = coordinator.data_dir
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def metric_total(coordinator: Coordinator, name: str) -> float:
    """A metric of a coordinator's /metrics, summed over its labels."""
    text = coordinator.api.request("GET", "/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )


def _figures(log: EventLog, sampler: Sampler, rounds: int) -> dict[str, Any]:
    opens = [min((e["t"] for e in log.of("task", r)), default=None) for r in range(rounds)]
    done_at = sampler.samples[-1][0]
    per_round = []
    for r in range(rounds):
        models, uploads = log.of("model", r), log.of("upload", r)
        receipts = [e for e in log.of("receipt", r) if e.get("accepted")]
        start = opens[r]
        if start is None or not models or not receipts:
            raise BitfleetError(f"round {r}: no agent saw its task, model or receipt")
        last_receipt = max(e["t"] for e in receipts)
        first_upload = min(e["t"] for e in uploads)
        following = opens[r + 1] if r + 1 < rounds else None
        next_open: float = following if following is not None else done_at
        window = max(last_receipt - first_upload, 1e-6)
        entry = {
            "round": r,
            "agents_with_model": len({e["agent"] for e in models}),
            "accepted_uploads": len({e["agent"] for e in receipts}),
            "fanout_s": round(max(e["t"] for e in models) - start, 3),
            "upload_s": round(window, 3),
            "uploads_per_s": round(len(receipts) / window, 1),
            "close_s": round(next_open - last_receipt, 3),
            "overhead_s": round(next_open - start, 3),
            "payload_bytes_down": sum(e.get("bytes", 0) for e in models),
            "payload_bytes_up": sum(e.get("bytes", 0) for e in uploads),
        }
        entry |= _process_figures(sampler.at(start), sampler.at(next_open))
        per_round.append(entry)
    first, last = sampler.samples[0][1], sampler.samples[-1][1]
    overheads = [entry["overhead_s"] for entry in per_round]
    return {
        "median_overhead_s": round(statistics.median(overheads), 3),
        "coordinator_cpu_s": round(_cpu(last, COORDINATOR) - _cpu(first, COORDINATOR), 2),
        "coordinator_peak_rss_mb": round(
            max(s.peak_rss_mb for k, s in last.items() if k.startswith(COORDINATOR)), 1
        ),
        "broker_peak_rss_mb": round(last["broker"].peak_rss_mb, 1) if "broker" in last else None,
        "rounds": per_round,
    }


def _process_figures(
    then: dict[str, ProcessSample], now: dict[str, ProcessSample]
) -> dict[str, Any]:
    """The coordinator's CPU seconds between two samples, and the broker's socket bytes in
    and out (TLS and MQTT framing included; uvicorn's socket sends are not counted by
    /proc, so HTTP runs report the agents' payload bytes only)."""
    figures: dict[str, Any] = {
        "coordinator_cpu_s": round(_cpu(now, COORDINATOR) - _cpu(then, COORDINATOR), 2),
        "generator_cpu_s": round(_cpu(now, SWARM) - _cpu(then, SWARM), 2),
    }
    if "broker" in now:
        figures["broker_cpu_s"] = round(now["broker"].cpu_s - then["broker"].cpu_s, 2)
        figures["broker_bytes_in"] = now["broker"].bytes_read - then["broker"].bytes_read
        figures["broker_bytes_out"] = now["broker"].bytes_written - then["broker"].bytes_written
    return figures


def _cpu(sample: dict[str, ProcessSample], kind: str) -> float:
    """CPU seconds of every process of a kind (coordinator workers, swarms), together."""
    return sum(s.cpu_s for key, s in sample.items() if key.startswith(kind))


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['agents']} agents over {result['transport']} in {result['processes']} "
        f"process(es), {result['workers']} coordinator worker(s) on {result['store']} "
        f"(uploads taken {result['uploads_per_worker']}); "
        f"coordinator peak RSS {result['coordinator_peak_rss_mb']} MB, "
        f"broker {result['broker_peak_rss_mb']} MB"
    )
    print("round  fan-out s  upload s  uploads/s  close s  overhead s  coordinator CPU s")
    for entry in result["rounds"]:
        print(
            f"{entry['round']:5d}  {entry['fanout_s']:9.2f}  {entry['upload_s']:8.2f}  "
            f"{entry['uploads_per_s']:9.1f}  {entry['close_s']:7.2f}  {entry['overhead_s']:10.2f}"
            f"  {entry.get('coordinator_cpu_s', 0):17.2f}"
        )
