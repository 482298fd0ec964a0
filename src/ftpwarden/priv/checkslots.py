"""At most N password checks at once across every monitor of a listener.

A check can cost a root process tens of MiB (scrypt's 16 MiB buffer, PAM's
hashing), so unauthenticated clients must not be able to run hundreds at once.
The slots are N bytes of one unnamed temporary file made by the listener before
it forks any monitor; a monitor holds slot i with a POSIX record lock on byte i.
Such locks belong to a process: a fork does not inherit them and the kernel
drops them when the holder exits, even by SIGKILL, so no slot is ever lost.

Waiting polls every few milliseconds until a deadline: the wait depends only
on the load, never on the user or the password.  Workers close the file
(`detach`) before they run unprivileged code: they could otherwise hold every
slot and stop all logins.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import tempfile
import time
from collections.abc import Iterator

__all__ = ["CheckSlots", "default_slots"]

_POLL = 0.01  # seconds between tries, plus up to as much again at random (no lock-step)


def default_slots() -> int:
    """Hashing is CPU work: a few per core keep the cores busy, more only cost memory."""
    return max(4, 2 * (os.cpu_count() or 1))


class CheckSlots:
    def __init__(self, n: int, directory: str | None = None) -> None:
        self.n = max(1, n)
        self._fd = _unnamed_file(directory or tempfile.gettempdir())

    @contextlib.contextmanager
    def held(self, wait: float) -> Iterator[bool]:
        """`with slots.held(30) as got`: got is False when no slot freed within `wait` s."""
        slot = self._acquire(time.monotonic() + wait)
        try:
            yield slot is not None
        finally:
            if slot is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)

    def _acquire(self, deadline: float) -> int | None:
        if self._fd < 0:
            return None
        first = random.randrange(self.n)  # spread the waiters over the slots
        while True:
            for k in range(self.n):
                slot = (first + k) % self.n
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                    return slot
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL * (1 + random.random()))

    def detach(self) -> None:
        """This process will never check a password: drop the file (workers)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _unnamed_file(directory: str) -> int:
    """A file no other process can open by name (O_TMPFILE, else created and unlinked)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        fd, path = tempfile.mkstemp(prefix="ftpwarden-slots-", dir=directory)
        os.unlink(path)
        return fd
