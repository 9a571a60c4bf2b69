"""``bitfleet demo``: a whole federated cluster on this machine, end to end, with a live view.

Starts a Mosquitto broker (password file + per-agent ACL), the coordinator and N agent
processes, each with its own partition of Fashion-MNIST; submits a job through the REST
API; shows every round as it closes; downloads the final model; shuts everything down
(also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitfleet.datasets import load_dataset
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.floatmlp import FloatConfig
from bitfleet.jobstatus import TERMINAL
from bitfleet.modelfile import fixedmlp_to_frame, save_model
from bitfleet.partition import SCHEMES, label_histogram, partition, write_partitions
from bitfleet.pretraining import pretrain
from bitfleet.server.cli.demo.cluster import AgentProcess, Broker, Coordinator
from bitfleet.server.cli.output import print_json
from bitfleet.server.cli.service.tls_cmd import load_tlsca


@dataclass(frozen=True)
class Scenario:
    """What the demo trains with one algorithm, unless the command line says otherwise."""

    weights: str
    hidden: int
    local_epochs: int
    hyperparameters: dict[str, Any]
    # The last mile: pretrain on clean data here, adapt on the agents' shifted data.
    pretrained: bool


SCENARIOS = {
    # The job's own defaults (bitfleet.algorithms.bitflip.JOB_DEFAULTS) are the measured best.
    "bitflip": Scenario("binary", 512, 1, {}, pretrained=False),
    "forward": Scenario("int16", 128, 5, {}, pretrained=True),
}


@dataclass
class Plan:
    """One demo run: the command line resolved against its algorithm's scenario, and what
    the run learns before its job starts (the pretrained model's accuracies)."""

    algorithm: str
    scenario: Scenario
    agents: int
    rounds: int
    hidden: int
    local_epochs: int
    dataset: str
    partition: str
    alpha: float
    seed: int
    pretraining: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.agents < 1 or args.rounds < 1:
            raise ConfigError("--agents and --rounds must be at least 1")
        scenario = SCENARIOS[args.algorithm]
        return cls(
            algorithm=args.algorithm,
            scenario=scenario,
            agents=args.agents,
            rounds=args.rounds,
            hidden=args.hidden or scenario.hidden,
            local_epochs=args.local_epochs or scenario.local_epochs,
            dataset=f"fashion-mnist:{args.shift}" if scenario.pretrained else "fashion-mnist",
            partition=args.partition,
            alpha=args.alpha,
            seed=args.seed,
        )

    @property
    def scheme(self) -> str:
        return f"dirichlet alpha={self.alpha}" if self.partition == "dirichlet" else self.partition


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a local federated cluster end to end",
        description=(
            "Start a broker, the coordinator and N agents on this machine, train a binary "
            "784-512-10 network on Fashion-MNIST split across the agents, show accuracy per "
            "round, and shut everything down."
        ),
    )
    parser.add_argument("--agents", type=int, default=5, help="agent processes (default 5)")
    parser.add_argument("--rounds", type=int, default=20, help="training rounds (default 20)")
    parser.add_argument(
        "--algorithm",
        choices=sorted(SCENARIOS),
        default="bitflip",
        help="bitflip: binary network from scratch; forward: pretrain a fixed-point "
        "784-HIDDEN-10 on clean data, then adapt it with QZO-FF on the agents' shifted data",
    )
    parser.add_argument(
        "--partition",
        choices=SCHEMES,
        default="dirichlet",
        help="how the data is split across agents (default dirichlet)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration: smaller is more non-IID (default 0.5)",
    )
    parser.add_argument(
        "--hidden", type=int, help="hidden units (default 512 bitflip, 128 forward)"
    )
    parser.add_argument(
        "--shift", default="rotate30", help="the agents' shifted domain (forward; default rotate30)"
    )
    parser.add_argument(
        "--local-epochs",
        type=int,
        help="epochs per round on each agent (default 1 bitflip, 5 forward)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of partition and job")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("bitfleet-demo"),
        help="logs, partitions, state and the final model (default ./bitfleet-demo)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the cluster up after the job, until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


