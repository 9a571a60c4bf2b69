"""A small JSON/bytes HTTP client on the standard library, for the CLI and the agent.

No third-party dependency, so the agent installs on a board with numpy and paho-mqtt only.
Errors are :class:`ApiError` with the server's ``detail`` message, or a clear message when
the server cannot be reached.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from bitfleet import __version__
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.tls import client_context


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
    """``https://`` URLs are verified against ``ca_file`` (default ``$BITFLEET_CA_FILE``,
    else the system's CAs)."""

    base_url: str
    token: str | None = None
    timeout: float = 30.0
    ca_file: str | None = None

    def __post_init__(self) -> None:
        check_base_url(self.base_url)

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
            context = client_context(self.ca_file) if url.startswith("https://") else None
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as reply:
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


def check_base_url(url: str) -> str:
    """A coordinator URL is ``http(s)://HOST[:PORT][/PATH]``: checked once, up front, so a
    typo is a clear error instead of urllib's ``unknown url type`` deep in a request."""
    fix = "use http://HOST:PORT or https://HOST[:PORT], e.g. http://127.0.0.1:8080"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number or not 0..65535
    except ValueError as error:
        raise ConfigError(f"coordinator URL {url!r} is not valid ({error}); {fix}") from None
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "it must start with http:// or https://"
    elif not parts.hostname:
        problem = "it names no host"
    elif any(char.isspace() for char in url):
        problem = "it contains spaces"
    elif port == 0:
        problem = "port 0 is not a port a coordinator listens on"
    elif parts.query or parts.fragment:
        problem = "it must not carry a query (?...) or a fragment (#...)"
    if problem is not None:
        raise ConfigError(f"coordinator URL {url!r} is not valid: {problem}; {fix}")
    return url
