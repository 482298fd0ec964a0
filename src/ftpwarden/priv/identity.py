"""Isolated mode's identity worker: one asyncio process, running as one identity, hosting its sessions.

Forked by the zygote (priv/zygote.py) as root, it drops for good to the
identity (uid, gid, groups, chroot to its root) and then takes sessions from
the broker over its admission channel: each `Admit` carries the control
connection (the client's TCP socket, or with TLS the plaintext end of the
session's TLS helper), the session's own channel to the broker and, with TLS,
the channel to the helper.  Sessions of different identities never share a
process; sharing one between sessions of the same identity gives nothing away
that the uid does not already give.

Each session asks the broker for what it may not do itself (active-mode
sockets, chowns, rate grants) on its own channel, and its log events go there
too; the worker closes that channel when the session ends (the broker's "this
session is over").  The admission channel's EOF means no more sessions: the
worker exits once its last session has ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import ctypes
import errno
import functools
import logging
import os
import resource
import signal
import socket
import stat
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..net import proctitle
from ..net.context import ServerContext
from ..net.control import ControlConnection
from ..net.limits import RateGrants
from ..ops.hooks import worker_settings
from ..proto.principal import Principal
from . import seccomp
from .channel import Channel, ChannelClosed
from .checker import _account
from .creds import close_strays, drop_privileges, minimal_environment
from .logrelay import ForwardingEventLog, forward_logs, wanted_events
from .messages import Admit, ChannelError, CheckGranted, Kick
from .tlshelper import TlsLink
from .worker import (
    BrokerHooks,
    BrokerQuota,
    MonitorBroker,
    _cannot_enter,
    _detach_bans,
    _detach_rates,
    _names_snapshot,
)

if TYPE_CHECKING:
    from .worker import Site
    from .zygote import Identity

__all__ = ["serve", "memory_limit", "THREADS"]

THREADS = 32  # the blocking calls to the broker and the TLS helper (asyncio.to_thread), for all sessions
THREAD_STACK = 512 << 10  # what such a call needs (a socket call and a codec), not the default 8 MiB
BASE_MEMORY = 1 << 30  # address space the process may add to what it inherits (as worker.WORKER_MEMORY_LIMIT)
SESSION_MEMORY = 4 << 20  # and per session it may host: buffers of a transfer, a listing
_M_ARENA_MAX = -8
_SHUTTING_DOWN = b"421 Server shutting down.\r\n"
_KICKED = b"421 Disconnected by the administrator.\r\n"  # ops.control.KICK_LINE

log = logging.getLogger("ftpwarden.identity")


def memory_limit(sessions: int) -> int:
    """RLIMIT_AS of a worker hosting up to `sessions` sessions."""
    return BASE_MEMORY + SESSION_MEMORY * max(1, sessions)


class _Session:
    """One hosted session's descriptors: closed together when it ends."""

    __slots__ = ("conn", "key", "chan", "helper", "sid", "control")

    def __init__(self, conn: socket.socket, chan: Channel, helper: Channel | None, sid: str = "") -> None:
        self.conn = conn
        self.key = conn.fileno()  # the control socket is closed (fileno -1) before the session ends
        self.chan = chan
        self.helper = helper
        self.sid = sid  # the broker's id: what a Kick names
        self.control: ControlConnection | None = None

    def close(self) -> None:
        """The client's connection first: when the broker sees the session channel's
        EOF ("session over"), nothing of the session is left here."""
        self.conn.close()
        # shutdown, not only close: a thread blocked in a call to the broker or the
        # helper wakes up (EOF), and the other end sees EOF now, not when that thread lets go
        for sock in (*([self.helper.sock] if self.helper is not None else []), self.chan.sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class _Worker:
    def __init__(self, site: Site, who: Identity, admission: Channel) -> None:
        self.site = site
        self.who = who
        self.admission = admission
        self.sessions: dict[int, _Session] = {}  # by control fd
        self.tasks: set[asyncio.Task[None]] = set()
        self.open = True  # the admission channel: more sessions may come
        self.done: asyncio.Future[None] | None = None
        self.base: ServerContext | None = None
        self.wants: dict[str, bool] = {}
        self.rate = 0
        self.name = ""  # the account of its sessions (for the title)

    # ------------------------------------------------------------ process set-up (root)

    def prepare(self) -> None:
        site, cfg = self.site, self.site.cfg
        signal.signal(signal.SIGTERM, self._stop)
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the broker ends us (SIGTERM, or the admission EOF)
        minimal_environment()  # before tzset: TZ is one of the few variables kept
        time.tzset()
        time.localtime()  # load the zone data now: /etc/localtime is gone after chroot
        self.rate = int(site.account_rates.rate) if site.account_rates is not None else 0
        _detach_rates(site)
        _detach_bans(site)
        self.wants = wanted_events(site.events)  # what the broker's sinks write, before they are replaced
        forward_logs(site, self.admission.sock)  # this process's own warnings: LogNotice to the broker
        self.base = ServerContext(cfg, None, events=site.events)
        self.base.preload_names(_names_snapshot(cfg))
        _fewer_arenas()
        threading.stack_size(THREAD_STACK)
        sessions = 1 if cfg.session_isolation == "process" else max(1, int(cfg.identity_sessions_max or 256))
        _room_for(sessions)
        close_strays({self.admission.fileno()})
        who = self.who
        drop_privileges(who.uid, who.gid, groups=list(who.groups), root=who.root if who.chroot else None,
                        memory_limit=memory_limit(sessions))
        if cfg.seccomp_sandbox:  # last: from here on only an identity worker's calls (priv/seccomp.py)
            seccomp.install("identity")

    def _stop(self, _signum: int, _frame: Any) -> None:
        """SIGTERM (the broker stopping, or the zygote gone): 421 to every session, then exit."""
        for session in list(self.sessions.values()):
            try:  # only what fits in the socket buffer now: a stop never waits on a client
                session.conn.send(_SHUTTING_DOWN, socket.MSG_DONTWAIT)
            except OSError:
                pass
        os._exit(0)

    # ------------------------------------------------------------ sessions

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(THREADS, "session"))
        self.done = loop.create_future()
        self.admission.sock.setblocking(False)
        loop.add_reader(self.admission.fileno(), self._admit)
        await self.done

    def _admit(self) -> None:
        try:
            msg, fds = self.admission.recv(Admit, Kick, max_fds=3)
        except BlockingIOError:
            return
        except ChannelClosed:  # the broker takes no more sessions here
            self._close_admission()
            return
        except (ChannelError, OSError) as e:
            log.warning("admission: %s", e)
            return
        if isinstance(msg, Kick):
            for fd in fds:
                os.close(fd)
            self._kick(msg.session)
            return
        assert isinstance(msg, Admit)
        try:
            account = self._account(msg, fds)
        except (ValueError, OSError) as e:
            for fd in fds:
                os.close(fd)
            log.warning("admission refused: %s", e)
            return
        conn = socket.socket(fileno=fds[0])
        session = _Session(conn, Channel(socket.socket(fileno=fds[1])),
                           Channel(socket.socket(fileno=fds[2])) if len(fds) == 3 else None, msg.session)
        self.sessions[session.key] = session
        self.name = account.name
        self._title()
        task = asyncio.get_running_loop().create_task(self._session(session, account, msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _account(self, msg: Admit, fds: list[int]) -> Principal:
        """The session's account, checked against what this process is; ValueError if it does not fit."""
        if len(fds) != (3 if msg.tls_protected else 2):
            raise ValueError(f"{len(fds)} descriptors for a {'TLS' if msg.tls_protected else 'plain'} session")
        who = self.who
        if (msg.uid, msg.gid, msg.root, msg.chroot) != (who.uid, who.gid, who.root, who.chroot):
            raise ValueError(f"an account of another identity ({msg.uid}:{msg.gid} {msg.root})")
        for fd in fds:  # what the broker passes is a socket (a client's, or one of a pair)
            socket.socket(fileno=fd).detach()  # ENOTSOCK: OSError
        # the checker's rules: a user class and grants it knows, never uid 0
        return _account(CheckGranted(msg.name, msg.user_class, msg.root, msg.grants, msg.umask,
                                     msg.anon_password, msg.uid, msg.gid, msg.chroot, msg.start_dir))

    async def _session(self, session: _Session, account: Principal, msg: Admit) -> None:
        """Start the session; it runs on from its connection's callbacks (no task
        waits for it) and `_ended` forgets it."""
        try:
            try:
                _enter(account.start_dir)
            except OSError as e:  # this session only: the others of this identity go on
                session.conn.setblocking(False)
                _cannot_enter(session.conn, account, e)
                self._ended(session)
                return
            assert self.base is not None
            ctx = copy.copy(self.base)  # shares the config, the name cache and the session counter
            broker = MonitorBroker(session.chan)
            ctx.broker = broker
            ctx.events = ForwardingEventLog(session.chan.sock, **self.wants)
            if proctitle.active() and self.site.cfg.session_isolation == "process":  # vsftpd's per-session form
                ctx.events = proctitle.titled(ctx.events, f"{msg.remote_ip}/{account.name}")
            if self.rate:  # user_max_rate: grants from the broker, for this session's account only
                ctx.account_rates = RateGrants(broker.rate_grant, self.rate)
            ctx.quota = BrokerQuota(broker)  # the broker keeps the usage and says if a quota applies
            if getattr(ctx.cfg, "upload_hook", None):  # no execve here: the broker runs it
                ctx.hooks = BrokerHooks(broker, worker_settings(ctx.cfg))
            if session.helper is not None:
                ctx.tls_link = TlsLink(session.helper)
            control = ControlConnection(ctx, account=replace(account, root="/") if account.chroot else account,
                                        pending=msg.pending, tls_state=msg.tls_state,
                                        addresses=(msg.local_ip, msg.remote_ip),
                                        advertise=msg.server_ip or None,  # a PROXY header's destination
                                        on_end=functools.partial(self._ended, session))
            session.control = control
            await asyncio.get_running_loop().connect_accepted_socket(lambda: control, session.conn)
        except Exception:  # our bug: this session ends, the others go on
            log.exception("session %s failed", msg.remote_ip)
            self._ended(session)

    def _kick(self, sid: str) -> None:
        """`ftpwarden kick` (the broker's Kick): 421 to that session's client, and it ends."""
        for session in list(self.sessions.values()):
            if sid and session.sid == sid and session.control is not None:
                session.control.kick(_KICKED)

    def _ended(self, session: _Session, _control: ControlConnection | None = None) -> None:
        """The session is over (its connection is closed and out of the selector):
        its descriptors may go."""
        if self.sessions.pop(session.key, None) is None:
            return
        session.close()
        self._title()
        self._maybe_done()

    def _title(self) -> None:
        """setproctitle_enable: a shared worker shows whose sessions it hosts, and how many."""
        if proctitle.active() and self.site.cfg.session_isolation != "process":
            count = len(self.sessions)
            proctitle.show(f"{self.name}: {count} session{'' if count == 1 else 's'}")

    def _close_admission(self) -> None:
        if self.open:
            self.open = False
            asyncio.get_running_loop().remove_reader(self.admission.fileno())
            self.admission.close()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.open and not self.sessions and self.done is not None and not self.done.done():
            self.done.set_result(None)


def serve(site: Site, who: Identity, admission: Channel) -> None:
    """Run as `who` until the admission channel is closed and the last session has ended."""
    worker = _Worker(site, who, admission)
    worker.prepare()
    loop = asyncio.new_event_loop()
    # no asyncio.run: its end would wait for executor threads still blocked on a
    # channel; the process exits right after this (the zygote's fork)
    loop.run_until_complete(worker.run())


def _enter(start_dir: str) -> None:
    """The session's first directory must be one the user may enter (vsftpd's chdir as the user)."""
    if not stat.S_ISDIR(os.stat(start_dir).st_mode):  # missing: FileNotFoundError
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    if not os.access(start_dir, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def _fewer_arenas() -> None:
    """glibc gives each thread its own malloc arena (64 MiB of address space
    each, and pages that stay): two serve short blocking calls well enough."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass  # not glibc


def _room_for(sessions: int) -> None:
    """Descriptors for every session (control, channel, helper, data connection, jail, listing)."""
    need = 8 * sessions + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        hard = need if hard != resource.RLIM_INFINITY and hard < need else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # still root: the hard limit may rise
        except (OSError, ValueError):
            pass
