"""The ``bitfleet`` command line.

Subcommands are grouped by what they serve: ``service/`` the coordinator and its clients,
``local/`` single-machine tools, ``demo/`` the harness that starts a whole cluster. Each
lives in its own module exposing ``register(subparsers)``; the module's
parser sets ``func`` to a ``run(args) -> int`` callable. Exit codes: 0 success, 1 a run
that failed (e.g. a benchmark target missed is *not* a failure), 2 a user error (bad
option, missing or malformed input: one line on stderr, and with ``--json`` one JSON error
object on stdout, see :mod:`bitfleet.cliargs`), 130 interrupted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bitfleet import __version__
from bitfleet.cliargs import CliParser, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The full parser tree; subcommand modules are imported here, once."""
    from bitfleet.server.cli.demo import demo_cmd
    from bitfleet.server.cli.local import (
        bench_cmd,
        data_cmd,
        eval_cmd,
        export_cmd,
        lastmile_cmd,
        pretrain_cmd,
        simulate_cmd,
        train_cmd,
    )
    from bitfleet.server.cli.service import agents_cmd, coordinator_cmd, jobs_cmd, tls_cmd

    parser = CliParser(
        prog="bitfleet",
        description="Federated edge training of tiny quantized networks.",
    )
    parser.add_argument("--version", action="version", version=f"bitfleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (
        demo_cmd,
        train_cmd,
        pretrain_cmd,
        lastmile_cmd,
        simulate_cmd,
        eval_cmd,
        export_cmd,
        data_cmd,
        bench_cmd,
        coordinator_cmd,
        jobs_cmd,
        agents_cmd,
        tls_cmd,
    )
    for module in modules:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitfleet`` console script."""
    return run_cli(build_parser(), argv)
