"""The broker's password file: mosquitto's $7$ lines, rewritten without rehashing everyone."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from bitfleet.server.broker import PBKDF2_ITERATIONS, write_password_file


def _lines(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def _verifies(line: str, password: str) -> bool:
    _, kind, iterations, salt, digest = line.split("$")
    assert (kind, int(iterations)) == ("7", PBKDF2_ITERATIONS)
    again = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return again == base64.b64decode(digest)


def test_a_rewrite_hashes_only_new_users_and_forgets_removed_ones(tmp_path: Path) -> None:
    path, known = tmp_path / "passwd", {}
    write_password_file(path, {"coordinator": "c-pw", "a1": "s1"}, known=known)
    first = _lines(path)
    write_password_file(path, {"coordinator": "c-pw", "a1": "s1", "a2": "s2"}, known=known)
    second = _lines(path)
    assert second["a1"] == first["a1"] and second["coordinator"] == first["coordinator"]
    assert all(_verifies(second[user], pw) for user, pw in (("a1", "s1"), ("a2", "s2")))
    write_password_file(path, {"coordinator": "c-pw", "a2": "s2-new"}, known=known)
    third = _lines(path)
    assert set(third) == {"coordinator", "a2"} and _verifies(third["a2"], "s2-new")
    assert set(known) == {("coordinator", "c-pw"), ("a2", "s2-new")}  # no stale secrets kept
