"""A small JSON/bytes HTTP client on the standard library, for the CLI, the agent and
:class:`bitfleet.Client`.

No third-party dependency, so the agent installs on a board with numpy and paho-mqtt only.
Every failure is one :class:`ClientError` subclass, shaped after httpx's: the coordinator
refused (:class:`StatusError`, by status), could not be reached (:class:`ConnectError`,
:class:`TLSError`) or answered something that is not an answer (:class:`ResponseError`).
What a response may hold is bounded: a server (or an impostor) cannot make the client
read more than ``max_response_bytes``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from bitfleet import __version__
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.frames import DEFAULT_MAX_FRAME_BYTES
from bitfleet.tls import CA_FILE_ENV, client_context

# An error answer is a short JSON detail; more than this is not the coordinator speaking.
MAX_ERROR_BYTES = 64 << 10


class ClientError(BitfleetError):
    """A request to the coordinator failed. ``status`` is the HTTP status, or 0 when no
    HTTP answer came; ``body`` the decoded JSON of an error answer (None otherwise)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# The name the agent and the tests catch; one class, not a second tree.
ApiError = ClientError


class StatusError(ClientError):
    """The coordinator answered with an error status; ``detail`` is its explanation."""

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(status, f"{detail} (HTTP {status})", body)
        self.detail = detail


class AuthError(StatusError):
    """401/403: no token, or a token this coordinator does not accept."""


class NotFoundError(StatusError):
    """404: no such job, round model or agent."""


class ConflictError(StatusError):
    """409: the job's or agent's state does not allow it (already finished, id taken)."""


class InvalidRequestError(StatusError):
    """400/413/422: the coordinator refused the request's content; the detail says why."""


class ServerError(StatusError):
    """5xx: the coordinator (or a proxy in front of it) failed."""


class ConnectError(ClientError):
    """The coordinator could not be reached, or did not answer in time (status 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class TLSError(ConnectError):
    """The TLS handshake failed: most often a certificate the CA file does not vouch for."""


class ResponseError(ClientError):
    """An answer that is not one: too large, not HTTP, or not the JSON the API documents."""


_STATUS_ERRORS: dict[int, type[StatusError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        """The decoded body (None if empty); a body that is not JSON is a ResponseError."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise ResponseError(
                self.status, f"the coordinator's answer is not valid JSON: {error}"
            ) from None


@dataclass
class ApiClient:
    """``https://`` URLs are verified against ``ca_file`` (default ``$BITFLEET_CA_FILE``,
    else the system's CAs)."""

    base_url: str
    token: str | None = None
    timeout: float = 30.0
    ca_file: str | None = None
    max_response_bytes: int = DEFAULT_MAX_FRAME_BYTES

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
        """Send a request; a status outside ``ok`` raises its :class:`StatusError`."""
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
        context = client_context(self.ca_file) if url.startswith("https://") else None
        try:
            response = self._send(request, context)
        except (urllib.error.URLError, OSError, http.client.IncompleteRead) as error:
            raise self._unreachable(error) from None
        except http.client.HTTPException as error:
            raise ResponseError(
                0, f"{self.base_url} did not answer in HTTP ({error!r}); is it the coordinator?"
            ) from None
        if response.status not in ok:
            raise status_error(response)
        return response

    def _send(self, request: urllib.request.Request, context: ssl.SSLContext | None) -> Response:
        """The answer, an error status included (its body bounded more tightly)."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as reply:
                body = _read(reply, reply.status, self.max_response_bytes)
                return Response(reply.status, body, reply.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            with error:
                body = _read(error, error.code, MAX_ERROR_BYTES)
            return Response(error.code, body, error.headers.get("Content-Type", "") or "")

    def _unreachable(self, error: Exception) -> ConnectError:
        reason = getattr(error, "reason", error)
        if isinstance(reason, http.client.IncompleteRead):
            return ConnectError(f"the coordinator at {self.base_url} broke off its answer")
        if isinstance(reason, ssl.SSLError):
            return TLSError(
                f"TLS with the coordinator at {self.base_url} failed: {reason}; is the CA file "
                f"(--ca-file, {CA_FILE_ENV}) the one that signed its certificate?"
            )
        if isinstance(reason, TimeoutError):
            return ConnectError(
                f"the coordinator at {self.base_url} did not answer within {self.timeout:g} s"
            )
        return ConnectError(
            f"cannot reach the coordinator at {self.base_url}: {reason}; is it running?"
        )


def _read(reply: Any, status: int, limit: int) -> bytes:
    """The body, never more than ``limit`` bytes of it held in memory."""
    body: bytes = reply.read(limit + 1)
    if len(body) > limit:
        raise ResponseError(status, f"the coordinator's answer is larger than {limit} bytes")
    return body


def status_error(response: Response) -> StatusError:
    """The error for a refusal: its class by status, its message the server's detail."""
    try:
        body = response.json()
    except ResponseError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        detail = body["detail"]
    else:
        detail = "the coordinator gave no reason"
    kind = _STATUS_ERRORS.get(response.status, ServerError if response.status >= 500 else None)
    return (kind or StatusError)(response.status, detail, body)


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
