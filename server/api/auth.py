"""Authentication: an admin bearer token for the control API, agent credentials for the fleet.

Agents authenticate with ``Authorization: Bearer AGENT_ID:SECRET`` (the pair enrollment
handed out; the same secret signs their frames and logs them in to the broker).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bitfleet.server.api.deps import Registry

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "missing credentials: send 'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def is_admin(token: str, admin_token: str | None) -> bool:
    """The admin token (anything, with --no-admin-token)."""
    return admin_token is None or hmac.compare_digest(token.encode(), admin_token.encode())


def agent_of(token: str, secret_of: Callable[[str], str | None]) -> str | None:
    """The agent id an ``AGENT_ID:SECRET`` token proves, or None."""
    agent_id, _, secret = token.partition(":")
    known = secret_of(agent_id) if agent_id else None
    if known is None or not hmac.compare_digest(known.encode(), secret.encode()):
        return None
    return agent_id


def admin_guard(admin_token: str | None) -> Callable[..., None]:
    """A dependency that admits the admin token (or everyone, with --no-admin-token)."""

    def check(credentials: Credentials) -> None:
        if admin_token is not None and not is_admin(_token(credentials), admin_token):
            raise HTTPException(403, "the admin token is not valid for this coordinator")

    return check


def agent_identity(credentials: Credentials, registry: Registry) -> str:
    """The authenticated agent id, or 401/403."""
    agent_id = agent_of(_token(credentials), registry.secret)
    if agent_id is None:
        raise HTTPException(
            403,
            "agent credentials refused: unknown or revoked agent id, or wrong secret; "
            "enroll again with 'bitfleet agents add'",
        )
    return agent_id
