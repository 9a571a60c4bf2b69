"""TLS for every link a secret crosses: HTTPS to the coordinator, mqtts:// to the broker.

Clients verify the server against the system's CAs, or a private CA named by ``--ca-file``
/ ``$BITFLEET_CA_FILE``. An agent's secret is also its signing key, so plaintext links are
allowed on loopback only, unless the user says ``--insecure`` explicitly.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from functools import lru_cache
from typing import Any

from bitfleet.errors import ConfigError

CA_FILE_ENV = "BITFLEET_CA_FILE"


def ca_file_from_env(explicit: str | None = None) -> str | None:
    """``explicit``, else ``$BITFLEET_CA_FILE``, else None (the system's CAs)."""
    return explicit or os.environ.get(CA_FILE_ENV) or None


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name (one per CA file:
    an agent polling every second does not re-read its CA)."""
    return _context(ca_file_from_env(ca_file))


@lru_cache(maxsize=8)
def _context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot read the CA file {ca_file}: {error}; pass a PEM file with --ca-file or "
            f"{CA_FILE_ENV}"
        ) from None


@lru_cache(maxsize=64)
def is_loopback(host: str) -> bool:
    """True if ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def require_secure(host: str, encrypted: bool, insecure: bool, what: str) -> None:
    """Refuse a plaintext link off this machine unless the user asked for it."""
    if encrypted or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"{what} to {host} would travel in clear: use https:// / mqtts:// (with --ca-file for a "
        "private CA), or pass --insecure to allow plaintext on this network"
    )


def mqtt_tls_options(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for paho's ``Client.tls_set``: verify the broker (against
    ``ca_file`` or ``$BITFLEET_CA_FILE``), and present a client certificate for mutual TLS."""
    if (client_cert is None) != (client_key is None):
        raise ConfigError("mutual TLS needs both --client-cert and --client-key")
    return {
        "ca_certs": ca_file_from_env(ca_file),
        "certfile": client_cert,
        "keyfile": client_key,
        "cert_reqs": ssl.CERT_REQUIRED,
    }
