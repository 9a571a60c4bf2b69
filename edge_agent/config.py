"""The agent's configuration file: coordinator URL, broker URL, agent id and secret, TLS
files, and how the agent rides out a coordinator outage.

JSON, written with 0600 permissions because it holds the agent's secret. The path is
``--config``, else ``$BITFLEET_AGENT_CONFIG``, else ``~/.config/bitfleet-agent/agent.json``.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bitfleet.edge_agent.backoff import DEFAULT_MAX_BACKOFF_S
from bitfleet.errors import ConfigError
from bitfleet.httpclient import check_base_url
from bitfleet.protocol import check_id

CONFIG_ENV = "BITFLEET_AGENT_CONFIG"
STATE_ENV = "BITFLEET_AGENT_STATE"
MAX_BACKOFF_LIMIT_S = 3600.0  # a longer wait between tries would only hide a return


def default_config_path() -> Path:
    return Path(
        os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "bitfleet-agent" / "agent.json"
    )


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".local" / "state" / "bitfleet-agent")


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str
    agent_id: str
    secret: str
    mqtt_url: str | None = None
    # TLS: the CA to verify the coordinator and the broker against (default: the system's,
    # or $BITFLEET_CA_FILE), and a client certificate for brokers that require one.
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # Retries back off from 1 s, doubling (with full jitter) up to max_backoff_s; an
    # unreachable coordinator is waited for forever, or give_up_after_s (then exit 1).
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    give_up_after_s: float | None = None

    def __post_init__(self) -> None:
        check_id(self.agent_id, "agent id")
        check_base_url(self.coordinator)
        if not self.secret:
            raise ConfigError(
                "the agent secret is empty: use the one 'bitfleet agents add' printed"
            )
        check_seconds(self.max_backoff_s, "max_backoff_s", 1.0, MAX_BACKOFF_LIMIT_S)
        if self.give_up_after_s is not None:
            check_seconds(self.give_up_after_s, "give_up_after_s", 0.0, math.inf)

    def save(self, path: Path) -> None:
        """Write atomically with 0600 permissions (mkstemp creates it so, never readable by
        others), through a temp file of a unique name so concurrent saves cannot collide."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as error:
            raise ConfigError(
                f"cannot write agent config {path} ({error.strerror}): pass --config with a "
                "path this user can write"
            ) from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(self), handle, indent=2)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        try:
            mode = path.stat().st_mode
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no agent config at {path}: run 'bitfleet-agent enroll' first, or pass "
                "--coordinator, --agent-id and --secret"
            ) from None
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read agent config {path}: {error}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by others: chmod 600 {path}")
        try:
            return cls(**data)
        except TypeError:
            raise ConfigError(
                f"{path} is not an agent config (expected {list(cls.__dataclass_fields__)})"
            ) from None


def check_seconds(value: object, name: str, low: float, high: float) -> float:
    """A duration from a config file or the command line: a finite number in low..high."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f"at least {low:g}" if math.isinf(high) else f"from {low:g} to {high:g}"
        raise ConfigError(f"{name} must be {bounds} seconds, got {value!r}")
    return float(value)
