"""Temporary bans of addresses that keep failing logins, across connections.

`ban_threshold` failed logins from one address within `ban_window` seconds
ban it for `ban_seconds`: new connections from it get a 421 before any byte
of theirs is read.  A ban ends by itself.

The table lives in one shared anonymous mapping made before any fork (pooled
workers, isolated-mode monitors), like `limits.py`: 4096 slots of (address,
failures, window start, banned until), found by a hash of the address with a
short linear probe.  The whole address is stored, so a collision never bans
another address; when every slot of a probe is in use, the least recently
active one is reused (a ban in force is the last to go).

Only processes of the server's own trust domain may hold the mapping: the
isolated-mode workers drop it with `detach()` before they parse client bytes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import multiprocessing
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from .limits import held_lock

__all__ = ["BanList", "login_failed"]

_SLOTS = 4096
_PROBE = 16  # slots looked at per address
# used, address (16 bytes, IPv4 as ::ffff:a.b.c.d), failures, window start, banned until
_SLOT = struct.Struct("=?16sxxxxxxxqdd")
_Slot = tuple[bool, bytes, int, float, float]  # what _SLOT packs
_LOCK_WAIT = 1.0  # seconds; a lock held longer than this is a dead holder's


def _key(ip: str) -> bytes | None:
    try:
        a = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


class BanList:
    """`failed(ip)` counts a refused login; `is_banned(ip)` is asked at connect."""

    def __init__(self, threshold: int, ban_seconds: int, window_seconds: int,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.ban_seconds = ban_seconds
        self.window_seconds = window_seconds
        self.clock = clock  # CLOCK_MONOTONIC is one clock for every process of the machine
        self._mem: mmap.mmap | None = mmap.mmap(-1, _SLOT.size * _SLOTS)  # MAP_SHARED: survives fork
        self._lock: Any = multiprocessing.Lock()
        # state_db_url (ops/statedb.py): told of each failure counted here; set per process, after the fork
        self.report: Callable[[str], None] | None = None

    def configure(self, threshold: int, ban_seconds: int, window_seconds: int) -> None:
        """New limits (SIGHUP); the table and the bans in force are kept."""
        self.threshold, self.ban_seconds, self.window_seconds = threshold, ban_seconds, window_seconds

    # ------------------------------------------------------------ API

    def failed(self, ip: str) -> bool:
        """Count one failed login from `ip`; True when this failure started a ban.
        A failure counted here is also reported to the shared state (`report`), if any."""
        counted, banned = self._count(ip)
        if counted and self.report is not None:
            self.report(ip)
        return banned

    def ban(self, ip: str, seconds: float) -> bool:
        """Ban `ip` for `seconds` from now (a ban learned from the other nodes), or
        longer if it is banned already; True when this started a ban here."""
        with self._locked(ip) as at:
            if at is None or seconds <= 0:
                return False
            key, now, mem = at
            found = self._find(key, now, create=True)
            assert found is not None
            i, (_used, _k, failures, start, until) = found
            started = until <= now
            if started:
                failures = 0
            _SLOT.pack_into(mem, i * _SLOT.size, True, key, failures, start, max(until, now + seconds))
            return started

    def _count(self, ip: str) -> tuple[bool, bool]:
        """(counted, started a ban): a failure while banned already is not counted."""
        with self._locked(ip) as at:
            if at is None:
                return False, False
            key, now, mem = at
            found = self._find(key, now, create=True)
            assert found is not None  # with create there is always a slot
            i, slot = found
            _used, _k, failures, start, until = slot
            if until > now:
                return False, False  # banned already: nothing more to start
            if failures and now - start >= self.window_seconds:
                failures = 0
            if not failures:
                start = now
            failures += 1
            banned = failures >= self.threshold
            if banned:
                until, failures = now + self.ban_seconds, 0
            _SLOT.pack_into(mem, i * _SLOT.size, True, key, failures, start, until)
            return True, banned

    def is_banned(self, ip: str) -> bool:
        with self._locked(ip) as at:
            if at is None:
                return False
            key, now, _mem = at
            found = self._find(key, now, create=False)
            return found is not None and found[1][4] > now

    def detach(self) -> None:
        """Drop the shared table from this process (isolated workers, before the jail)."""
        if self._mem is not None:
            self._mem.close()
        self._mem = None
        self._lock = None  # the last reference: the semaphore is unmapped as well
        self.report = None

    # ------------------------------------------------------------ the table

    @contextlib.contextmanager
    def _locked(self, ip: str) -> Iterator[tuple[bytes, float, mmap.mmap] | None]:
        """The table locked for `ip`: (its key, now, the table); None when bans are off,
        `ip` is no address or a dead holder keeps the lock (count nothing, ban nobody,
        rather than stall the server)."""
        key = _key(ip)
        if key is None or self.threshold <= 0 or self._mem is None:
            yield None
            return
        now = self.clock()
        with held_lock(self._lock, _LOCK_WAIT) as held:
            yield (key, now, self._mem) if held else None

    def _slot(self, i: int) -> _Slot:
        assert self._mem is not None
        return _SLOT.unpack_from(self._mem, i * _SLOT.size)

    def _stale(self, slot: _Slot, now: float) -> bool:
        used, _k, failures, start, until = slot
        return not used or (until <= now and (not failures or now - start >= self.window_seconds))

    def _find(self, key: bytes, now: float, *, create: bool) -> tuple[int, _Slot] | None:
        """The slot holding `key`; with `create`, a free, stale or least active one."""
        first = zlib.crc32(key) % _SLOTS
        reuse: tuple[int, _Slot] | None = None
        best = None
        for n in range(_PROBE):
            i = (first + n) % _SLOTS
            slot = self._slot(i)
            if not slot[0]:  # never used: the address is not further on
                if create and reuse is None:
                    reuse = (i, slot)
                break
            if slot[1] == key:
                return i, slot
            if not create:
                continue
            if self._stale(slot, now):
                if reuse is None:
                    reuse = (i, slot)
                continue
            # least active: a ban in force counts as activity until it ends
            rank = (slot[4] > now, max(slot[3], slot[4]))
            if best is None or rank < best[0]:
                best = (rank, i)
        if not create:
            return None
        if reuse is not None:
            i = reuse[0]
        else:
            assert best is not None
            i = best[1]
        return i, (True, key, 0, 0.0, 0.0)


def login_failed(bans: BanList | None, ip: str, events: Any, started: float, delay: float, now: float) -> float:
    """The one rule for a failed login, pooled or isolated: it counts toward a ban
    of `ip` (logged when one starts), and it is answered `delay` seconds after
    the request (`started`), whatever the check cost.  Returns the seconds to wait."""
    if bans is not None and bans.failed(ip) and events is not None:
        events.ban(ip, bans.ban_seconds)
    return max(0.0, started + delay - now)
