"""Write docs/cli.md: every command and flag of `bitfleet` and `bitfleet-agent`, from the parsers.

Run `python scripts/cli-reference.py` after changing a command; tests/test_docs.py fails
while docs/cli.md is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bitfleet.edge_agent.cli import build_parser as agent_parser  # noqa: E402
from bitfleet.server.cli import build_parser as server_parser  # noqa: E402

OUTPUT = ROOT / "docs" / "cli.md"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _describe(prog: str, parser: argparse.ArgumentParser, lines: list[str]) -> None:
    children = _subparsers(parser)
    if children:
        for name, child in children.items():
            _describe(f"{prog} {name}", child, lines)
        return
    lines += [f"### `{prog}`", "", (parser.description or "").strip(), ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.dest.upper()
        metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
        if action.option_strings and action.nargs != 0:
            name += metavar
        help_text = (action.help or "").replace("%(default)s", str(action.default))
        help_text = help_text.replace("%%", "%")
        help_text = help_text.replace("|", "\\|")
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| `{name}` | {help_text} |")
    if rows:
        lines += ["| option | meaning |", "|---|---|", *rows, ""]


def render() -> str:
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argument parsers by `scripts/cli-reference.py`; every command also",
        "answers `--help`.",
        "",
    ]
    _describe("bitfleet", server_parser(), lines)
    _describe("bitfleet-agent", agent_parser(), lines)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
