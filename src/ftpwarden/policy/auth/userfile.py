"""Virtual users (vsftpd's "guests") from the user DB file, `user_db_file`.

One user per line, `#` comments and blank lines ignored:

    name:hash[:options]         options: root=/abs/dir, write | write=yes|no, umask=022,
                                         quota_bytes=N, quota_files=N (0: no limit)

`htpasswd -B` lines (`alice:$2y$05$...`) work as they are: root is then the
default root and writing follows write_enable.  The file is re-read when it
changes; if it becomes unreadable or invalid, every login it would decide is
refused until it is fixed (fail closed: a user deleted in a broken edit stays out).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field

from ...proto.commands import Perm
from ..config import Config, number
from ..passwords import dummy_verify, known_scheme, verify_password
from ..users import Account, UserClass, grants_for
from .base import LoginRefused, LoginRequest

__all__ = [
    "UserRecord", "valid_user_name", "check_root", "parse_userdb", "format_record", "RecordLogin",
    "UserFileAuthenticator", "MemoryUserAuthenticator",
]

# No leading '.', '-' or '@': a name may end up in a path (user_sub_token) or an argv.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,127}")
_NAME_RULE = "1-128 characters of A-Z a-z 0-9 . _ @ -, starting with a letter, digit or _"
_TRUE, _FALSE = ("yes", "true", "1"), ("no", "false", "0")  # vsftpd's boolean spellings


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    hash: str = field(repr=False)
    root: str | None = None     # None: the authenticator's default root
    write: bool | None = None   # None: follow write_enable
    umask: int | None = None    # None: local_umask
    quota_bytes: int | None = None  # None: the config's quota_bytes
    quota_files: int | None = None  # None: the config's quota_files


def valid_user_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_root(root: str) -> str:
    """`root` if it can be a root= option, else ValueError."""
    if not root.startswith("/") or root != root.strip() or any(c in root for c in ",\n\r\0"):
        raise ValueError("root must be an absolute path without ',', newline or surrounding spaces")
    return root


def _parse_umask(text: str) -> int:
    if not text or not set(text) <= set("01234567") or int(text, 8) > 0o777:
        raise ValueError(f"umask must be octal, 000 to 777 (got {text!r})")
    return int(text, 8)


def _parse_line(line: str) -> UserRecord:
    name, _, rest = line.partition(":")
    if not valid_user_name(name):
        raise ValueError(f"bad user name: use {_NAME_RULE}")  # the bad text is not echoed: it may be a password
    hash_, _, options = rest.partition(":")
    if not hash_:
        raise ValueError(f"user {name}: missing password hash")
    if not known_scheme(hash_):
        raise ValueError(f"user {name}: unsupported password hash (use bcrypt, as `htpasswd -B` writes, "
                         "or `ftpwarden user`)")
    root = write = umask = None
    quotas: dict[str, int] = {}
    seen: set[str] = set()
    for item in options.split(",") if options else ():
        key, eq, value = item.strip().partition("=")
        if key in seen:
            raise ValueError(f"user {name}: option {key!r} given twice")
        seen.add(key)
        try:
            if key == "root":
                root = check_root(value)
            elif key == "write":
                if eq and value.lower() not in _TRUE + _FALSE:
                    raise ValueError("write must be yes or no")
                write = not eq or value.lower() in _TRUE
            elif key == "umask":
                umask = _parse_umask(value)
            elif key in ("quota_bytes", "quota_files"):
                if not value.isdigit() or len(value) > 19:
                    raise ValueError(f"{key} must be a whole number (0: no limit)")
                quotas[key] = int(value)
            else:
                raise ValueError(f"unknown option {key!r} (known: root, write, umask, quota_bytes, quota_files)")
        except ValueError as e:
            raise ValueError(f"user {name}: {e}") from None
    return UserRecord(name, hash_, root, write, umask, quotas.get("quota_bytes"), quotas.get("quota_files"))


def parse_userdb(text: str, filename: str) -> dict[str, UserRecord]:
    """Name -> record.  Errors: ValueError("FILE:LINE: message")."""
    records: dict[str, UserRecord] = {}
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rec = _parse_line(line)
        except ValueError as e:
            raise ValueError(f"{filename}:{lineno}: {e}") from None
        if rec.name in records:
            raise ValueError(f"{filename}:{lineno}: duplicate user {rec.name} (first on line {first_line[rec.name]})")
        records[rec.name] = rec
        first_line[rec.name] = lineno
    return records


def format_record(r: UserRecord) -> str:
    """The line `parse_userdb` reads back as `r` (no newline)."""
    if not valid_user_name(r.name):
        raise ValueError(f"bad user name: use {_NAME_RULE}")
    if not known_scheme(r.hash) or any(c in r.hash for c in ":\n\r\0 \t"):
        raise ValueError(f"user {r.name}: unsupported password hash")
    options = []
    if r.root is not None:
        options.append("root=" + check_root(r.root))
    if r.write is not None:
        options.append("write=yes" if r.write else "write=no")
    if r.umask is not None:
        if not 0 <= r.umask <= 0o777:
            raise ValueError("umask must be 000 to 777")
        options.append(f"umask={r.umask:03o}")
    for key in ("quota_bytes", "quota_files"):
        if getattr(r, key) is not None:
            options.append(f"{key}={int(getattr(r, key))}")
    return ":".join([r.name, r.hash] + ([",".join(options)] if options else []))


class RecordLogin:
    """A login decided from a UserRecord (or None: no such user): the password check and
    the Account it gives.  One place for every store: the file, --user, PostgreSQL."""

    def __init__(self, cfg: Config, default_root: str) -> None:
        self._cfg = cfg
        self._default_root = default_root
        # One frozenset per write setting, shared by every session: building one per
        # login cost ~0.7 KiB per idle session.  Racing threads at worst build it twice.
        self._grants: dict[bool | None, frozenset[Perm]] = {}

    def account(self, rec: UserRecord | None, req: LoginRequest, unknown: str = "unknown user") -> Account:
        """Blocking (hashes); raises LoginRefused(`unknown`) when `rec` is None."""
        if rec is None:
            dummy_verify(req.password)  # as slow as a wrong password: no user enumeration
            raise LoginRefused(unknown)
        if not verify_password(req.password, rec.hash):
            raise LoginRefused("wrong password")
        root = rec.root or self._default_root
        if not root:
            raise LoginRefused("no root directory: set root= for this user")
        return Account(
            name=rec.name,
            user_class=UserClass.GUEST,
            root=root,
            grants=self._grants_for(rec.write),
            umask=number(self._cfg, "local_umask") if rec.umask is None else rec.umask,
            quota_bytes=rec.quota_bytes,
            quota_files=rec.quota_files,
        )

    def _grants_for(self, write: bool | None) -> frozenset[Perm]:
        grants = self._grants.get(write)
        if grants is None:
            grants = self._grants[write] = grants_for(self._cfg, UserClass.GUEST, write=write)
        return grants


class _RecordAuthenticator:
    """Login against UserRecords; subclasses say where the records come from."""

    def __init__(self, cfg: Config, default_root: str) -> None:
        self._login = RecordLogin(cfg, default_root)

    def _records(self) -> tuple[dict[str, UserRecord], str | None]:
        """(records, None), or ({}, why the source is unusable)."""
        raise NotImplementedError

    def wants(self, user: str) -> bool:
        records, broken = self._records()
        return broken is not None or user in records  # broken: refuse here, not fall through

    def needs_password(self, user: str) -> bool:
        return True

    def authenticate(self, req: LoginRequest) -> Account:
        records, broken = self._records()
        return self._login.account(records.get(req.user), req, broken or "unknown user")


class MemoryUserAuthenticator(_RecordAuthenticator):
    """Users given in memory (`serve --user NAME:PASSWORD`)."""

    def __init__(self, cfg: Config, records: dict[str, UserRecord], default_root: str) -> None:
        super().__init__(cfg, default_root)
        self._by_name = {r.name: r for r in records.values()}

    def _records(self) -> tuple[dict[str, UserRecord], str | None]:
        return self._by_name, None


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    # Size and inode too: an atomic replace within one mtime tick still shows.
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class UserFileAuthenticator(_RecordAuthenticator):
    """Users from `path`; raises OSError/ValueError at construction if it is unusable."""

    def __init__(self, cfg: Config, path: str, default_root: str) -> None:
        super().__init__(cfg, default_root)
        self._path = path
        self._lock = threading.Lock()  # logins may run in a thread pool
        self._key, self._db = self._load()
        self._broken: str | None = None

    def _load(self) -> tuple[tuple[int, ...], dict[str, UserRecord]]:
        with open(self._path, encoding="utf-8") as f:
            key = _stat_key(os.fstat(f.fileno()))
            return key, parse_userdb(f.read(), self._path)

    def _records(self) -> tuple[dict[str, UserRecord], str | None]:
        with self._lock:
            try:
                if _stat_key(os.stat(self._path)) != self._key:
                    self._key, self._db = self._load()
                    self._broken = None
            except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
                self._key, self._db = (), {}
                self._broken = f"user db unusable: {e}"
            return self._db, self._broken
