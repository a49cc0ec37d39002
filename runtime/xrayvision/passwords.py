"""Password hashing with the standard library's scrypt.

Stored form: ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``. Only this form is
accepted in ``[users]``; plaintext is refused when settings are loaded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "scrypt"
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


class BadHash(ValueError):
    """The stored value is not a hash this module wrote."""


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """Returns the stored form of ``password`` with a fresh random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN)
    return "$".join(
        [PREFIX, str(n), str(r), str(p), base64.b64encode(salt).decode(),
         base64.b64encode(digest).decode()]
    )


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """Splits a stored hash into (n, r, p, salt, digest); raises BadHash when malformed."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise BadHash("expected scrypt$<n>$<r>$<p>$<salt>$<hash> (see `xrayvision hash-password`)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise BadHash(f"malformed scrypt hash: {exc}") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or not digest:
        raise BadHash("scrypt parameters out of range (n must be a power of two > 1)")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; constant-time on the digest."""
    try:
        n, r, p, salt, digest = parse_hash(stored)
    except BadHash:
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 * 1024 * 1024
    )
    return hmac.compare_digest(candidate, digest)
