"""The agent protocol, shared by coordinator and agents: version, topics, message schemas.

MQTT topics live under one versioned root, lowercase, no leading slash; an agent writes only
under its own id and reads only under its own id, and the sealed round models (the broker's
ACL enforces both), so an agent learns only of the jobs and rounds it was selected for::

    bitfleet/v2/agents/{agent}/status            agent: retained; "offline" as Last Will
    bitfleet/v2/agents/{agent}/tasks             coordinator: retained, the agent's current task
    bitfleet/v2/agents/{agent}/events            coordinator: upload receipts
    bitfleet/v2/coordinator/status               coordinator: retained "online"; "offline" as
                                                 Last Will (agents resend held uploads when it
                                                 comes back)
    bitfleet/v2/jobs/{job}/rounds/{r}/model      coordinator: retained, the round's model sealed
                                                 under a key only the selected agents' tasks
                                                 carry (or /{i} per slice when it needs several
                                                 messages); every agent may read it
    bitfleet/v2/jobs/{job}/rounds/{r}/updates/{agent}   agent: signed update frames
    bitfleet/v2/jobs/{job}/rounds/{r}/declines/{agent}  agent: a task it cannot take, and why

The HTTP fallback carries the same frames and JSON bodies (see ``server/api/fleet.py``).
Messages are JSON objects; ``parse_*`` functions validate them and raise
:class:`ProtocolError` with what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from bitfleet.errors import BitfleetError
from bitfleet.sealing import is_hex_key, unseal

# 2: one sealed model per round (jobs/{job}/rounds/{r}/model), not one copy per agent.
PROTOCOL_VERSION = 2
TOPIC_ROOT = f"bitfleet/v{PROTOCOL_VERSION}"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
AGENT_STATES = ("online", "training", "offline")
# The most samples one update (or one agent's capabilities) may claim: a vote weight must
# fit the tallies' counters and the store's 64-bit integers with room to sum them.
MAX_SAMPLES = 2**31 - 1
# The largest JSON message (status, task, receipt, decline) either side parses.
MAX_MESSAGE_BYTES = 64 * 1024
# The most messages one round's model may take: a 64 MiB frame (the largest) in 1 KiB
# messages (the smallest --max-message-bytes).
MAX_MODEL_CHUNKS = 65536


class ProtocolError(BitfleetError):
    """A message or topic that does not follow the protocol."""


def check_id(value: str, what: str) -> str:
    """Ids appear in topics: lowercase letters, digits, '-' and '_', at most 64 characters."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ProtocolError(
            f"{what} {value!r} is not valid: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


# Names no agent may take: the coordinator's default broker user and other identities an
# operator would read as privileged. The coordinator also reserves its configured broker user.
RESERVED_AGENT_IDS = frozenset(
    {"coordinator", "admin", "administrator", "root", "bitfleet", "broker", "mosquitto", "system"}
)


def check_agent_id(value: str, reserved: frozenset[str] | set[str] = RESERVED_AGENT_IDS) -> str:
    """An id a new agent may take: the id pattern, and not reserved."""
    check_id(value, "agent id")
    if value in reserved:
        raise ProtocolError(
            f"agent id {value!r} is reserved (reserved: {', '.join(sorted(reserved))}); "
            "choose another name"
        )
    return value


def agent_status_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/agents/{check_id(agent_id, 'agent id')}/status"


def agent_tasks_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/agents/{check_id(agent_id, 'agent id')}/tasks"


def agent_events_topic(agent_id: str) -> str:
    return f"{TOPIC_ROOT}/agents/{check_id(agent_id, 'agent id')}/events"


def round_model_topic(job_id: str, round_index: int) -> str:
    """Slice ``i`` of a sealed model that needs several messages is at ``{topic}/{i}``."""
    return f"{TOPIC_ROOT}/jobs/{check_id(job_id, 'job id')}/rounds/{int(round_index)}/model"


def round_model_topics(job_id: str, round_index: int, messages: int) -> tuple[str, list[str]]:
    """The subscription that takes a round's sealed model in ``messages`` messages, and the
    topic of each message in order."""
    base = round_model_topic(job_id, round_index)
    if messages == 1:
        return base, [base]
    return f"{base}/+", [f"{base}/{index}" for index in range(messages)]


def open_round_model(task: Task, received: dict[str, bytes]) -> bytes | None:
    """The model ``task`` names, from the sealed slices received so far (by topic): None
    while one is missing; FrameError("sealed") if they are not that model."""
    _, topics = round_model_topics(task.job_id, task.round, task.model_chunks)
    if not all(topic in received for topic in topics):
        return None
    return unseal(b"".join(received[t] for t in topics), task.model_key, task.model_sha256)


