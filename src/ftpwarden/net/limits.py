"""max_clients and max_per_ip across all pooled-mode worker processes.

The counters live in one shared anonymous mapping made before the workers are
forked: a total and 4096 per-address buckets (an address hashes to a bucket, so
a collision can only make the limit stricter, never looser).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import multiprocessing
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SessionLimits", "AccountRates", "RateGrants", "grant_size", "max_grant", "MAX_WAIT", "held_lock"]

_BUCKETS = 4096
_SLOT = struct.Struct("=q")


class SessionLimits:
    """Each worker process counts its own sessions in its own row; a limit is
    checked against the sum.  When a worker dies, its supervisor clears its
    row, so the sessions it held stop counting (no lost slots)."""

    def __init__(self, max_clients: int, max_per_ip: int, workers: int = 1) -> None:
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.workers = max(1, workers)
        self.row = 0  # this process's row; set by attach() after the fork
        self._mem = mmap.mmap(-1, _SLOT.size * (_BUCKETS + 1) * self.workers)  # MAP_SHARED: survives fork
        self._lock = multiprocessing.Lock()

    def attach(self, row: int) -> None:
        self.row = row

    def forget(self, row: int) -> None:
        """The worker of `row` is gone: its sessions are gone with it."""
        with held_lock(self._lock):
            start = row * (_BUCKETS + 1) * _SLOT.size
            self._mem[start:start + (_BUCKETS + 1) * _SLOT.size] = bytes((_BUCKETS + 1) * _SLOT.size)

    def _index(self, row: int, i: int) -> int:
        return (row * (_BUCKETS + 1) + i) * _SLOT.size

    def _get(self, i: int) -> int:
        return sum(_SLOT.unpack_from(self._mem, self._index(r, i))[0] for r in range(self.workers))

    def _add(self, i: int, n: int) -> None:
        at = self._index(self.row, i)
        _SLOT.pack_into(self._mem, at, _SLOT.unpack_from(self._mem, at)[0] + n)

    @staticmethod
    def _bucket(ip: str) -> int:
        return 1 + zlib.crc32(ip.encode()) % _BUCKETS

    def enter(self, ip: str) -> str | None:
        """Count a new session; return the 421 text when it is over a limit."""
        b = self._bucket(ip)
        with held_lock(self._lock):
            if self.max_clients and self._get(0) >= self.max_clients:
                return "There are too many connected users, please try later."
            if self.max_per_ip and self._get(b) >= self.max_per_ip:
                return "There are too many connections from your internet address."
            self._add(0, 1)
            self._add(b, 1)
        return None

    def leave(self, ip: str) -> None:
        with held_lock(self._lock):
            self._add(0, -1)
            self._add(self._bucket(ip), -1)


# account-name hash, time the account's bucket is booked until, and its share (state_db_url):
# the nodes the rate is split between, and until when that count holds
_RATE_SLOT = struct.Struct("=IdId")
SHARE_HOLDS = 3.0  # seconds a share holds unless renewed: without news from the other nodes, the whole rate
MAX_WAIT = 5.0  # seconds: the longest wait one booking may ask for, whatever the table says
_LOCK_WAIT = 1.0  # seconds; a lock held longer than this is a stopped holder's: go on without it
_LOCK_POLL = 0.001


def grant_size(rate: int) -> int:
    """Bytes an isolated worker asks its monitor for at once: about 1/10 s of the
    rate, and at least one transfer chunk (64 KiB), so a transfer asks a few times a second."""
    return max(rate // 10, 64 * 1024)


def max_grant(rate: int) -> int:
    """The most one request may book; a bigger ask is a broken worker."""
    return 4 * grant_size(rate)


class AccountRates:
    """user_max_rate: one byte budget per account, shared by all its sessions in
    every process.  Pooled workers book on it directly (one uid); in isolated
    mode only the root monitors hold it and book for their own session's
    account (`grants`), the workers drop it (`detach`).

    With state_db_url several nodes split an account's rate: `set_share(account,
    nodes)` (ops/statedb.py) makes this node's budget rate / nodes for a few
    seconds, for every process booking here; `recently_active()` names the
    accounts this process booked for lately.

    The table is a memfd (named in /proc/PID/maps) locked with a POSIX record
    lock: a process that closes the fd and unmaps the table keeps nothing of
    it, and a holder that dies releases the lock."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        size = _RATE_SLOT.size * _BUCKETS
        self._fd = os.memfd_create("ftpwarden-rates", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._ino = os.fstat(self._fd).st_ino
        self._mem: mmap.mmap | None = mmap.mmap(self._fd, size)  # MAP_SHARED: survives fork
        self._threads = threading.Lock()  # record locks are per process: threads need their own
        self._recent: dict[str, float] = {}  # account -> last booking by this process (monotonic)

    def detach(self) -> None:
        """A process that must not book (isolated workers, TLS helper) drops the table and its lock."""
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        fd, self._fd = self._fd, -1
        try:  # close only our memfd: a hygiene pass may have closed the number already
            if fd >= 0 and os.fstat(fd).st_ino == self._ino:
                os.close(fd)
        except OSError:
            pass

    def reserve_for(self, account: str) -> Callable[[int], float]:
        """A function booking n bytes on the account's bucket; it returns the wait in
        seconds, never more than MAX_WAIT (a bad entry cannot stall a session for good)."""
        key = _account_key(account)

        def reserve(n: int) -> float:
            now = time.monotonic()
            self._recent[account] = now
            with self._locked() as mem:
                if mem is None:
                    return 0.0
                offset = self._slot(mem, key, now)
                owner, booked, nodes, holds = _RATE_SLOT.unpack_from(mem, offset)
                if owner != key:
                    booked, nodes, holds = 0.0, 1, 0.0
                rate = self.rate / nodes if holds > now and nodes > 1 else self.rate
                # booked past the horizon (a backlog or a bad entry): book from the horizon
                start: float = min(max(now, booked), now + MAX_WAIT)
                _RATE_SLOT.pack_into(mem, offset, key, start + n / rate, nodes, holds)
            return min(start + n / rate - now, MAX_WAIT)
        return reserve

    def set_share(self, account: str, nodes: int) -> None:
        """`nodes` nodes move bytes for `account` now: this node's budget is rate / nodes."""
        key, now = _account_key(account), time.monotonic()
        with self._locked() as mem:
            if mem is None:
                return
            offset = self._slot(mem, key, now)
            owner, booked, _nodes, _holds = _RATE_SLOT.unpack_from(mem, offset)
            _RATE_SLOT.pack_into(mem, offset, key, booked if owner == key else 0.0,
                                 max(1, nodes), now + SHARE_HOLDS)

    def recently_active(self, within: float = 1.0) -> list[str]:
        """Accounts this process booked bytes for in the last `within` seconds."""
        since = time.monotonic() - within
        for account, at in list(self._recent.items()):
            if at < since:
                self._recent.pop(account, None)
        return [account for account, at in list(self._recent.items()) if at >= since]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[mmap.mmap | None]:
        """The table, locked; None when detached or a holder keeps it too long (fail open)."""
        with self._threads:
            if self._mem is None or not _lockf(self._fd, time.monotonic() + _LOCK_WAIT):
                yield None
                return
            try:
                yield self._mem
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    @staticmethod
    def _slot(mem: mmap.mmap, key: int, now: float) -> int:
        """The account's slot: its own, or a free or expired one (probing), so two
        accounts never share a budget while both are busy."""
        first = key % _BUCKETS
        for i in range(16):
            offset = ((first + i) % _BUCKETS) * _RATE_SLOT.size
            owner, booked, _nodes, holds = _RATE_SLOT.unpack_from(mem, offset)
            if owner in (key, 0) or max(booked, holds) < now:
                return offset
        return first * _RATE_SLOT.size  # all 16 busy: share (stricter, never looser)


def _account_key(account: str) -> int:
    return zlib.crc32(account.encode("utf-8", "surrogateescape")) or 1


def _lockf(fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(_LOCK_POLL)


class RateGrants:
    """An isolated post-login worker's user_max_rate: no table, only the right to
    ask its monitor for grants.  `ask(n)` books n bytes for this session's own
    account (the monitor knows which) and returns the wait in seconds."""

    def __init__(self, ask: Callable[[int], float], rate: int) -> None:
        self.ask = ask
        self.size = grant_size(rate)


@contextlib.contextmanager
def held_lock(lock: Any, wait: float = 1.0) -> Iterator[bool]:
    """`with held_lock(lock) as got`: the shared lock, but never a wait without end.
    If a process died holding it, `got` is False and the caller goes on without
    it (fail open) rather than freeze every session."""
    got = lock is not None and lock.acquire(timeout=wait)
    try:
        yield got
    finally:
        if got:
            lock.release()
