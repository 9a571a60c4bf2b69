"""bitfleet's common core: bit packing, kernels, models, trainers, data sets, file format,
and :class:`Client`, the coordinator's API from Python.

Imports numpy only (numba when present). Never imports ``server`` or ``edge_agent``. The
client's names load on first use (PEP 562), so ``import bitfleet.frames`` does not pull in
the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitfleet.client import (
        Agent,
        AuthError,
        Client,
        ClientError,
        ConflictError,
        ConnectError,
        Decline,
        Enrollment,
        InvalidRequestError,
        Job,
        NotFoundError,
        ResponseError,
        Round,
        ServerError,
        StatusError,
        TLSError,
    )

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AuthError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectError",
    "Decline",
    "Enrollment",
    "InvalidRequestError",
    "Job",
    "NotFoundError",
    "ResponseError",
    "Round",
    "ServerError",
    "StatusError",
    "TLSError",
    "__version__",
]
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> object:
    if name in _CLIENT_NAMES:
        from bitfleet import client

        return getattr(client, name)
    raise AttributeError(f"module 'bitfleet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})
