"""A small JSON/bytes HTTP client on the standard library, for the CLI and the agent.

No third-party dependency, so the agent installs on a board with numpy and paho-mqtt only.
Errors are :class:`ApiError` with the server's ``detail`` message, or a clear message when
the server cannot be reached.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from shared import __version__
from shared.errors import BitfleetError


class ApiError(BitfleetError):
    """The coordinator refused a request (``status``) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class ApiClient:
    base_url: str
    token: str | None = None
    timeout: float = 30.0

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str = "application/octet-stream",
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> Response:
        """Send a request; a status outside ``ok`` raises :class:`ApiError`."""
        headers = {"User-Agent": f"bitfleet/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        if data is not None:
            headers["Content-Type"] = content_type
        url = self.base_url.rstrip("/") + path
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                response = Response(
                    reply.status, reply.read(), reply.headers.get("Content-Type", "")
                )
        except urllib.error.HTTPError as error:
            response = Response(
                error.code, error.read(), error.headers.get("Content-Type", "") or ""
            )
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(
                0, f"cannot reach the coordinator at {self.base_url}: {reason}; is it running?"
            ) from None
        if response.status not in ok:
            raise ApiError(response.status, _detail(response), _json_or_none(response))
        return response


def _json_or_none(response: Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _detail(response: Response) -> str:
    body = _json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"{body['detail']} (HTTP {response.status})"
    return f"the coordinator answered HTTP {response.status}"
