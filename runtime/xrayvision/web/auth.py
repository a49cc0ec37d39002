"""HTTP Basic authentication against ``[users]`` (scrypt hashes) and role permissions.

Roles: ``admin`` may do everything, ``radiologist`` may also review, check, analyse and
requeue, ``viewer`` only reads. scrypt is slow on purpose, so a verified credential is
remembered (by a keyed hash of username and password, never the password) for
``cache_seconds``; a wrong one is never remembered.

Guessing (:class:`LoginGuard`): failed logins are counted per user name and per address,
an attempt counting from the moment it starts (so parallel guesses count too), and
forgotten after :data:`FAILURE_MEMORY` seconds. Each attempt first waits 0.05 s doubling
per earlier failure (up to ``max_delay``); at ``max_failures`` for a user name (twice that
for an address) the name or address is locked out for ``lockout`` seconds: refused with
429 before any password check. A success clears its own user name's count only.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

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
                 cache_size: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = dict(users)
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.clock = clock
        self._key = os.urandom(32)
        self._verified: TTLCache[bytes, Identity] = TTLCache(
            maxsize=cache_size, ttl=cache_seconds, timer=clock)
        # A real hash to compare against for unknown users, so they take as long.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    def _fingerprint(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def cached(self, name: str, password: str) -> Identity | None:
        return self._verified.get(self._fingerprint(name, password))

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
        self._verified[self._fingerprint(name, password)] = identity
        return identity, True



@dataclass
class _Count:
    failures: int = 0
    pending: int = 0
    last: float = 0.0
    locked_until: float = 0.0
    announced: bool = False  # this lockout was reported (logged and audited)


@dataclass(frozen=True)
class Verdict:
    """What an attempt may do: ``wait`` seconds first, or nothing when ``locked`` (for
    ``retry_after`` seconds; ``newly`` the first refusal of this lockout: audit it)."""

    wait: float = 0.0
    locked: str = ""  # "user" or "address" when refused
    retry_after: int = 0
    newly: bool = False


class LoginGuard:
    """Counts of failed logins per user name and per address (see the module docstring);
    memory bounded to ``track`` keys, the least recently seen forgotten first."""

    def __init__(self, *, max_failures: int = 10, lockout: float = 300.0,
                 max_delay: float = 5.0, track: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self.max_delay = max_delay
        self.track = track
        self.clock = clock
        self._counts: LRUCache[tuple[str, str], _Count] = LRUCache(maxsize=track)

    def _get(self, kind: str, key: str) -> _Count:
        now = self.clock()
        count = self._counts.get((kind, key)) or _Count()
        if count.locked_until and count.locked_until <= now:  # served its lockout
            count.failures, count.locked_until, count.announced = 0, 0.0, False
        elif now - count.last > FAILURE_MEMORY:
            count.failures = 0
        self._counts[(kind, key)] = count
        return count

    def _limit(self, kind: str) -> int:
        return self.max_failures * (2 if kind == "address" else 1)

    def begin(self, ip: str, name: str) -> Verdict:
        """Called before the password is checked; the attempt counts from now."""
        now = self.clock()
        counts = {"user": self._get("user", name), "address": self._get("address", ip)}
        for kind, count in counts.items():
            if count.locked_until <= now and count.failures + count.pending >= self._limit(
                    kind):
                count.locked_until = now + self.lockout
            if count.locked_until > now:
                newly, count.announced = not count.announced, True
                return Verdict(locked=kind, newly=newly,
                               retry_after=max(1, round(count.locked_until - now)))
        earlier = max(c.failures + c.pending for c in counts.values())
        for count in counts.values():
            count.pending += 1
            count.last = now
        return Verdict(wait=min(self.max_delay, 0.05 * 2 ** (earlier - 1)) if earlier else 0.0)

    def end(self, ip: str, name: str, ok: bool) -> None:
        """Called once the password was checked (after :meth:`begin` allowed it)."""
        for kind, key in (("user", name), ("address", ip)):
            count = self._counts.get((kind, key))
            if count is None:
                continue
            count.pending = max(0, count.pending - 1)
            if not ok:
                count.failures += 1
                count.last = self.clock()
                if count.failures >= self._limit(kind):  # the lockout runs from the last
                    count.locked_until = max(count.locked_until, count.last + self.lockout)
        if ok:  # this user name's count only: not the address's, not another name's
            user = self._counts.get(("user", name))
            if user is not None:
                user.failures = 0


def bootstrap_password() -> str:
    return secrets.token_urlsafe(18)
