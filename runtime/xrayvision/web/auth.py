"""HTTP Basic authentication against ``[users]`` (scrypt hashes) and role permissions.

Roles: ``admin`` may do everything, ``radiologist`` may also review, check, analyse and
requeue, ``viewer`` only reads. scrypt is slow on purpose, so a verified credential is
remembered (by a keyed hash of username and password, never the password) for
``cache_seconds``; a wrong one is never remembered. Failed logins from one address are
answered more and more slowly (doubling, up to ``max_delay`` seconds), which makes
guessing slow without blocking anyone for long.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xrayvision.config import User
from xrayvision.passwords import hash_password, verify_password

READ, REVIEW, CHECK, REQUEUE, ADMIN = "read", "review", "check", "requeue", "admin"
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({READ, REVIEW, CHECK, REQUEUE, ADMIN}),
    "radiologist": frozenset({READ, REVIEW, CHECK, REQUEUE}),
    "viewer": frozenset({READ}),
}
BOOTSTRAP_KEY = "web.bootstrap_admin"
FAILURE_MEMORY = 900.0  # seconds after which an address's failed logins are forgotten


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def parse_basic(header: str) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header; None when absent or
    malformed."""
    if not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep and name else None


@dataclass(frozen=True)
class Identity:
    username: str
    role: str


class Authenticator:
    def __init__(self, users: Mapping[str, User], *, cache_seconds: float = 300.0,
                 cache_size: int = 1024, max_delay: float = 5.0, track_ips: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = dict(users)
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.max_delay = max_delay
        self.track_ips = track_ips
        self.clock = clock
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # A real hash to compare against for unknown users, so they take as long.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    def _fingerprint(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def cached(self, name: str, password: str) -> Identity | None:
        key = self._fingerprint(name, password)
        item = self._verified.get(key)
        if item is None or item[0] <= self.clock():
            self._verified.pop(key, None)
            return None
        self._verified.move_to_end(key)
        return item[1]

    async def verify(self, name: str, password: str) -> tuple[Identity | None, bool]:
        """(identity or None, whether scrypt ran: a fresh login worth auditing)."""
        found = self.cached(name, password)
        if found is not None:
            return found, False
        user = self.users.get(name)
        stored = user.password_hash if user is not None else self._dummy
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or user is None:
            return None, True
        identity = Identity(name, user.role)
        self._verified[self._fingerprint(name, password)] = (
            self.clock() + self.cache_seconds, identity)
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return identity, True

    def failure_delay(self, ip: str) -> float:
        """Records a failed login from ``ip``; returns how long to wait before answering."""
        count, last = self._failures.pop(ip, (0, 0.0))
        if self.clock() - last > FAILURE_MEMORY:
            count = 0
        count += 1
        self._failures[ip] = (count, self.clock())
        while len(self._failures) > self.track_ips:
            self._failures.popitem(last=False)
        return min(self.max_delay, 0.05 * 2 ** (count - 1))

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)


def bootstrap_password() -> str:
    return secrets.token_urlsafe(18)
