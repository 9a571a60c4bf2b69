"""Job statuses and the one function that moves a job between them.

``pending`` -> ``running`` -> one of :data:`TERMINAL`. The Python client reads statuses, the
coordinator writes them; both take them from here (free of pydantic and of the server, so the
client works on an agent-only install). Every status the coordinator stores went through
:func:`transition`.
"""

from __future__ import annotations

from bitfleet.errors import BitfleetError

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE = (PENDING, RUNNING)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

# Where each status may go next; a terminal status goes nowhere.
_NEXT: dict[str, tuple[str, ...]] = {
    PENDING: (RUNNING, FAILED, CANCELLED),
    RUNNING: (RUNNING, COMPLETED, FAILED, CANCELLED),
}


class JobConflict(BitfleetError):
    """An operation the job's state does not allow (e.g. cancelling a finished job)."""


def transition(current: str, new: str) -> str:
    """``new``, if a job in ``current`` may move there; else :class:`JobConflict`."""
    if new not in _NEXT.get(current, ()):
        if current in TERMINAL:
            raise JobConflict(f"the job is already {current}")
        raise JobConflict(f"a {current} job cannot become {new}")
    return new
