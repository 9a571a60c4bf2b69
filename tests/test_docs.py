"""The docs stay true: the CLI reference is generated, every environment variable is listed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BITFLEET_ADMIN_TOKEN",
        "BITFLEET_MQTT_URL",
        "BITFLEET_URL",
        "BITFLEET_COORDINATOR",
        "BITFLEET_AGENT_ID",
        "BITFLEET_AGENT_SECRET",
        "BITFLEET_CA_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts/cli-reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs/cli.md").read_text() == module.render(), "run scripts/cli-reference.py"


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    source = "\n".join(
        p.read_text() for d in ("server", "edge_agent", "shared") for p in (ROOT / d).rglob("*.py")
    )
    names = set(re.findall(r'"(BITFLEET_[A-Z_]+)"', source))
    readme = (ROOT / "README.md").read_text()
    assert names and not {n for n in names if f"`{n}`" not in readme}


def test_readme_names_the_two_setup_commands_and_they_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme and re.search(rf"^{target}:", makefile, re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()
