"""A throwaway certificate authority for the demo, the tests and a first compose cluster.

It issues a server certificate for the names given (loopback by default) and, for mutual
TLS, client certificates; everything is written as PEM (keys 0600). Real deployments use
their own CA: the coordinator and the broker only need ``--tls-cert``/``--tls-key`` files
and clients a ``--ca-file``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bitfleet.errors import ConfigError

VALID_DAYS = 30


@dataclass(frozen=True)
class IssuedPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ThrowawayCa:
    directory: Path
    ca: Path
    server: IssuedPair

    def client(self, name: str) -> IssuedPair:
        """A client certificate (for mutual TLS) whose common name is ``name``, in
        ``clients/`` (so no name can overwrite the CA's or the server's files)."""
        clients = self.directory / "clients"
        clients.mkdir(exist_ok=True)
        return _issue(clients, name, self._ca_key(), self._ca_cert(), server_names=None)

    def _ca_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key((self.directory / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def _ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca.read_bytes())


def create_ca(directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ThrowawayCa:
    """A new CA in ``directory`` and a server certificate for ``names``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bitfleet throwaway CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / "ca.key", key)
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server = _issue(directory, "server", key, cert, server_names=names)
    return ThrowawayCa(directory, directory / "ca.pem", server)


def load_ca(directory: Path) -> ThrowawayCa:
    """The CA an earlier :func:`create_ca` wrote in ``directory``."""
    ca = ThrowawayCa(
        directory,
        directory / "ca.pem",
        IssuedPair(directory / "server.pem", directory / "server.key"),
    )
    missing = [
        p for p in (ca.ca, ca.server.cert, ca.server.key, directory / "ca.key") if not p.exists()
    ]
    if missing:
        raise ConfigError(
            f"{directory} is not a CA directory ({missing[0].name} is missing): run "
            "'bitfleet tls init --dir DIR' first"
        )
    return ca


def _issue(
    directory: Path,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_names: tuple[str, ...] | None,
) -> IssuedPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names is None:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
        ca_key, hashes.SHA256()
    )
    pair = IssuedPair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
