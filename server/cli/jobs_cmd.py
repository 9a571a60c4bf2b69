"""``bitfleet jobs``: submit, list, show (live), cancel and download jobs over the REST API."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from bitfleet.cliargs import existing_file, identifier, non_negative_int, output_file
from bitfleet.errors import ConfigError
from bitfleet.modelfile import save_model
from bitfleet.server.cli.client_options import add_client_options, client
from bitfleet.server.cli.output import print_json
from bitfleet.server.jobstatus import TERMINAL

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
    spec = _read_spec(args.file)
    if args.initial_model:
        spec["initial_model"] = base64.b64encode(_read_model(args.initial_model)).decode()
    created = client(args).request("POST", "/api/v1/jobs", json_body=spec).json()
    if args.watch:
        return _watch(args, created["id"])
    if args.json:
        print_json(created)
    else:
        print(f"submitted {created['id']} ({created['status']})")
    return 0


def _read_spec(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        spec = json.loads(text)
    except OSError as error:
        raise ConfigError(f"cannot read job file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"job file {path} is not valid JSON: {error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"job file {path} must hold a JSON object")
    return spec


def _read_model(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read --initial-model {path}: {error.strerror}") from None


def run_list(args: argparse.Namespace) -> int:
    jobs = client(args).request("GET", "/api/v1/jobs").json()
    if args.json:
        print_json({"jobs": jobs})
        return 0
    print(f"{'id':18s} {'name':20s} {'status':10s} {'round':>9s} {'accuracy':>9s}")
    for job in jobs:
        accuracy = f"{job['metrics'][-1]['test_accuracy']:.4f}" if job["metrics"] else "-"
        rounds = f"{job['round']}/{job['rounds']}"
        name = job["name"][:20]
        print(f"{job['id']:18s} {name:20s} {job['status']:10s} {rounds:>9s} {accuracy:>9s}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args, args.job_id)
    job = client(args).request("GET", f"/api/v1/jobs/{args.job_id}").json()
    if args.json:
        print_json(job)
    else:
        _print_job(job, shown_rounds=0)
    return 0


def _watch(args: argparse.Namespace, job_id: str) -> int:
    """Print each round as it closes; exit 0 when the job completes, 1 if it fails."""
    api = client(args)
    shown = 0
    while True:
        job = api.request("GET", f"/api/v1/jobs/{job_id}").json()
        if not args.json:
            shown = _print_job(job, shown)
        if job["status"] in TERMINAL:
            if args.json:
                print_json(job)
            return 0 if job["status"] == "completed" else 1
        time.sleep(1.0)


def _print_job(job: dict[str, Any], shown_rounds: int) -> int:
    """Print the header once and the rounds not shown yet; returns rounds shown."""
    if shown_rounds == 0:
        print(f"{job['id']}  {job['name']}  {job['algorithm']}  {job['rounds']} rounds")
        header = ("round", "accuracy", "loss", "uploads", "up KB", "seconds")
        print(" ".join(f"{h:>{w}s}" for h, w in zip(header, (5, 9, 8, 7, 8, 8), strict=True)))
    for metric in job["metrics"][shown_rounds:]:
        print(
            f"{metric['round']:5d} {metric['test_accuracy']:9.4f} {metric['loss']:8.4f} "
            f"{metric['uploads']:7d} {metric['bytes_up'] / 1024:8.1f} {metric['seconds']:8.1f}",
            flush=True,
        )
    if job["status"] in TERMINAL:
        reason = f": {job['reason']}" if job.get("reason") else ""
        print(f"{job['status']}{reason}")
    return len(job["metrics"])


def run_cancel(args: argparse.Namespace) -> int:
    job = client(args).request("POST", f"/api/v1/jobs/{args.job_id}/cancel").json()
    if args.json:
        print_json(job)
    else:
        print(f"{job['id']} {job['status']}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    query = f"?round={args.round}" if args.round is not None else ""
    frame = client(args).request("GET", f"/api/v1/jobs/{args.job_id}/model{query}").body
    out = args.out or f"{args.job_id}.bfm"
    save_model(out, frame)
    if args.json:
        print_json({"job_id": args.job_id, "path": out, "bytes": len(frame)})
    else:
        print(f"wrote {out} ({len(frame)} bytes)")
    return 0
