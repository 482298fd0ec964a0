"""Isolated mode's shared state (state_db_url): the `ftpwarden-state` process.

The database URL is a secret and a database answer is foreign input, so the
root broker neither connects nor waits on it.  The zygote forks this process
(a heap that never held a password: the broker's passes every login on) before
the broker's first accept (cli.py), and again if it dies (priv/broker.py,
rate-limited), in the isolate namespaces but the host's network.  It keeps only
its end of a SOCK_SEQPACKET socketpair (and stderr), maps none of the shared
tables (the zygote holds none), becomes `nopriv_user` (no chroot: it must reach
the database, by name or unix socket), not dumpable, NO_NEW_PRIVS, with the
zygote's death signal, and runs the same `StateSync` as a pooled worker.

Typed messages (priv/messages.py, kinds 90-99), never answered:
broker -> state: StateFailure (a failed login counted), StateActive (an account
that moved bytes); state -> broker: StateBan (a ban in force), StateShare (the
nodes splitting an account's rate).  The broker sends without waiting: a full
channel drops that message.  The broker applies what comes back in its loop,
bounded: no ban longer than its own ban_seconds.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..priv.channel import Channel, ChannelClosed
from ..priv.messages import ChannelError, StateActive, StateBan, StateFailure, StateShare
from .statedb import ACTIVE_WITHIN, BanRule, StateSync, load_driver

__all__ = ["StateLink", "NAME"]

log = logging.getLogger("ftpwarden.stateproc")

NAME = "ftpwarden-state"
BURST = 256  # messages handled per wake-up of the broker
RESTART_MIN, RESTART_MAX = 1.0, 30.0  # seconds before a dead state process is started again
MAX_NODES = 1000
_PR_SET_NAME = 15
_SEND_WAIT = 1.0  # seconds the state process waits on a full channel before it drops a message


class StateLink:
    """The broker's end: the channel to ftpwarden-state, and what comes back applied."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.pid = 0
        self.chan: Channel | None = None
        self.started = 0.0
        self.pause = RESTART_MIN

    def start(self, spawn: Callable[[socket.socket, str], tuple[int, int]]) -> None:
        """Have ftpwarden-state started: `spawn(its end, node)` is the zygote's (a heap that
        never held a password, unlike the broker's); OSError or ChannelError if it cannot."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, pidfd = spawn(theirs, self.node)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        os.close(pidfd)  # its end shows as the end of its channel
        mine.setblocking(False)
        self.pid, self.chan, self.started = pid, Channel(mine), time.monotonic()

    def ended(self) -> float:
        """The process is gone: its channel closes; the seconds to wait before the next start
        (longer while it keeps dying soon after its start)."""
        self.close()
        if time.monotonic() - self.started > 2 * RESTART_MAX:
            self.pause = RESTART_MIN
        delay, self.pause = self.pause, min(self.pause * 2, RESTART_MAX)
        log.warning("%s (pid %d) ended; starting a new one in %.0f s", NAME, self.pid, delay)
        return delay

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()
            self.chan = None

    # ------------------------------------------------------------ broker -> state

    def attach(self, bans: Any) -> None:
        """Each failed login the broker's BanList counts goes to the state process too."""
        if bans is not None:
            bans.report = lambda ip: self._send(
                StateFailure(ip, int(bans.threshold), int(bans.ban_seconds), int(bans.window_seconds)))

    def active(self, accounts: list[str]) -> None:
        for account in accounts:
            self._send(StateActive(account))

    def _send(self, msg: Any) -> None:
        if self.chan is None:
            return
        try:
            self.chan.send(msg)
        except (BlockingIOError, ChannelError, OSError):
            pass  # full (it is busy) or gone (it is restarted): this one is dropped, never waited for

    # ------------------------------------------------------------ state -> broker

    def receive(self, bans: Any, rates: Any, events: Any) -> bool:
        """Apply what the state process sent; False when it is gone (or broke the protocol)."""
        for _ in range(BURST):
            if self.chan is None:
                return False
            try:
                msg, _fds = self.chan.recv(StateBan, StateShare)
            except BlockingIOError:
                return True
            except ChannelClosed:
                return False
            except ChannelError as e:
                log.warning("%s: %s", NAME, e)
                return False
            if isinstance(msg, StateBan):
                _apply_ban(bans, events, msg)
            elif isinstance(msg, StateShare) and rates is not None and msg.account:
                rates.set_share(msg.account, min(max(1, msg.nodes), MAX_NODES))
        return True


def _apply_ban(bans: Any, events: Any, msg: StateBan) -> None:
    if bans is None:
        return
    try:
        ipaddress.ip_address(msg.ip)
    except ValueError:
        return
    seconds = min(max(0, msg.millis) / 1000, bans.ban_seconds + 1.0)  # never longer than this node bans
    if bans.ban(msg.ip, seconds) and events is not None:
        events.ban(msg.ip, max(1, round(seconds)))  # logged once, like a ban started here


# ------------------------------------------------------------ the process

def serve(sock: socket.socket, url: str, node: str, user: str) -> None:
    """The process, forked by the zygote (which ends it with its death signal): its channel
    only, then nopriv_user; it keeps the host's network namespace (PostgreSQL is remote)."""
    from ..priv.creds import close_strays, drop_privileges
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(NAME.encode()), 0, 0, 0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    close_strays({sock.fileno()})
    load_driver()
    pw = pwd.getpwnam(user)
    drop_privileges(pw.pw_uid, pw.pw_gid)  # also NO_NEW_PRIVS, not dumpable, the death signal again
    _serve(Channel(sock), url, node)


def _serve(chan: Channel, url: str, node: str) -> None:
    chan.sock.settimeout(_SEND_WAIT)
    sending = threading.Lock()
    active: dict[str, float] = {}

    def send(msg: Any) -> None:  # from the sync thread
        with sending:
            try:
                chan.send(msg)
            except (TimeoutError, BlockingIOError, ChannelError, OSError):
                pass  # the broker is busy: the next round sends the bans again

    def recent() -> list[str]:
        since = time.monotonic() - ACTIVE_WITHIN
        return [a for a, at in list(active.items()) if at >= since]

    sync = StateSync(url, node, apply_ban=lambda ip, s: send(StateBan(ip, int(s * 1000))),
                     apply_share=lambda a, n: send(StateShare(a, n)), active=recent)
    sync.start()
    while True:
        try:
            msg, _fds = chan.recv(StateFailure, StateActive)
        except TimeoutError:
            continue
        except ChannelError:
            return  # the broker is gone (or broke the protocol): so are we
        if isinstance(msg, StateFailure):
            sync.failed(msg.ip, BanRule(msg.threshold, msg.seconds, msg.window))
        elif isinstance(msg, StateActive):
            now = time.monotonic()
            active[msg.account] = now
            if len(active) > 10000:  # bounded: the stale go first
                for a, at in list(active.items()):
                    if at < now - ACTIVE_WITHIN:
                        del active[a]