def update_topic(job_id: str, round_index: int, agent_id: str) -> str:
    return (
        f"{TOPIC_ROOT}/jobs/{check_id(job_id, 'job id')}/rounds/{int(round_index)}"
        f"/updates/{check_id(agent_id, 'agent id')}"
    )


def decline_topic(job_id: str, round_index: int, agent_id: str) -> str:
    return update_topic(job_id, round_index, agent_id).replace("/updates/", "/declines/")


# The HTTP fleet API (the MQTT topics' fallback): its prefix, and each route relative to it
# in the coordinator's (FastAPI's) template syntax; agents build paths with fleet_path.
FLEET_PREFIX = "/api/v1/fleet"
FLEET_WHOAMI = "/whoami"
FLEET_STATUS = "/status"
FLEET_TASK = "/task"
FLEET_MODEL = "/jobs/{job_id}/rounds/{round_index}/model"
FLEET_UPDATES = "/jobs/{job_id}/rounds/{round_index}/updates"
FLEET_DECLINE = "/jobs/{job_id}/rounds/{round_index}/decline"


def fleet_path(route: str, job_id: str | None = None, round_index: int | None = None) -> str:
    """The absolute path of a fleet ``route`` (one of the ``FLEET_*`` templates), ids checked."""
    values: dict[str, str | int] = {}
    if job_id is not None:
        values["job_id"] = check_id(job_id, "job id")
    if round_index is not None:
        values["round_index"] = int(round_index)
    return FLEET_PREFIX + route.format(**values)


ALL_STATUS_TOPICS = f"{TOPIC_ROOT}/agents/+/status"
ALL_UPDATE_TOPICS = f"{TOPIC_ROOT}/jobs/+/rounds/+/updates/+"
ALL_DECLINE_TOPICS = f"{TOPIC_ROOT}/jobs/+/rounds/+/declines/+"
COORDINATOR_STATUS_TOPIC = f"{TOPIC_ROOT}/coordinator/status"
COORDINATOR_ONLINE = b'{"state": "online"}'
COORDINATOR_OFFLINE = b'{"state": "offline"}'


# What an agent may publish and subscribe to, in Mosquitto's ACL pattern syntax ("%u" is the
# agent's own id): the broker ACL the coordinator writes is built from these.
AGENT_PUBLISHES = (
    f"{TOPIC_ROOT}/agents/%u/status",
    f"{TOPIC_ROOT}/jobs/+/rounds/+/updates/%u",
    f"{TOPIC_ROOT}/jobs/+/rounds/+/declines/%u",
)
AGENT_SUBSCRIBES = (
    f"{TOPIC_ROOT}/agents/%u/tasks",
    f"{TOPIC_ROOT}/agents/%u/events",
    f"{TOPIC_ROOT}/jobs/+/rounds/+/model",
    f"{TOPIC_ROOT}/jobs/+/rounds/+/model/+",
    COORDINATOR_STATUS_TOPIC,
)


def parse_update_topic(topic: str, kind: str = "updates") -> tuple[str, int, str]:
    """``(job_id, round, agent_id)`` of an update (or ``kind="declines"``) topic."""
    parts = topic.split("/")
    shape_ok = len(parts) == 8 and "/".join(parts[:2]) == TOPIC_ROOT
    if not shape_ok or parts[2::2] != ["jobs", "rounds", kind]:
        raise ProtocolError(f"{topic!r} is not a {kind} topic")
    if not parts[5].isdigit():
        raise ProtocolError(f"round {parts[5]!r} in {topic!r} is not a number")
    return check_id(parts[3], "job id"), int(parts[5]), check_id(parts[7], "agent id")


def parse_status_topic(topic: str) -> str:
    """The agent id of a status topic."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/agents" or parts[4] != "status":
        raise ProtocolError(f"{topic!r} is not an agent status topic")
    return check_id(parts[3], "agent id")


@dataclass(frozen=True)
class AgentStatus:
    """What an agent announces about itself (retained; the Last Will says offline)."""

    agent_id: str
    state: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Task:
    """One round of work for one agent: train the round's global model on local data."""

    job_id: str
    round: int
    algorithm: str
    deadline: float
    attempt: int = 0
    # MQTT only: how many messages the sealed model takes, its key and its SHA-256 (hex).
    model_chunks: int = 1
    model_key: str = ""
    model_sha256: str = ""
    local_epochs: int = 1
    seed: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION


