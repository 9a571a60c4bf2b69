"""``bitfleet jobs``: submit, list, show (live), cancel and download jobs over the REST API."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from bitfleet.cliargs import (
    existing_file,
    identifier,
    non_negative_int,
    output_file,
    read_bounded,
    read_json_object,
)
from bitfleet.client import Client, Job, Round, rounds_csv
from bitfleet.errors import ConfigError
from bitfleet.modelfile import save_model
from bitfleet.server.cli.output import print_json
from bitfleet.server.cli.service.client_options import add_client_options, client

job_id = identifier("job id")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "jobs", help="submit and follow training jobs", description="Manage training jobs."
    )
    actions = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    submit = actions.add_parser("submit", help="submit a job from a JSON file")
    submit.add_argument("file", help="job specification (JSON); '-' reads standard input")
    submit.add_argument(
        "--initial-model", type=existing_file, help="a .bfm model to start from (forward jobs)"
    )
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    submit.set_defaults(func=run_submit)

    listing = actions.add_parser("list", help="list jobs")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="a job's status and per-round metrics")
    show.add_argument("job_id", type=job_id, help="the job id 'jobs submit' printed")
    show.add_argument("--watch", action="store_true", help="refresh until the job ends")
    show.add_argument(
        "--format",
        choices=("table", "csv"),
        default="table",
        help="table (default), or csv: the per-round metrics, a header and a row per closed "
        "round (with --watch, each row as its round closes)",
    )
    show.set_defaults(func=run_show)

    cancel = actions.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", type=job_id, help="the job id 'jobs submit' printed")
    cancel.set_defaults(func=run_cancel)

    download = actions.add_parser("download", help="download a job's global model (.bfm)")
    download.add_argument("job_id", type=job_id, help="the job id 'jobs submit' printed")
    download.add_argument("--round", type=non_negative_int, help="the model that opened this round")
    download.add_argument("--out", type=output_file, help="output file (default JOB_ID.bfm)")
    download.set_defaults(func=run_download)

    for action in (submit, listing, show, cancel, download):
        add_client_options(action)


def run_submit(args: argparse.Namespace) -> int:
    spec = read_json_object(args.file, "job file")
    initial = read_bounded(args.initial_model, "--initial-model") if args.initial_model else None
    api = client(args)
    job = api.submit(spec, initial)
    if args.watch:
        return _watch(args, api, job.id)
    if args.json:
        print_json({"id": job.id, "status": job.status})
    else:
        print(f"submitted {job.id} ({job.status})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    jobs = client(args).jobs()
    if args.json:
        print_json({"jobs": [dataclasses.asdict(job) for job in jobs]})
        return 0
    print(f"{'id':18s} {'name':20s} {'status':10s} {'round':>9s} {'accuracy':>9s}")
    for job in jobs:
        accuracy = f"{job.metrics[-1].test_accuracy:.4f}" if job.metrics else "-"
        rounds = f"{job.round}/{job.rounds}"
        print(f"{job.id:18s} {job.name[:20]:20s} {job.status:10s} {rounds:>9s} {accuracy:>9s}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    if args.json and args.format == "csv":
        raise ConfigError("choose one of --json and --format csv")
    api = client(args)
    if args.watch and args.format == "csv":
        return _watch_csv(api, args.job_id)
    if args.watch:
        return _watch(args, api, args.job_id)
    job = api.job(args.job_id)
    if args.format == "csv":
        print(rounds_csv(job.metrics), end="")
        return 0
    if args.json:
        print_json(dataclasses.asdict(job))
        return 0
    _print_header(job)
    for closed in job.metrics:
        _print_round(closed)
    _print_status(job)
    return 0


def _watch(args: argparse.Namespace, api: Client, job_id: str) -> int:
    """Print the header once, then each round as it closes and what the job waits for
    when that changes; exit 0 when the job completes, 1 if it fails or is cancelled."""
    shown, said = 0, None
    for number, job in enumerate(api.watch(job_id)):  # the job now, then on each change
        if args.json:
            continue
        if number == 0:
            _print_header(job)
        for closed in job.metrics[shown:]:
            _print_round(closed)
        shown = len(job.metrics)
        if job.finished or (job.reason and job.reason != said):
            _print_status(job)
        said = job.reason
    if args.json:
        print_json(dataclasses.asdict(job))
    return 0 if job.status == "completed" else 1


def _watch_csv(api: Client, job_id: str) -> int:
    """The header, then each round's row as it closes; the exit code of :func:`_watch`."""
    print(rounds_csv([]), end="", flush=True)
    for closed in api.follow(job_id):
        print(rounds_csv([closed], header=False), end="", flush=True)
    return 0 if api.job(job_id).status == "completed" else 1


def _print_header(job: Job) -> None:
    print(f"{job.id}  {job.name}  {job.algorithm}  {job.rounds} rounds")
    header = ("round", "accuracy", "loss", "uploads", "up KB", "seconds")
    print(" ".join(f"{h:>{w}s}" for h, w in zip(header, (5, 9, 8, 7, 8, 8), strict=True)))


def _print_round(closed: Round) -> None:
    print(
        f"{closed.round:5d} {closed.test_accuracy:9.4f} {closed.loss:8.4f} "
        f"{closed.uploads:7d} {closed.bytes_up / 1024:8.1f} {closed.seconds:8.1f}",
        flush=True,
    )


def _print_status(job: Job) -> None:
    """``completed``; ``failed: why``; ``pending: waiting for 3 agents, 1 online``."""
    print(f"{job.status}: {job.reason}" if job.reason else job.status, flush=True)


def run_cancel(args: argparse.Namespace) -> int:
    job = client(args).cancel(args.job_id)
    if args.json:
        print_json(dataclasses.asdict(job))
    else:
        print(f"{job.id} {job.status}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    frame = client(args).download_model(args.job_id, args.round)
    out = args.out or f"{args.job_id}.bfm"
    save_model(out, frame)
    if args.json:
        print_json({"job_id": args.job_id, "path": out, "bytes": len(frame)})
    else:
        print(f"wrote {out} ({len(frame)} bytes)")
    return 0
