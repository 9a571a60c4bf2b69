"""The agent's configuration file: coordinator URL, broker URL, agent id and secret.

JSON, written with 0600 permissions because it holds the agent's secret. The path is
``--config``, else ``$BITFLEET_AGENT_CONFIG``, else ``~/.config/bitfleet-agent/agent.json``.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bitfleet.errors import ConfigError
from bitfleet.httpclient import check_base_url
from bitfleet.protocol import check_id

CONFIG_ENV = "BITFLEET_AGENT_CONFIG"
STATE_ENV = "BITFLEET_AGENT_STATE"


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

    def __post_init__(self) -> None:
        check_id(self.agent_id, "agent id")
        check_base_url(self.coordinator)
        if not self.secret:
            raise ConfigError(
                "the agent secret is empty: use the one 'bitfleet agents add' printed"
            )

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
