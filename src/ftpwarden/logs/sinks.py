"""Where log lines go: append-only files (or stdout), the local syslog socket, JSON lines.

Everything is opened at start-up, before any session exists, and a write is
one system call on a ready descriptor: logging never waits on the network, and
never raises into a session.  A line that cannot be written (disk full, syslog
busy) is dropped, as vsftpd does.

A log file is locked (fcntl, whole file) around each line, as vsftpd does unless
no_log_lock=YES: other writers that lock (another instance, a script) never
interleave with us, and on NFS a lock makes the client see the file's true end.
A line waits for another process's lock LOCK_WAIT at most, then is written anyway:
a lock held too long must not stall every session, nor cost the line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import time
from typing import Any

from .xferlog import printable

__all__ = ["FileSink", "StderrSink", "SyslogSink", "JsonLinesSink", "syslog_datagram", "syslog_once",
           "FatalToSyslog", "LOG_FTP", "LOG_ERR", "LOG_WARNING", "LOG_INFO", "LOCK_WAIT"]

log = logging.getLogger("ftpwarden.logs")

LOG_FTP = 11       # syslog facility "ftp" (vsftpd logs under LOG_FTP)
LOG_ERR = 3
LOG_WARNING = 4
LOG_INFO = 6
_SYSLOG_MAX = 8192  # bytes per datagram; longer messages are cut
LOCK_WAIT = 1.0     # seconds a line waits for another process's lock on its log file, at most
_LOCK_POLL = 0.005

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _open_append(path: str) -> int:
    # O_NONBLOCK: a FIFO without reader fails here instead of hanging start-up.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    return os.open(path, flags, 0o600)


class FileSink:
    """Lines appended to `path` ("-": stdout).  `reopen()` after logrotate moved the file.

    `lock` (no_log_lock=NO): each line is written under an fcntl write lock on the
    whole file; only a regular file is locked (stdout may be a pipe or a terminal)."""

    def __init__(self, path: str, *, lock: bool = False) -> None:
        self.path = path
        self._fd = 1 if path == "-" else _open_append(path)  # OSError stops start-up
        self.lock = lock and path != "-" and stat.S_ISREG(os.fstat(self._fd).st_mode)

    def write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        locked = self.lock and self._take_lock()
        try:
            os.write(self._fd, data)
        except OSError:
            pass
        finally:
            if locked:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
                except OSError:
                    pass

    def _take_lock(self) -> bool:
        """The write lock, waiting LOCK_WAIT at most; False: write without it."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: another process holds it
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_LOCK_POLL)
            except OSError:  # ENOLCK, EBADF: a file system without locks, or a closed sink
                return False

    def reopen(self) -> None:
        if self.path == "-" or self._fd < 0:
            return
        try:
            fd = _open_append(self.path)
        except OSError as e:
            log.warning("cannot reopen %s (%s); still writing to the old file", self.path, e.strerror)
            return
        os.dup2(fd, self._fd, inheritable=False)  # one atomic swap: no line is lost or misplaced
        os.close(fd)

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1  # a later write fails (EBADF) instead of hitting a reused number


class StderrSink(FileSink):
    """Lines to stderr (serve -v); fd 2 stays usable after a chroot."""

    def __init__(self) -> None:
        self.path = "-"
        self._fd = 2
        self.lock = False


def syslog_datagram(facility: int, severity: int, now: float, ident: str, pid: int, message: str) -> bytes:
    """RFC 3164: `<PRI>Mmm dd hh:mm:ss ident[pid]: message`, local time, day space-padded."""
    t = time.localtime(now)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    data = f"<{facility * 8 + severity}>{stamp} {ident}[{pid}]: {message}".encode("utf-8", "replace")
    return data[:_SYSLOG_MAX]


class SyslogSink:
    """Datagrams to the local syslog socket.

    The socket is made at start-up so that a process which can no longer see
    /dev/log (chroot) still logs; a message the daemon cannot take at once is
    dropped.
    """

    def __init__(self, path: str = "/dev/log", ident: str = "ftpwarden", facility: int = LOG_FTP) -> None:
        self.path = path
        self.ident = ident
        self.facility = facility
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self.connected = self._connect()

    def _connect(self) -> bool:
        try:
            self._sock.connect(self.path)
        except OSError:
            return False
        return True

    def send(self, message: str, *, severity: int = LOG_INFO, now: float | None = None) -> None:
        data = syslog_datagram(self.facility, severity, time.time() if now is None else now,
                               self.ident, os.getpid(), message)
        for _attempt in range(2):
            try:
                self._sock.send(data)
                return
            except BlockingIOError:
                return  # the daemon is behind: drop rather than stall a session
            except OSError:
                # Not connected yet, or the daemon restarted: try once more.
                self.connected = self._connect()
                if not self.connected:
                    return

    def reopen(self) -> None:
        self.connected = self._connect()

    def close(self) -> None:
        self._sock.close()


class JsonLinesSink:
    """One JSON object per line (non-ASCII escaped, so a line is always one line)."""

    def __init__(self, path: str, *, lock: bool = False) -> None:
        self._file = FileSink(path, lock=lock)

    def emit(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, separators=(",", ":")))

    def reopen(self) -> None:
        self._file.reopen()

    def close(self) -> None:
        self._file.close()


def syslog_once(path: str, message: str, *, severity: int = LOG_ERR, ident: str = "ftpwarden") -> bool:
    """One datagram to the syslog socket at `path` on a socket of its own; False if not taken."""
    data = syslog_datagram(LOG_FTP, severity, time.time(), ident, os.getpid(), message)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(path)
            sock.send(data)
    except OSError:
        return False
    return True


class FatalToSyslog(logging.Handler):
    """log_die: what ends the server or a session (a start-up error, a logged error)
    also goes to syslog, as vsftpd's die() does with log_die=YES.  A socket per
    message: they are rare, and no descriptor is left for a forked process to inherit."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({record.exc_info[1]!r})"
        except Exception:
            return
        syslog_once(self.path, printable(" ".join(text.splitlines())))
