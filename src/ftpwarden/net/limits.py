"""max_clients and max_per_ip across all pooled-mode worker processes.

The counters live in one shared anonymous mapping made before the workers are
forked: a total and 4096 per-address buckets (an address hashes to a bucket, so
a collision can only make the limit stricter, never looser).
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SessionLimits", "AccountRates", "held_lock"]

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


_RATE_SLOT = struct.Struct("=Id")  # account-name hash, time the account's bucket is booked until


class AccountRates:
    """user_max_rate: one byte budget per account, shared by all its sessions in
    every process (pooled workers, isolated session processes alike)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._mem = mmap.mmap(-1, _RATE_SLOT.size * _BUCKETS)
        self._lock = multiprocessing.Lock()

    def detach(self) -> None:
        """A process that moves no user's bytes (pre-login worker, TLS helper) drops the table."""
        self._mem.close()

    def reserve_for(self, account: str) -> Callable[[int], float]:
        """A function booking n bytes on the account's bucket; it returns the wait in seconds."""
        key = zlib.crc32(account.encode("utf-8", "surrogateescape")) or 1

        def reserve(n: int) -> float:
            now = time.monotonic()
            with held_lock(self._lock):
                offset = self._slot(key, now)
                _, booked = _RATE_SLOT.unpack_from(self._mem, offset)
                start: float = max(now, booked)
                _RATE_SLOT.pack_into(self._mem, offset, key, start + n / self.rate)
            return start + n / self.rate - now
        return reserve

    def _slot(self, key: int, now: float) -> int:
        """The account's slot: its own, or a free or expired one (probing), so two
        accounts never share a budget while both are busy."""
        first = key % _BUCKETS
        for i in range(16):
            offset = ((first + i) % _BUCKETS) * _RATE_SLOT.size
            owner, booked = _RATE_SLOT.unpack_from(self._mem, offset)
            if owner in (key, 0) or booked < now:
                return offset
        return first * _RATE_SLOT.size  # all 16 busy: share (stricter, never looser)


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
