"""Isolated mode's listener: root, accepts on 21, counts, forks one monitor per connection.

It never reads from a client: over-limit connections get a fixed 421 line and
are closed.  SIGHUP re-reads the config for new sessions; SIGTERM stops the
listener and the sessions (each monitor gets SIGTERM and ends its workers with
a 421; a listener that dies any other way sends its monitors SIGTERM through
their parent-death signal); children are reaped as they end (no zombies).
Password checks are bounded across all monitors (checkslots.CheckSlots) and
run in the password checker (priv/checker.py), started here before anything
loads the user DB and started again if it dies.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..policy.passwords import dummy_verify
from .checker import Authenticate, Checker, CheckerClient
from .checkslots import CheckSlots, default_slots
from .creds import set_parent_death_signal
from .monitor import Monitor

__all__ = ["Listener", "run_one_session"]

TOO_MANY = b"421 There are too many connected users, please try later.\r\n"
TOO_MANY_FROM_YOU = b"421 There are too many connections from your internet address.\r\n"
BANNED = b"421 Too many failed logins from your address; try again later.\r\n"
_M_MMAP_THRESHOLD = -3


def run_one_session(site: Any, conn: socket.socket, slots: CheckSlots | None = None,
                    checker: CheckerClient | None = None) -> int:
    """One session in this process (a forked child, or inetd mode).
    `slots`: the listener's bound on concurrent password checks; `checker`: this
    session's channel to the password checker (None: site.authenticate checks)."""
    from . import worker  # already imported by the caller in standalone mode (fork shares it)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    return Monitor(site.cfg, conn, authenticate=site.authenticate if checker is None else checker,
                   prelogin=functools.partial(worker.prelogin, site),
                   postlogin=functools.partial(worker.postlogin, site),
                   bans=site.bans, events=site.events, slots=slots,
                   account_rates=site.account_rates).run()


def _hash_buffers_unmapped() -> None:
    """Keep glibc's mmap threshold fixed (inherited by every monitor): a freed
    16 MiB scrypt buffer would otherwise raise it, and the next ones would come
    from the heap and stay with the process after its check."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):
        pass  # not glibc


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


class Listener:
    def __init__(self, sockets: list[socket.socket], load: Callable[[], Any],
                 login: Callable[[], Authenticate] | None = None) -> None:
        """`load()` -> a worker.Site: called at start and on SIGHUP.  `login()` ->
        the password check, run only in the checker (None: no checker, the
        monitors run site.authenticate themselves)."""
        self.sockets = sockets
        self.load = load
        self._wake: tuple[int, ...] = ()
        # first, before anything here could load the user DB: only the checker holds it
        self.checker = Checker(login, self._close_in_checker) if login is not None else None
        self.site = load()
        self.slots = CheckSlots(default_slots())  # kept across SIGHUP: monitors of both configs share it
        _hash_buffers_unmapped()
        if self.checker is None:
            # One check here first: what the hashing library sets up on first use is
            # then shared by every monitor (copy-on-write) instead of made in each.
            dummy_verify("warm-up")
        self.children: dict[int, str] = {}  # pid -> client ip
        self.per_ip: dict[str, int] = {}
        self.stopping = False
        self.reload = False

    def serve(self, ready: Callable[[], None] | None = None) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        wake_r, wake_w = self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)  # an ended session wakes select: its slot frees at once
        for s in self.sockets:
            s.setblocking(False)
        gc.freeze()  # keep the shared heap out of the collector: fewer copied pages per fork
        if ready:
            ready()
        watched: list[socket.socket | int] = [*self.sockets, wake_r]
        while not self.stopping:
            if self.reload:
                self._reload()
            self._reap()
            if self.checker is not None:
                self.checker.ensure()  # it died: a new one (meanwhile logins are refused)
            try:
                readable, _, _ = select.select(watched, [], [], 1.0)
            except InterruptedError:
                continue
            if wake_r in readable:
                while _drain(wake_r):
                    pass
            for sock in readable:
                if isinstance(sock, socket.socket):  # not the wake-up pipe
                    self._accept(sock)
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        return self._shutdown()

    def _on_stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload = True

    def _reload(self) -> None:
        self.reload = False
        try:
            old, self.site = self.site, self.load()
            if old.events is not None and old.events is not self.site.events:
                old.events.close()
            if self.checker is not None:
                self.checker.reload()  # the checker reads the user DB again itself
            print("ftpwarden: configuration re-read; new sessions use it", file=sys.stderr)
        except Exception as e:  # a broken file keeps the old config running
            print(f"ftpwarden: SIGHUP: keeping the old configuration: {e}", file=sys.stderr)

    def _accept(self, lsock: socket.socket) -> None:
        try:
            conn, peer = lsock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        ip = peer[0]
        cfg = self.site.cfg
        max_clients, max_per_ip = int(cfg.max_clients or 0), int(cfg.max_per_ip or 0)
        refusal = None
        bans = getattr(self.site, "bans", None)
        if bans is not None and bans.is_banned(ip):
            refusal = BANNED
        elif max_clients and len(self.children) >= max_clients:
            refusal = TOO_MANY
        elif max_per_ip and self.per_ip.get(ip, 0) >= max_per_ip:
            refusal = TOO_MANY_FROM_YOU
        if refusal:
            try:
                conn.setblocking(False)
                conn.send(refusal)
            except OSError:
                pass
            conn.close()
            return
        conn.setblocking(True)
        client = self.checker.connect() if self.checker is not None else None
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the listener's handler, before:
                set_parent_death_signal(signal.SIGTERM, parent=me)  # the listener's end is the session's
                for s in self.sockets:
                    s.close()
                signal.set_wakeup_fd(-1)
                for fd in self._wake:
                    os.close(fd)
                if self.checker is not None:
                    self.checker.close()  # a monitor has its own channel, never the control one
                code = run_one_session(self.site, conn, self.slots, client)
            except BaseException:  # never return into the accept loop
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        conn.close()
        if client is not None:
            client.detach()  # the monitor's now
        self.children[pid] = ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

    def _reap(self) -> None:
        while self.children or (self.checker is not None and self.checker.pid):
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.per_ip.clear()
                return
            if pid == 0:
                return
            if self.checker is not None and self.checker.ended(pid):
                print("ftpwarden: the password checker ended; starting a new one", file=sys.stderr)
                continue
            ip = self.children.pop(pid, None)
            if ip is not None:
                left = self.per_ip.get(ip, 1) - 1
                if left > 0:
                    self.per_ip[ip] = left
                else:
                    self.per_ip.pop(ip, None)

    def _shutdown(self) -> int:
        for s in self.sockets:
            s.close()
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap()
        if self.checker is not None:
            self._end_checker()
        return 0

    def _end_checker(self) -> None:
        assert self.checker is not None
        pid = self.checker.pid
        self.checker.close()  # with no monitor left, the checker ends on this
        deadline = time.monotonic() + 5
        while pid and time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def _close_in_checker(self) -> None:
        """Run in a new checker: it never accepts, and the wake-up pipe is the listener's."""
        for s in self.sockets:
            s.close()
        signal.set_wakeup_fd(-1)
        for fd in self._wake:
            os.close(fd)
