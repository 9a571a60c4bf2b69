"""The installed shape: one import root, ``bitfleet``, over the repository's three folders.

The wheel and the sdist are built from this checkout (``python -m build --no-isolation``, as
``make dist`` does with isolation) and the wheel is installed into a new virtualenv, which must
gain exactly one top-level package; its commands and ``from bitfleet import Client`` must work
there, away from the checkout. The dependencies come from the test virtualenv (a path entry,
no index), so the test needs no network.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"shared": "bitfleet", "server": "bitfleet.server", "edge_agent": "bitfleet.edge_agent"}
OLD_ROOTS = set(FOLDERS)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Absolute names this file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _module_name(path).split(".")
                if path.name != "__init__.py":
                    package.pop()
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.append(base)
    return names


def test_the_package_list_covers_every_folder_with_code() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p) for p in _sources() if p.name == "__init__.py"}
    assert listed == on_disk


def test_no_code_imports_the_folder_names() -> None:
    files = [*_sources(), *(ROOT / "tests").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in OLD_ROOTS
    ]
    # Code held in strings (run in a subprocess) too.
    pattern = re.compile(r"\b(from|import) (shared|server|edge_agent)\b(\.| import|\n|$)")
    offenders += [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for path in files
        for match in pattern.finditer(path.read_text())
    ]
    assert not offenders


def _side(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "bitfleet":
        return "outside"
    return parts[1] if len(parts) > 1 and parts[1] in ("server", "edge_agent") else "shared"


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [("shared", {"server", "edge_agent"}), ("server", {"edge_agent"}), ("edge_agent", {"server"})],
)
def test_imports_point_one_way(side: str, forbidden: set[str]) -> None:
    offenders = [
        f"{_module_name(path)} imports {name}"
        for path in _sources()
        if _side(_module_name(path)) == side
        for name in _imports(path)
        if _side(name) in forbidden
    ]
    assert not offenders


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return out


def test_the_core_imports_with_numpy_alone() -> None:
    """Every module of bitfleet's root (shared/) imports where only numpy is installed:
    paho, pydantic and the rest of the extras are blocked, as on a bare install."""
    modules = sorted(
        "bitfleet"
        + (
            ""
            if p.stem == "__init__"
            else "." + ".".join(p.relative_to(ROOT / "shared").with_suffix("").parts)
        )
        for p in (ROOT / "shared").rglob("*.py")
        if "kernels" not in p.parts or p.stem != "fast"
    )
    script = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('paho', 'pydantic', 'fastapi', 'uvicorn', 'httpx'):\n"
        "            raise ImportError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_sdist_carries_the_sources_license_and_readme(dist: Path) -> None:
    (sdist,) = dist.glob("bitfleet-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names
    assert {str(p.relative_to(ROOT)) for p in _sources()} <= names


def test_the_wheel_has_one_import_root_and_its_metadata(dist: Path) -> None:
    import bitfleet

    (wheel,) = dist.glob("bitfleet-*-py3-none-any.whl")
    assert wheel.name == f"bitfleet-{bitfleet.__version__}-py3-none-any.whl"
    dist_info = f"bitfleet-{bitfleet.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"bitfleet", dist_info}
    assert {f"bitfleet/{p}" for p in ("py.typed", "server/engine.py", "edge_agent/cli.py")} <= set(
        names
    )
    dashboard = ("index.html", "dashboard.js", "uPlot.iife.min.js", "uPlot-LICENSE.txt")
    assert {f"bitfleet/server/ui/static/{name}" for name in dashboard} <= set(names)  # offline
    assert f"Version: {bitfleet.__version__}" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert "Provides-Extra: agent" in metadata and "Provides-Extra: server" in metadata
    assert "Classifier: Programming Language :: Python :: 3" in metadata


def test_the_installed_wheel_works_away_from_the_checkout(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("bitfleet-*-py3-none-any.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    before = set(os.listdir(site))
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    gained = set(os.listdir(site)) - before
    assert {n for n in gained if not n.endswith(".dist-info")} == {"bitfleet"}
    # The dependencies (numpy, paho-mqtt, FastAPI, ...) from this test run's environment, after
    # the new venv's own site-packages: a plain path entry, so no editable finder comes along.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*command: str | Path) -> str:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    probe = (
        "import bitfleet, bitfleet.server.engine, bitfleet.edge_agent.runtime\n"
        "from bitfleet import Client\n"
        "print(bitfleet.__version__, bitfleet.__file__)\n"
    )
    version, location = run(python, "-c", probe).split()
    assert Path(location).is_relative_to(site)
    import bitfleet

    assert version == bitfleet.__version__
    assert "usage: bitfleet-agent" in run(env_dir / "bin" / "bitfleet-agent", "--help")
    assert "usage: bitfleet" in run(env_dir / "bin" / "bitfleet", "--help")
    assert bitfleet.__version__ in run(env_dir / "bin" / "bitfleet", "--version")