# Receipt reasons that mean "later" (the coordinator could not take the upload right now):
# the agent keeps the upload and resends it. Every other receipt is final.
TRANSIENT_REASONS = ("storage", "busy", "internal")
# The reason of an accepted receipt for an upload the coordinator already held: sent again
# (after a lost receipt, a restart), answered, never counted twice.
RESENT = "resent"
# Why the coordinator refused an upload it could read (a frame it could not read is refused
# with its FrameError's reason: forged, unsigned, mismatch, unknown_agent, oversized, ...).
LATE = "late"  # its round has closed
WRONG_ROUND = "wrong_round"  # a round that has not opened
NOT_SELECTED = "not_selected"
JOB_NOT_RUNNING = "job_not_running"
UNKNOWN_JOB = "unknown_job"
OUTLIER = "outlier"  # the job screens updates, and this one looks inverted or random
# Every refusal reason and the HTTP status that carries it on the fleet API.
REFUSAL_STATUS = {
    LATE: 409,
    WRONG_ROUND: 409,
    NOT_SELECTED: 409,
    JOB_NOT_RUNNING: 409,
    UNKNOWN_JOB: 404,
    OUTLIER: 409,
    "forged": 403,
    "unsigned": 403,
    "mismatch": 403,
    "unknown_agent": 403,
    "oversized": 413,
    **dict.fromkeys(TRANSIENT_REASONS, 503),
}


@dataclass(frozen=True)
class UploadReceipt:
    """The coordinator's answer to an upload: accepted, or refused with a reason."""

    job_id: str
    round: int
    agent_id: str
    accepted: bool
    reason: str = ""
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Decline:
    """An agent cannot take a task (e.g. the model does not fit its memory)."""

    job_id: str
    round: int
    agent_id: str
    reason: str
    protocol: int = PROTOCOL_VERSION


Message = TypeVar("Message", AgentStatus, Task, UploadReceipt, Decline)


def encode_message(message: AgentStatus | Task | UploadReceipt | Decline) -> bytes:
    return json.dumps(asdict(message), sort_keys=True).encode()


def parse_message(kind: type[Message], raw: bytes | str | dict[str, Any]) -> Message:
    """Validate a JSON message against ``kind``'s fields and their types."""
    try:
        if not isinstance(raw, dict) and len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"{kind.__name__} exceeds {MAX_MESSAGE_BYTES} bytes")
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"{kind.__name__} is not valid JSON: {error}") from None
    except (RecursionError, ValueError):  # nested too deep, or an integer of 4,300+ digits
        raise ProtocolError(
            f"{kind.__name__} is not a plausible message (nesting, numbers)"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{kind.__name__} must be a JSON object")
    if data.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {data.get('protocol')} is not supported (this side speaks "
            f"{PROTOCOL_VERSION}); upgrade the older side"
        )
    known = {f.name: f for f in fields(kind)}
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name not in data:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ProtocolError(f"{kind.__name__} lacks the field {name!r}")
            continue
        values[name] = _checked(kind.__name__, name, spec.type, data[name])
    message = kind(**values)
    for name in ("agent_id", "job_id"):
        if hasattr(message, name):
            check_id(getattr(message, name), name.replace("_", " "))
    if isinstance(message, AgentStatus) and message.state not in AGENT_STATES:
        raise ProtocolError(f"agent state {message.state!r} is not one of {AGENT_STATES}")
    if isinstance(message, Task):
        _check_task_model(message)
    return message


def _check_task_model(task: Task) -> None:
    if not 1 <= task.model_chunks <= MAX_MODEL_CHUNKS:
        raise ProtocolError(f"Task.model_chunks must be 1 to {MAX_MODEL_CHUNKS}")
    for name in ("model_key", "model_sha256"):
        value = getattr(task, name)
        if value and not is_hex_key(value):
            raise ProtocolError(f"Task.{name} must be empty or 64 lowercase hex digits")


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict[str, Any]": (dict,),
}


def _checked(kind: str, name: str, annotation: Any, value: Any) -> Any:
    expected = _TYPES[str(annotation)]
    if isinstance(value, bool) and bool not in expected:
        raise ProtocolError(f"{kind}.{name} must be {annotation}, got {value!r}")
    if not isinstance(value, expected):
        raise ProtocolError(f"{kind}.{name} must be {annotation}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:port]`` (``mqtts://`` for TLS, default ports 1883/8883)."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ProtocolError(
            f"broker URL {url!r} is not valid: use mqtt://[user:pass@]host[:port] "
            "(or mqtts:// for TLS)"
        )
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError:
        raise ProtocolError(f"broker URL {url!r} has an invalid port") from None
    return BrokerAddress(
        parsed.hostname,
        port,
        unquote(parsed.username) if parsed.username else None,
        unquote(parsed.password) if parsed.password else None,
        tls,
    )
