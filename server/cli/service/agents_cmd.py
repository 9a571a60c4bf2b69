"""``bitfleet agents``: enroll, list and revoke agents over the REST API."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from bitfleet.cliargs import identifier
from bitfleet.server.cli.output import print_json
from bitfleet.server.cli.service.client_options import add_client_options, client

agent_id = identifier("agent id")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agents", help="enroll and manage agents", description="Manage edge agents."
    )
    actions = parser.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="enroll an agent: prints its id and secret (once)")
    add.add_argument("--id", dest="agent_id", type=agent_id, help="agent id (default: generated)")
    add.set_defaults(func=run_add)
    listing = actions.add_parser("list", help="list agents with presence and contributions")
    listing.set_defaults(func=run_list)
    revoke = actions.add_parser("revoke", help="revoke an agent")
    revoke.add_argument("agent_id", type=agent_id, help="the agent to revoke")
    revoke.set_defaults(func=run_revoke)
    for action in (add, listing, revoke):
        add_client_options(action)


def run_add(args: argparse.Namespace) -> int:
    enrolled = client(args).enroll(args.agent_id)
    if args.json:
        print_json(dataclasses.asdict(enrolled))
    else:
        print(f"agent_id {enrolled.agent_id}\nsecret   {enrolled.secret}")
        print("the secret is shown once; on the board run:")
        print(
            f"  bitfleet-agent enroll --coordinator {args.url} "
            f"--agent-id {enrolled.agent_id} --secret={enrolled.secret}"
        )
    return 0


def run_list(args: argparse.Namespace) -> int:
    agents = client(args).agents()
    if args.json:
        print_json({"agents": [dataclasses.asdict(agent) for agent in agents]})
        return 0
    print(f"{'agent':24s} {'state':8s} {'transport':9s} {'last seen':>10s} {'rounds':>6s}")
    now = time.time()
    for agent in agents:
        state = "revoked" if agent.revoked else ("online" if agent.online else "offline")
        seen = f"{now - agent.last_seen:.0f}s ago" if agent.last_seen else "never"
        print(
            f"{agent.agent_id:24s} {state:8s} {agent.transport or '-':9s} {seen:>10s} "
            f"{agent.rounds_contributed:6d}"
        )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    agent = client(args).revoke(args.agent_id)
    if args.json:
        print_json(dataclasses.asdict(agent))
    else:
        print(f"{agent.agent_id} revoked")
    return 0
