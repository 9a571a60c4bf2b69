"""What the ``bitfleet`` and ``bitfleet-agent`` command lines share: argument types and errors.

One contract for both CLIs: a user mistake (a bad option, a missing or unreadable file, a
malformed input) prints one line ``PROG: error: <what is wrong and how to fix it>`` on
stderr and exits 2; with ``--json`` among the arguments it also prints one JSON object
``{"error": {"type": ..., "message": ...}}`` on stdout, and nothing else there. Option
values are checked by the argparse types below, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.httpclient import check_base_url
from bitfleet.protocol import check_id

# The exit codes of both commands, ``bitfleet`` and ``bitfleet-agent``.
EXIT_OK = 0
EXIT_FAILURE = 1  # a run, job or wait that failed (the agent giving up included)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """argparse rejected the command line; raised instead of exiting, so that ``run_cli``
    reports it like every other user error (as JSON under ``--json``)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise :class:`UsageError` instead of exiting;
    its subparsers are CliParsers too (argparse creates them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command's ``func(args) -> int``, turning every user
    error into one line on stderr (and one JSON object on stdout under --json), exit 2.

    Usage errors are returned like every other user error, so ``main(argv)`` gives the exit
    code for all of them; only ``--help`` and ``--version`` still leave through argparse's
    ``SystemExit(0)``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    prog = parser.prog
    try:
        args = parser.parse_args(arguments)
        return int(args.func(args))
    except UsageError as error:
        if not as_json:
            error.parser.print_usage(sys.stderr)
        return report_error(error.parser.prog, "UsageError", str(error), as_json)
    except BitfleetError as error:
        return report_error(prog, type(error).__name__, str(error), as_json)
    except BrokenPipeError:  # the reader left (``| head``): stdout can take nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as error:  # a user-named path: missing, unreadable, disk full
        return report_error(prog, "OSError", describe_os_error(error), as_json)
    except MemoryError as error:
        message = f"not enough memory ({error}); choose smaller sizes or less data"
        return report_error(prog, "MemoryError", message, as_json)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def report_error(prog: str, kind: str, message: str, as_json: bool) -> int:
    """The one error line on stderr, plus the JSON error object on stdout for scripts."""
    line = " ".join(message.split())  # one line, whatever the message holds
    print(f"{prog}: error: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": {"type": kind, "message": line}}, sort_keys=True))
    return EXIT_USAGE


def describe_os_error(error: OSError) -> str:
    """``PATH: Permission denied`` rather than ``[Errno 13] Permission denied: 'PATH'``."""
    reason = error.strerror or str(error)
    return reason if error.filename is None else f"{error.filename}: {reason}"


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for whole numbers in ``low..high`` (no upper bound if None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
tcp_port = int_range(1, 65535)


def positive_float(text: str) -> float:
    """A finite number above zero (learning rates, concentrations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def existing_file(text: str) -> str:
    """A path that names a file, checked before any work starts."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def output_file(text: str) -> str:
    """A file to write, checked before the work that produces it (training can take hours)."""
    path = Path(text)
    directory = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file to write")
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: directory {directory} is not writable")
    return text


def http_url(text: str) -> str:
    """A coordinator URL, http(s)://HOST[:PORT][/PATH]."""
    try:
        return check_base_url(text)
    except BitfleetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def identifier(what: str) -> Callable[[str], str]:
    """An argparse type for job and agent ids (they end up in URLs and MQTT topics)."""

    def parse(text: str) -> str:
        try:
            return check_id(text, what)
        except BitfleetError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def label_column(text: str) -> int | str:
    """A CSV label column, given as an index (possibly negative) or as a header name."""
    try:
        return int(text)
    except ValueError:
        return text


# The largest file a command reads whole (a job file with its base64 model, a model file):
# the frame limit, so any model a coordinator would take fits.
MAX_INPUT_FILE_BYTES = 64 << 20


def read_bounded(path: str, what: str, max_bytes: int = MAX_INPUT_FILE_BYTES) -> bytes:
    """The bytes of a file the user named (``-``: standard input), refused with a
    ConfigError past ``max_bytes`` before more is read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(max_bytes + 1)
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {path} is larger than {max_bytes} bytes")
    return data


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """A JSON object from a file the user named (bounded as :func:`read_bounded`)."""
    try:
        value = json.loads(read_bounded(path, what))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return value


def add_label_column_argument(parser: argparse.ArgumentParser) -> None:
    """``--label-column``, the same on both commands; the file it names checks it when
    loaded (:func:`bitfleet.datasets.load_dataset`)."""
    parser.add_argument(
        "--label-column",
        type=label_column,
        default=-1,
        metavar="COL",
        help="label column of a CSV file: index or header name (default: last column)",
    )
