"""Password hashes: make scrypt ones, check scrypt and bcrypt ones.

Stored form of our own hashes (passlib's layout, standard base64 without padding):
    $scrypt$ln=14,r=8,p=1$<salt>$<hash>
bcrypt hashes ($2a$, $2b$, $2y$, as `htpasswd -B` writes them) are checked too.
Nothing here raises on bad input or puts a password in a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import bcrypt

__all__ = ["MAX_PASSWORD_BYTES", "hash_password", "verify_password", "dummy_verify", "known_scheme"]

MAX_PASSWORD_BYTES = 128  # longer passwords are refused outright, like vsftpd

_LN, _R, _P = 14, 8, 1    # n = 2**14: about 16 MiB and tens of milliseconds per check
_SALT_BYTES, _DKLEN = 16, 32
_MAXMEM = 64 * 1024 * 1024  # bounds what a hand-edited hash can make us allocate
_BCRYPT = ("$2a$", "$2b$", "$2y$")  # bcrypt checks $2y$ as $2b$ (same algorithm)
_DUMMY_SALT = b"ftpwarden-dummy!"


def _encode(password: str) -> bytes | None:
    """The bytes the client sent (the core decodes with surrogateescape), or None
    when the password is unusable: not a str, not encodable, or too long."""
    try:
        raw = password.encode("utf-8", "surrogateescape")
    except (AttributeError, UnicodeError):
        return None
    return raw if len(raw) <= MAX_PASSWORD_BYTES else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(raw: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(raw, salt=salt, n=1 << ln, r=r, p=p, maxmem=_MAXMEM, dklen=dklen)


def known_scheme(stored: str) -> bool:
    """Is `stored` in a scheme `verify_password` understands (by its prefix)?"""
    return isinstance(stored, str) and stored.startswith(("$scrypt$",) + _BCRYPT)


def hash_password(password: str) -> str:
    """A new scrypt hash of `password` with a random salt."""
    raw = _encode(password)
    if raw is None:
        raise ValueError(f"password must be text of at most {MAX_PASSWORD_BYTES} bytes")
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(raw, salt, _LN, _R, _P, _DKLEN)
    return f"$scrypt$ln={_LN},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def _check_scrypt(raw: bytes, stored: str) -> bool | None:
    _, _, params, salt_text, digest_text = stored.split("$")  # ValueError if not 5 fields
    fields = dict(item.split("=", 1) for item in params.split(","))
    if sorted(fields) != ["ln", "p", "r"] or not all(v.isascii() and v.isdigit() for v in fields.values()):
        return None
    ln, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
    if not (1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return None  # a tampered hash must not buy minutes of CPU
    salt, want = _unb64(salt_text), _unb64(digest_text)
    if not salt or len(want) < _DKLEN:
        return None  # a shortened digest is a prefix of the real one: refuse it
    return hmac.compare_digest(_scrypt(raw, salt, ln, r, p, len(want)), want)


def _check(raw: bytes, stored: str) -> bool | None:
    """True/False for a usable hash, None when `stored` is not one."""
    if stored.startswith("$scrypt$"):
        return _check_scrypt(raw, stored)
    if stored.startswith(_BCRYPT):
        # bcrypt only reads 72 bytes; htpasswd truncates the same way when hashing.
        return bcrypt.checkpw(raw[:72], stored.encode("ascii"))
    return None


def verify_password(password: str, stored: str) -> bool:
    """Does `password` match the `stored` hash?  False for anything unusable."""
    raw = _encode(password)
    if raw is None:
        return False  # refused before hashing; dummy_verify does the same, so no oracle
    result = None
    if isinstance(stored, str):
        try:
            result = _check(raw, stored)
        except (ValueError, TypeError, MemoryError):
            result = None
    if result is None:
        dummy_verify(password)  # a broken entry costs the same time as a real check
        return False
    return result


def dummy_verify(password: str) -> None:
    """Spend the time of a real scrypt check, so that refusing an unknown user
    takes as long as refusing a wrong password (no user-enumeration by timing)."""
    raw = _encode(password)
    if raw is None:
        return
    hmac.compare_digest(_scrypt(raw, _DUMMY_SALT, _LN, _R, _P, _DKLEN), bytes(_DKLEN))
