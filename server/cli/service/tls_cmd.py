"""``bitfleet tls``: a throwaway certificate authority for a first cluster.

``tls init`` writes a CA and a server certificate for the names the coordinator and the
broker are reached by (the compose cluster, a lab); ``tls client`` issues a client
certificate for mutual TLS. Production fleets bring their own CA: the coordinator and the
broker only need certificate and key files, clients a ``--ca-file``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bitfleet.cliargs import identifier
from bitfleet.errors import ConfigError
from bitfleet.server.cli.output import print_json

DEFAULT_NAMES = "localhost,127.0.0.1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tls",
        help="make a throwaway CA and certificates (demo, compose, labs)",
        description="A private CA for a first cluster; certificates valid for 30 days.",
    )
    actions = parser.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="a CA and a server certificate in DIR (kept if DIR has one already)"
    )
    init.add_argument("--dir", type=Path, required=True, help="where to write the PEM files")
    init.add_argument(
        "--names",
        default=DEFAULT_NAMES,
        help=f"comma-separated host names and addresses of the server (default {DEFAULT_NAMES})",
    )
    init.set_defaults(func=run_init)
    client = actions.add_parser("client", help="a client certificate for mutual TLS")
    client.add_argument("--dir", type=Path, required=True, help="the CA directory of 'init'")
    client.add_argument(
        "--name", type=identifier("agent id"), required=True, help="the agent id it is for"
    )
    client.set_defaults(func=run_client)
    for action in (init, client):
        action.add_argument("--json", action="store_true", help="print JSON for scripts")


def load_tlsca() -> Any:
    """server.tlsca, which needs the server extra's cryptography package."""
    try:
        from bitfleet.server import tlsca
    except ImportError as error:
        raise ConfigError(
            "bitfleet tls needs the server extra: pip install 'bitfleet[server]' "
            f"({error.name or error} is missing)"
        ) from None
    return tlsca


def run_init(args: argparse.Namespace) -> int:
    tlsca = load_tlsca()
    create_ca, load_ca = tlsca.create_ca, tlsca.load_ca

    names = tuple(name.strip() for name in args.names.split(",") if name.strip())
    if not names:
        raise ConfigError("--names needs at least one host name or address")
    existing = (args.dir / "ca.pem").exists()
    ca = load_ca(args.dir) if existing else create_ca(args.dir, names)
    files = {"ca": str(ca.ca), "cert": str(ca.server.cert), "key": str(ca.server.key)}
    if args.json:
        print_json({**files, "created": not existing})
    else:
        print(f"{'kept the existing' if existing else 'created a'} CA in {args.dir}")
        for what, path in files.items():
            print(f"  {what:5s} {path}")
    return 0


def run_client(args: argparse.Namespace) -> int:
    pair = load_tlsca().load_ca(args.dir).client(args.name)
    if args.json:
        print_json({"cert": str(pair.cert), "key": str(pair.key)})
    else:
        print(f"client certificate for {args.name}: {pair.cert} (key {pair.key})")
    return 0
