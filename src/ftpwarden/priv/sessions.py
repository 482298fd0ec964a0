"""The broker's state: its sessions, identity workers, processes and timers.

Plain records and the checks that need no broker state (priv/broker.py runs
the loop that changes them): what a session's channel may carry in each
phase, what a Handover may give back, and the root checks made before an
identity worker may take a session.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..ops.brokered import REQUESTS
from ..proto.principal import Principal
from .channel import Channel
from .checker import CheckerClient
from .logrelay import LogRelay
from .messages import (
    ActiveDataSocket,
    ChannelError,
    ChownUpload,
    Handover,
    Login,
    Message,
    PassiveListen,
    RateGrant,
)
from .worker import writable_root

__all__ = ["Timer", "Timers", "Proc", "Phase", "Session", "Worker", "EXPECTED", "check_handover", "root_refusal",
           "WRITABLE_ROOT", "Owner", "UPLOAD_REQUESTS"]

log = logging.getLogger("ftpwarden.broker")

UPLOAD_REQUESTS = REQUESTS  # quotas and upload_hook: ops/brokered.py answers them

WRITABLE_ROOT = b"500 OOPS: refusing to run with writable root inside chroot(); see allow_writeable_chroot\r\n"

Owner = Any  # Session | Worker | None: whose end an exception in a callback means


class Timer:
    __slots__ = ("fn", "owner", "live")

    def __init__(self, fn: Callable[[], None], owner: Owner) -> None:
        self.fn, self.owner, self.live = fn, owner, True

    def cancel(self) -> None:
        self.live = False


class Timers:
    """A heap of one-shot timers; a cancelled one stays until its time and is skipped."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def after(self, seconds: float, fn: Callable[[], None], owner: Owner = None) -> Timer:
        timer = Timer(fn, owner)
        heapq.heappush(self._heap, (time.monotonic() + max(0.0, seconds), next(self._seq), timer))
        return timer

    def wait(self, most: float) -> float:
        while self._heap and not self._heap[0][2].live:
            heapq.heappop(self._heap)
        return min(most, max(0.0, self._heap[0][0] - time.monotonic())) if self._heap else most

    def due(self) -> list[Timer]:
        now, out = time.monotonic(), []
        while self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            if timer.live:
                timer.live = False
                out.append(timer)
        return out


class Proc:
    """A child of the zygote, known by its pidfd: a signal never reaches a reused
    pid, and the pidfd turns readable when the process has exited."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid, self.pidfd = pid, pidfd

    @property
    def alive(self) -> bool:
        return self.pidfd >= 0

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except OSError:  # ESRCH: already gone
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


class Phase(Enum):
    """Where a session is; what its channel may carry in each: EXPECTED."""

    LOGIN = "waiting for Login"
    CHECK = "password check"
    ANSWER = "login delay (delay_failed_login, delay_successful_login)"
    LEAVING = "last failed login"
    HANDOVER = "waiting for Handover"
    ADMIT = "waiting for the pre-login process to exit"
    POST = "logged in"


@dataclass(eq=False)
class Session:
    """One client's session as the broker knows it, from accept to its last channel's end."""

    sid: str
    site: Any  # the worker.Site of its accept: its config holds for the session's life
    remote_ip: str
    local_ip: str
    ino: int  # the accepted socket's inode: a plain Handover must give back this one
    chan: Channel  # the pre-login channel, then the post-login one
    proc: Proc  # the pre-login process, with TLS the session's helper afterwards
    relay: LogRelay
    phase: Phase = Phase.LOGIN
    fails: int = 0
    user: str = ""  # of the Login being answered
    tls_claimed: bool = False
    started: float = 0.0
    check: CheckerClient | None = None
    timer: Timer | None = None  # the phase's one timer: check, failed-login delay, connect
    account: Principal | None = None
    worker: Worker | None = None
    reserve: Callable[[int], float] | None = None
    connecting: socket.socket | None = None
    held: tuple[Handover, socket.socket] | None = None  # a plain session's admission, until ADMIT ends
    advertise: str = ""  # the destination a PROXY header declared: PASV's address (Admit.server_ip)


@dataclass(eq=False)
class Worker:
    """An identity worker: the sessions it hosts; `key` is what they all share."""

    key: tuple[Any, ...]
    proc: Proc
    admission: Channel | None
    relay: LogRelay
    sessions: set[Session] = field(default_factory=set)
    linger: Timer | None = None
    retired: bool = False  # takes no new session (SIGHUP, idle, process isolation, a fault)


# phase -> (the requests it takes besides log events, the most descriptors one carries)
EXPECTED: dict[Phase, tuple[tuple[type[Message], ...], int]] = {
    Phase.LOGIN: ((Login,), 0),
    Phase.CHECK: ((), 0),
    Phase.ANSWER: ((), 0),
    Phase.LEAVING: ((), 0),
    Phase.HANDOVER: ((Handover,), 2),
    Phase.ADMIT: ((), 0),
    Phase.POST: ((ActiveDataSocket, PassiveListen, ChownUpload, RateGrant, *UPLOAD_REQUESTS), 1),
}


def check_handover(ino: int, msg: Handover, socks: list[socket.socket]) -> None:
    """Plain text: the very socket accepted for this session; TLS: the helper's two
    AF_UNIX ends (the plaintext stream, the request channel).  Else ChannelError."""
    if len(socks) == 1 and not msg.tls_protected:
        sock = socks[0]
        if sock.type == socket.SOCK_STREAM and os.fstat(sock.fileno()).st_ino == ino:
            return
        raise ChannelError("a plain Handover gives back another socket than the client's")
    if len(socks) == 2 and msg.tls_protected:
        plain, requests = socks
        if (plain.family, plain.type, requests.family, requests.type) == (
                socket.AF_UNIX, socket.SOCK_STREAM, socket.AF_UNIX, socket.SOCK_SEQPACKET):
            return
        raise ChannelError("a TLS Handover carries other descriptors than the helper's")
    raise ChannelError("a Handover with the wrong number of descriptors")


def root_refusal(cfg: Any, account: Principal) -> bytes | None:
    """The checks made as root before an identity worker may take the session:
    the root must exist (vsftpd's 500 OOPS otherwise) and, chrooted, not be
    writable by the user unless allow_writeable_chroot (never for anonymous)."""
    try:
        if account.chroot and not stat.S_ISDIR(os.stat(account.root).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        unsafe = account.chroot and writable_root(account)
    except OSError as e:
        where = os.path.normpath(account.root + "/" + account.start_dir) if account.chroot else account.start_dir
        log.warning("login %s: cannot change directory to %s: %s", account.name, where, e.strerror or e)
        return f"500 OOPS: cannot change directory:{where}\r\n".encode("utf-8", "replace")
    if unsafe and (account.user_class.value == "anonymous" or not cfg.allow_writeable_chroot):
        return WRITABLE_ROOT
    return None
