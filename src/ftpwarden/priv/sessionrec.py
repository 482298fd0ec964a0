"""session_support: a PAM-authenticated login's records, held by a root process for the session's life.

vsftpd keeps a privileged parent per session to do this; here it is one small
root process per such session (the "holder"), forked by the password check
child that authenticated the login, so it holds that login's PAM handle:

- at login, as vsftpd: a utmp record (USER_PROCESS) and a wtmp line, then
  pam_setcred and pam_open_session (a failure refuses the login);
- it answers the check itself, passing the broker one end of a socketpair;
- when the broker closes that end (the session is over, or the broker is
  gone: the same EOF), pam_close_session, and DEAD_PROCESS in utmp and wtmp.

The line is "ftpd" + the holder's pid: unique while the session lasts (the
identity worker's pid is shared by sessions; a pre-login pid may be reused
meanwhile).  `who` and `last` show it; ut_host is the client's address.

Records go through libc (pututxline, updwtmpx) rather than our own writes of
struct utmpx: libc takes the locks every other writer (login, sshd) takes,
knows the files' paths, and reuses a slot as they do.  Its lock waits are
bounded by an alarm inside libc, so they happen here, never in the broker's loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from .channel import Channel
from .creds import close_strays
from .messages import CheckGranted, CheckRefused

__all__ = ["Record", "hold", "line_of", "NAME", "UTMPX_SIZE"]

OPEN_SECONDS = 30  # pam_setcred + pam_open_session at most (a hung module refuses the login)
UTMPX_SIZE = 384  # glibc's struct utmpx on x86-64 and arm64 (32-bit times there too)
_USER_PROCESS = 7
_DEAD_PROCESS = 8
_WTMPX_FILE = b"/var/log/wtmp"
_PR_SET_NAME = 15
NAME = "ftpwarden-rec"  # /proc/PID/comm of a holder


class _ExitStatus(ctypes.Structure):
    _fields_ = [("e_termination", ctypes.c_short), ("e_exit", ctypes.c_short)]


class _TimeVal32(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int32), ("tv_usec", ctypes.c_int32)]


class _Utmpx(ctypes.Structure):
    _fields_ = [
        ("ut_type", ctypes.c_short),
        ("ut_pid", ctypes.c_int),
        ("ut_line", ctypes.c_char * 32),
        ("ut_id", ctypes.c_char * 4),
        ("ut_user", ctypes.c_char * 32),
        ("ut_host", ctypes.c_char * 256),
        ("ut_exit", _ExitStatus),
        ("ut_session", ctypes.c_int32),
        ("ut_tv", _TimeVal32),
        ("ut_addr_v6", ctypes.c_int32 * 4),
        ("reserved", ctypes.c_char * 20),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if ctypes.sizeof(_Utmpx) != UTMPX_SIZE:
        raise OSError("struct utmpx of an unknown layout")
    libc.pututxline.argtypes = [ctypes.POINTER(_Utmpx)]
    libc.pututxline.restype = ctypes.c_void_p
    libc.updwtmpx.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Utmpx)]
    return libc


def line_of(pid: int) -> str:
    return f"ftpd{pid}"


class Record:
    """One session's utmp/wtmp entries (vsftpd's vsf_insert_uwtmp / vsf_remove_uwtmp)."""

    def __init__(self, user: str, host: str, pid: int) -> None:
        self.entry = _Utmpx()
        self.entry.ut_pid = pid
        self.entry.ut_line = line_of(pid).encode()
        self.entry.ut_user = user.encode("utf-8", "replace")[:32]
        self.entry.ut_host = host.encode("utf-8", "replace")[:256]
        self.inserted = False

    def login(self) -> str:
        """Write the login; "" or what went wrong (the login goes on: vsftpd ignores it too)."""
        self.entry.ut_type = _USER_PROCESS
        self.inserted = True
        return self._write()

    def logout(self) -> str:
        if not self.inserted:
            return ""
        self.inserted = False
        self.entry.ut_type = _DEAD_PROCESS
        base = ctypes.addressof(self.entry)
        for field in (_Utmpx.ut_user, _Utmpx.ut_host):  # the whole field: assigning b"" clears one byte
            ctypes.memset(base + field.offset, 0, field.size)
        return self._write()

    def _write(self) -> str:
        now = time.time()
        self.entry.ut_tv.tv_sec, self.entry.ut_tv.tv_usec = int(now), int(now % 1 * 1e6)
        try:
            libc = _libc()
        except OSError as e:
            return str(e)
        libc.setutxent()
        done = libc.pututxline(ctypes.byref(self.entry))
        err = ctypes.get_errno()
        libc.endutxent()
        libc.updwtmpx(_WTMPX_FILE, ctypes.byref(self.entry))
        return "" if done else f"utmp: {os.strerror(err) if err else 'not written'}"


def hold(chan: Channel, granted: CheckGranted, session: Any, remote_ip: str) -> None:
    """Run in the check child that granted a PAM login with session_support: fork the
    holder, which answers the check and lives as long as the session; this child returns."""
    if os.fork():
        return
    code = 1
    try:
        code = _holder(chan, granted, session, remote_ip)
    except BaseException:
        pass
    finally:
        os._exit(code)


def _holder(chan: Channel, granted: CheckGranted, session: Any, remote_ip: str) -> int:
    """The holder: its parent (the check child) exits at once, so the broker, a
    subreaper, becomes its parent; it holds nothing but this check's channel."""

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(OSError, AttributeError):  # its own name in ps, not the checker's
        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(NAME.encode()), 0, 0, 0)
    close_strays({chan.fileno()})
    record = Record(granted.name, remote_ip, os.getpid())
    if why := record.login():
        _say(f"session_support: {granted.name}: {why}")
    signal.alarm(OPEN_SECONDS)
    why = session.open()
    signal.alarm(0)
    if why:
        _say(f"session_support: {granted.name}: {why}")
        record.logout()
        session.end()
        with contextlib.suppress(OSError):
            chan.send(CheckRefused())
        return 0
    try:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            chan.send(granted, (theirs.fileno(),))
        finally:
            theirs.close()
            chan.close()
        with contextlib.suppress(OSError, AttributeError):  # what the check used goes back (glibc)
            ctypes.CDLL(None).malloc_trim(0)
        _wait_for_end(mine)
    finally:
        session.close()
        record.logout()
    return 0


def _wait_for_end(sock: socket.socket) -> None:
    """Until the broker closes its end (nothing is ever sent on it)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP)
    while True:
        for _, events in poller.poll():
            if events & (select.POLLHUP | select.POLLERR):
                return
            try:
                if not sock.recv(1):
                    return
            except OSError:
                return


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"ftpwarden: {text}", file=sys.stderr, flush=True)
