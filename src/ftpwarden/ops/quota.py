"""Per-user quotas: `quota_bytes` and `quota_files` (user-file options, defaults in the config).

Usage is kept incrementally, one small file per user in `quota_state_dir`
(`NAME.usage`: "BYTES FILES\\n"), changed under a POSIX record lock so the
processes of a pooled server (and the broker) never lose an update.  An upload
is granted what is left before it starts and stopped with EDQUOT (552) the
moment it would cross it; the upload is then discarded, so usage changes only
for uploads that completed (and for deletions).  `recompute` walks a user's
root and replaces the kept usage with what is on disk
(`ftpwarden quota recompute USER`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Any

__all__ = ["Limits", "Usage", "QuotaStore", "open_store", "DEFAULT_STATE_DIR", "Grant", "grant", "limits_for",
           "recompute", "Exceeded", "describe", "quota_key", "LocalQuota"]

RECOMPUTE_MAX_ENTRIES = 10_000_000  # a bound on a runaway walk (a loop of bind mounts)


class Exceeded(OSError):
    """The upload would cross the user's quota: EDQUOT, which the core answers with 552."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EDQUOT, f"Disk quota exceeded ({what})")


@dataclass(frozen=True, slots=True)
class Limits:
    bytes: int | None = None  # None: no limit
    files: int | None = None

    @property
    def active(self) -> bool:
        return self.bytes is not None or self.files is not None


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int = 0
    files: int = 0


def limits_for(cfg: Any, account: Any) -> Limits:
    """The account's own limits (user file) or else the config's defaults; 0 or unset = none."""
    def pick(name: str) -> int | None:
        own = getattr(account, name, None)
        value = own if own is not None else getattr(cfg, name, None)
        return int(value) if value else None
    return Limits(pick("quota_bytes"), pick("quota_files"))


def _key(user: str) -> str:
    """The state file's name for `user` (never a path: no '/', no leading dot)."""
    if not user or "/" in user or "\0" in user or user.startswith(".") or len(user) > 255:
        raise ValueError(f"user name not usable as a quota key: {user!r}")
    return user + ".usage"


class QuotaStore:
    """Usage per user in `state_dir`."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def _open(self, user: str) -> int:
        return os.open(os.path.join(self.state_dir, _key(user)),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    @staticmethod
    def _read(fd: int) -> Usage:
        raw = os.pread(fd, 64, 0).split()
        try:
            return Usage(max(0, int(raw[0])), max(0, int(raw[1])))
        except (IndexError, ValueError):
            return Usage()  # new (or damaged: `quota recompute` repairs it)

    @staticmethod
    def _write(fd: int, usage: Usage) -> None:
        data = f"{usage.bytes} {usage.files}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def usage(self, user: str) -> Usage:
        fd = self._open(user)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH)
            return self._read(fd)
        finally:
            os.close(fd)

    def add(self, user: str, dbytes: int, dfiles: int) -> Usage:
        """Change the usage by a delta, atomically for every process; the new usage."""
        fd = self._open(user)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            old = self._read(fd)
            new = Usage(max(0, old.bytes + dbytes), max(0, old.files + dfiles))
            self._write(fd, new)
            return new
        finally:
            os.close(fd)

    def set(self, user: str, usage: Usage) -> None:
        fd = self._open(user)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            self._write(fd, usage)
        finally:
            os.close(fd)


DEFAULT_STATE_DIR = "/var/lib/ftpwarden/quota"


def open_store(cfg: Any) -> QuotaStore:
    """quota_state_dir's store, the directory made if missing.  ValueError if it cannot be
    made while the config sets a quota; without one (a server started by a user who may
    not write /var/lib, say) it starts anyway: only user-file quotas need the directory,
    and their uploads then fail with 451."""
    state_dir = str(getattr(cfg, "quota_state_dir", None) or DEFAULT_STATE_DIR)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        if getattr(cfg, "quota_bytes", None) or getattr(cfg, "quota_files", None):
            raise ValueError(f"quota_state_dir {state_dir}: {e.strerror}") from None
    return QuotaStore(state_dir)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one upload may write: `bytes` more than it started with (None: no limit)."""

    bytes: int | None


def grant(store: QuotaStore, user: str, limits: Limits, *, new_file: bool, replaced: int) -> Grant:
    """The budget of an upload about to start; Exceeded when nothing may be written.
    `replaced`: bytes of the file this upload empties or replaces (they come back)."""
    used = store.usage(user)
    if limits.files is not None and new_file and used.files >= limits.files:
        raise Exceeded(f"{used.files} of {limits.files} files")
    if limits.bytes is None:
        return Grant(None)
    left = limits.bytes - used.bytes + replaced
    if left <= 0:
        raise Exceeded(f"{used.bytes} of {limits.bytes} bytes")
    return Grant(left)


def recompute(root: str) -> Usage:
    """Bytes and regular files beneath `root`, read from disk; symlinks are not
    followed and another file system's mount is not entered."""
    total = count = seen = 0
    top = os.lstat(root)
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                seen += 1
                if seen > RECOMPUTE_MAX_ENTRIES:
                    raise OSError(errno.E2BIG, f"more than {RECOMPUTE_MAX_ENTRIES} entries under {root}")
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                    count += 1
                elif stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    stack.append(e.path)
    return Usage(total, count)


def describe(user: str, usage: Usage, limits: Limits) -> list[str]:
    """SITE QUOTA's lines."""
    def of(n: int, limit: int | None) -> str:
        return f"{n} of {limit}" if limit is not None else f"{n} (no limit)"
    return [f"Quota for {user}:", f"  bytes: {of(usage.bytes, limits.bytes)}",
            f"  files: {of(usage.files, limits.files)}"]


def quota_key(account: Any) -> str:
    """Whose usage: the login name; every anonymous login shares "anonymous"."""
    return "anonymous" if getattr(account, "anonymous", False) else str(account.name)


class LocalQuota:
    """Quotas decided in this process (pooled mode; the broker in isolated mode)."""

    def __init__(self, store: QuotaStore, cfg: Any) -> None:
        self.store = store
        self.cfg = cfg

    def applies(self, account: Any) -> bool:
        return limits_for(self.cfg, account).active

    def grant(self, account: Any, *, new_file: bool, replaced: int) -> int | None:
        """Bytes the upload may write (None: no byte limit); raises Exceeded."""
        return grant(self.store, quota_key(account), limits_for(self.cfg, account),
                     new_file=new_file, replaced=replaced).bytes

    def add(self, account: Any, dbytes: int, dfiles: int) -> None:
        self.store.add(quota_key(account), dbytes, dfiles)

    def lines(self, account: Any) -> tuple[str, ...]:
        limits = limits_for(self.cfg, account)
        if not limits.active:
            return ()
        key = quota_key(account)
        return tuple(describe(key, self.store.usage(key), limits))
