"""sd_notify for systemd's Type=notify: readiness, status, watchdog, reload, stop.

The protocol is one AF_UNIX datagram of `KEY=VALUE` lines to $NOTIFY_SOCKET
(a path, or "@name" for the abstract namespace); no libsystemd needed.  Only
the main process notifies (the broker, the pooled supervisor or the single
pooled worker): systemd's default NotifyAccess=main ignores the others.  The
socket is made at start, before any sandbox, and the variables are removed
from the environment so no child inherits them.  A send never blocks and
never fails the server: systemd not listening is not our error.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["Notifier", "STATUS_EVERY"]

STATUS_EVERY = 5.0  # seconds between STATUS= updates (sent sooner when the count changes)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.sock: socket.socket | None = None
        self.address = ""
        if path.startswith(("/", "@")) and len(path) > 1:
            self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog = _watchdog_seconds(env)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if environ is None:
                os.environ.pop(name, None)
        self._next_ping = 0.0
        self._next_status = 0.0
        self._count: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def open(self) -> None:
        """The socket, made on first use (after the server's own forks) or before a sandbox."""
        if self.sock is None and self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    def send(self, text: str) -> None:
        self.open()
        if self.sock is None:
            return
        try:
            self.sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError:
            pass  # systemd gone or its queue full: nothing the server should stop for

    def ready(self, sessions: int = 0) -> None:
        self._count = sessions
        self.send(f"READY=1\nSTATUS={_status(sessions)}\nMAINPID={os.getpid()}")

    def reloading(self) -> None:
        """Before re-reading the configuration (SIGHUP); ready() again once done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def tick(self, sessions: int) -> None:
        """Called about once a second: WATCHDOG=1 every WatchdogSec/2, STATUS= when the
        count changed or every STATUS_EVERY seconds."""
        if not self.address:
            return
        now = time.monotonic()
        if self.watchdog and now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.watchdog / 2
        if sessions != self._count or now >= self._next_status:
            self._count = sessions
            self.send(f"STATUS={_status(sessions)}")
            self._next_status = now + STATUS_EVERY

    def period(self) -> float:
        """How often tick() should be called."""
        return min(1.0, self.watchdog / 4) if self.watchdog else 1.0

    def close(self) -> None:
        """In a forked child, or at the end: this process notifies no more."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.address = ""


def _status(sessions: int) -> str:
    return f"{sessions} session{'' if sessions == 1 else 's'}"


def _watchdog_seconds(env: dict[str, str] | os._Environ[str]) -> float:
    """WatchdogSec from WATCHDOG_USEC; 0 when unset, malformed, or meant for another pid."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return 0.0
    except ValueError:
        return 0.0
    return usec / 1e6 if usec > 0 else 0.0
