"""Options every API client subcommand shares: coordinator URL, admin token, CA, --json."""

from __future__ import annotations

import argparse
import os

from bitfleet.cliargs import existing_file, http_url
from bitfleet.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, Client
from bitfleet.tls import CA_FILE_ENV


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=http_url,
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"coordinator URL (env {URL_ENV}, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV), help=f"admin token (env {TOKEN_ENV})"
    )
    parser.add_argument(
        "--ca-file",
        type=existing_file,
        help=f"CA to verify an https:// coordinator against (env {CA_FILE_ENV}; default: the "
        "system's CAs)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow http:// off loopback (the admin token then crosses the network in clear)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def client(args: argparse.Namespace) -> Client:
    """The API client; the admin token crosses only loopback in clear, unless asked."""
    return Client(args.url, args.token, ca_file=args.ca_file, insecure=args.insecure)