class Display:
    """The live view: one line per closed round, and a status line while a round runs."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        self.shown = -1  # rounds printed; -1 before the header

    def say(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            print(text, flush=True)

    def _clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")

    def job(self, job: dict[str, Any], started: float) -> None:
        if self.shown < 0:
            self.say(
                f"{'round':>5s} {'agents':>7s} {'accuracy':>9s} {'up KB':>8s} "
                f"{'down KB':>8s} {'seconds':>8s}"
            )
            self.shown = 0
        selected = job["spec"]["agents_per_round"]
        for metric in job["metrics"][self.shown :]:
            self.say(
                f"{metric['round']:5d} {metric['uploads']:>3d}/{selected:<3d} "
                f"{metric['test_accuracy']:9.4f} {metric['bytes_up'] / 1024:8.1f} "
                f"{metric['bytes_down'] / 1024:8.1f} {time.monotonic() - started:8.1f}"
            )
        self.shown = len(job["metrics"])
        if self.live and job["status"] == "running":
            sys.stderr.write(
                f"\r  round {job['round']}: {job['round_uploads']}/{job['round_agents']} agents "
                f"reported  {time.monotonic() - started:6.1f}s\x1b[K"
            )
            sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    plan = Plan.from_args(args)
    display = Display(quiet=args.json)
    started = time.monotonic()
    workdir = _fresh(args.workdir)
    dataset = load_dataset(plan.dataset)
    parts = partition(
        dataset.y_train, plan.agents, plan.partition, alpha=plan.alpha, seed=plan.seed
    )
    paths = write_partitions(dataset, parts, workdir / "partitions")
    display.say(
        f"bitfleet demo: {plan.agents} agents, {plan.dataset} ({plan.scheme}), "
        f"{plan.scenario.weights} 784-{plan.hidden}-10, {plan.rounds} rounds; "
        f"logs in {workdir}"
    )
    initial = _pretrained(plan, display) if plan.scenario.pretrained else None
    for index, part in enumerate(parts):
        histogram = label_histogram(dataset.y_train[part], dataset.num_classes)
        display.say(f"  agent-{index}: {len(part):6d} samples, classes {histogram.tolist()}")

    ca = load_tlsca().create_ca(workdir / "tls")  # every link TLS, verified against it
    broker = Broker(workdir / "broker", tls=ca)
    coordinator = Coordinator(workdir / "coordinator", broker, tls=ca)
    agents: list[AgentProcess] = []
    try:
        broker.start()
        coordinator.start()
        display.say(f"broker {broker.agent_url}, coordinator {coordinator.url} (TLS, CA {ca.ca})")
        agents = _start_agents(coordinator, broker, paths, workdir)
        coordinator.wait_online(len(agents), agents=agents)
        spec = _job_spec(plan, initial)
        job_id = coordinator.api.request("POST", "/api/v1/jobs", json_body=spec).json()["id"]
        display.say(f"job {job_id} submitted; every agent trains on its own data each round")
        job = _follow(coordinator, job_id, display, started)
        if job["status"] != "completed":
            raise BitfleetError(f"the job {job['status']}: {job.get('reason')}")
        model_path = workdir / "model.bfm"
        frame = coordinator.api.request("GET", f"/api/v1/jobs/{job_id}/model").body
        save_model(model_path, frame)
        summary = _summary(job, plan, model_path, time.monotonic() - started)
        if args.json:
            print_json(summary)
        else:
            _print_summary(summary, coordinator, job_id)
        if args.keep_running:
            _hold(coordinator, display)
        return 0
    except KeyboardInterrupt:
        display.say("interrupted; shutting the cluster down")
        return 130
    finally:
        for agent in agents:
            agent.stop()
        coordinator.stop()
        broker.stop()


def _fresh(workdir: Path) -> Path:
    """An empty work directory (only our own subdirectories are removed)."""
    for name in ("partitions", "broker", "coordinator", "agents", "tls"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve()


def _start_agents(
    coordinator: Coordinator, broker: Broker, paths: list[Path], workdir: Path
) -> list[AgentProcess]:
    return [
        coordinator.start_agent(
            f"agent-{index}",
            data,
            workdir / "agents" / f"agent-{index}",
            mqtt_url=broker.agent_url,
            transport="mqtt",
        )
        for index, data in enumerate(paths)
    ]


def _pretrained(plan: Plan, display: Display) -> bytes:
    """The cloud side of the last mile: backprop on clean data, quantized to int16."""
    clean, shifted = load_dataset("fashion-mnist"), load_dataset(plan.dataset)
    _, model = pretrain(
        clean.x_train, clean.y_train, [784, plan.hidden, 10], 16, FloatConfig(seed=plan.seed)
    )
    plan.pretraining = {
        "clean_accuracy": model.accuracy(clean.x_test, clean.y_test),
        "zero_shot_accuracy": model.accuracy(shifted.x_test, shifted.y_test),
    }
    display.say(
        f"pretrained on clean data: {plan.pretraining['clean_accuracy']:.4f} clean, "
        f"{plan.pretraining['zero_shot_accuracy']:.4f} zero-shot on {plan.dataset}"
    )
    return fixedmlp_to_frame(model)


def _job_spec(plan: Plan, initial: bytes | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"demo-{plan.algorithm}",
        "algorithm": plan.algorithm,
        "model": {"layers": [784, plan.hidden, 10], "weights": plan.scenario.weights},
        "dataset": plan.dataset,
        "rounds": plan.rounds,
        "agents_per_round": plan.agents,
        "min_agents": max(1, plan.agents - 1),
        "round_deadline_s": 600,
        "local_epochs": plan.local_epochs,
        "seed": plan.seed,
        "hyperparameters": dict(plan.scenario.hyperparameters),
    }
    if initial is not None:
        spec["initial_model"] = base64.b64encode(initial).decode()
    return spec


def _follow(
    coordinator: Coordinator, job_id: str, display: Display, started: float
) -> dict[str, Any]:
    while True:
        job = coordinator.job(job_id)
        display.job(job, started)
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)


def _summary(job: dict[str, Any], plan: Plan, model_path: Path, seconds: float) -> dict[str, Any]:
    metrics = job["metrics"]
    return {
        "job_id": job["id"],
        "final_test_accuracy": metrics[-1]["test_accuracy"],
        "accuracy_per_round": [m["test_accuracy"] for m in metrics],
        "rounds": len(metrics),
        "agents": plan.agents,
        "partition": plan.scheme,
        "algorithm": plan.algorithm,
        "dataset": plan.dataset,
        **plan.pretraining,
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "model_path": str(model_path),
        "model_bytes": model_path.stat().st_size,
        "seconds": round(seconds, 1),
    }


def _print_summary(summary: dict[str, Any], coordinator: Coordinator, job_id: str) -> None:
    print(
        f"\nfinal test accuracy {summary['final_test_accuracy']:.4f} after {summary['rounds']} "
        f"rounds ({summary['seconds']:.0f} s; {summary['bytes_up'] / 1e6:.1f} MB up, "
        f"{summary['bytes_down'] / 1e6:.1f} MB down)\n"
        f"model: {summary['model_path']} ({summary['model_bytes']} bytes); evaluate it with\n"
        f"  bitfleet eval {summary['model_path']} --dataset {summary['dataset']}\n"
        f"while the cluster runs (--keep-running), download it with\n"
        f"  curl --cacert {coordinator.ca_file} -H 'Authorization: Bearer {coordinator.token}' "
        f"{coordinator.url}/api/v1/jobs/{job_id}/model -o model.bfm"
    )


def _hold(coordinator: Coordinator, display: Display) -> None:
    display.say(
        f"cluster running: API {coordinator.url}/docs (CA {coordinator.ca_file}), token "
        f"{coordinator.token}; Ctrl-C to stop"
    )
    while coordinator.process is not None and coordinator.process.poll() is None:
        time.sleep(1.0)
