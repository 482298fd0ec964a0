"""Isolated mode's listener and broker: one root process, one `selectors` loop.

It accepts on the control port (bans, max_clients, max_per_ip: a fixed 421
line, never a read), has the zygote (priv/zygote.py) fork a pre-login process
per connection, and from then on talks to each session over that session's
own channel only: Login and Handover before login, the admission into an
identity worker (priv/identity.py), then ActiveDataSocket, PassiveListen,
ChownUpload and RateGrant, each checked as the inetd-mode monitor checks them (the functions
of monitor.py) and attributed to the session of its channel.  It never reads
client bytes and never blocks on a session: a password check goes to the
checker over its own channel, watched by the loop; the delay after a failed
login is a timer; connects are non-blocking; a channel that is full, closed
or malformed ends that session only.

With proxy_protocol_enable, a connection from a trusted balancer (others are
closed unanswered) waits here, never read, while the unprivileged ftpwarden-proxy
process (priv/proxyreader.py, forked by the zygote) reads its PROXY header from a
dup; the declared client is then the session's address everywhere (bans, limits,
logs, the checker's PAM_RHOST, tcp_wrappers, Admit).

A session counts toward max_clients and max_per_ip until its last channel
ends.  SIGHUP re-reads the config for new sessions (existing identity workers
keep theirs, take no new ones); SIGTERM ends every child (each says 421),
killing what is left after a few seconds.  If the zygote dies, so do its
children: the broker ends and exits 1 (a zygote forked again from here would
no longer start from a heap free of passwords).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..logs.events import EventLog
from ..net import proctitle
from ..net.bans import login_failed
from ..net.data import active_socket, passive_listener
from ..net.proxyproto import TrustedSources, trusted_from
from ..ops.brokered import BrokerUploads
from ..policy.auth.base import LoginUnavailable
from ..policy.hostsaccess import host_addr
from ..policy.passwords import dummy_verify
from ..proto.principal import Principal
from . import messages, seccomp
from .channel import Channel, ChannelClosed, drain, end_child, reap_exited, wake_on_signals
from .checker import ANSWER_WAIT, RESTART_GAP, Authenticate, Checker, CheckerClient
from .logrelay import LOG_EVENTS, LogRelay
from .messages import (
    ActiveDataSocket,
    Admit,
    ChannelError,
    ChownUpload,
    DataSocket,
    Handover,
    Kick,
    Login,
    LoginFailed,
    LoginOk,
    LogNotice,
    Message,
    PassiveListen,
    ProxyDeclared,
    RateGrant,
    Refused,
    SpawnPrelogin,
)
from .monitor import active_source_port, chown_upload, hash_buffers_unmapped, login_checkable, login_refusal, rate_wait
from .proxyreader import ANSWER_GRACE, HEADER_WAIT, Pending, ProxyLink, checked_ip
from .sessions import (
    EXPECTED,
    UPLOAD_REQUESTS,
    Owner,
    Phase,
    Proc,
    Session,
    Timers,
    Worker,
    check_handover,
    root_refusal,
)
from .zygote import Identity, SpawnRefused, Zygote

__all__ = ["Broker"]

log = logging.getLogger("ftpwarden.broker")

TOO_MANY = b"421 There are too many connected users, please try later.\r\n"
TOO_MANY_FROM_YOU = b"421 There are too many connections from your internet address.\r\n"
BANNED = b"421 Too many failed logins from your address; try again later.\r\n"

CHECKS_AT_ONCE = max(4, 2 * (os.cpu_count() or 1))  # hashing is CPU work; more only costs memory
CHECK_QUEUE_WAIT = 30.0  # seconds a login may wait for a check slot; then refused like a wrong password
EXIT_GRACE = 5.0  # seconds a process whose part is done has to exit on its own before SIGKILL
IDENTITY_LINGER = 10.0  # seconds an identity worker without sessions waits for a new one
STOP_WAIT = 5.0  # seconds every child has after SIGTERM
HELPER_STOP = 2.0  # TLS helpers are stopped after the workers have had this long to say 421 through them
BURST = 64  # accepts or messages handled per wake-up of one source: no client starves the others
_PR_SET_CHILD_SUBREAPER = 36


class Broker:
    def __init__(self, sockets: list[socket.socket], load: Callable[[], Any],
                 login: Callable[[], Authenticate] | None = None) -> None:
        """`load()` -> a worker.Site: called at start and on SIGHUP (here and in the
        zygote).  `login()` -> the password check, run only in the checker (None:
        no checker, site.authenticate checks here, blocking: tests only)."""
        self.sockets = sockets
        self.load = load
        # set by cli.py once built (ops/): None until then, also in the processes forked meanwhile
        self.ops_feed: Any = None  # metrics_listen: the feed of ftpwarden-ops
        self.state: Any = None  # state_db_url: ops/stateproc.StateLink to ftpwarden-state
        self.control: tuple[socket.socket, int | None] | None = None  # control_socket (who, kick)
        self.notifier: Any = None  # sd_notify
        self.sel: selectors.BaseSelector | None = None
        self._wake: tuple[int, ...] = ()
        # proxy_protocol_enable: the ftpwarden-proxy process reading headers (priv/proxyreader.py)
        self.proxy: ProxyLink | None = None
        self.proxy_started = -RESTART_GAP
        self.proxy_restart: Any = None  # the timer of its next start, while one waits
        # first, before anything here could load the user DB: only the checker holds it
        self.checker = Checker(login, self._close_in_child) if login is not None else None
        self.site = load()
        seccomp.warn_unsupported(bool(self.site.cfg.seccomp_sandbox))
        hash_buffers_unmapped()
        if self.checker is None:
            dummy_verify("warm-up")
        if self.site.cfg.setproctitle_enable:  # read at start only, as vsftpd
            proctitle.take_over()  # every process forked from here inherits the room
        proctitle.show("zygote")  # the title the zygote is forked with and keeps
        # before any client exists: no password is ever in the heap it starts from
        self.zygote = Zygote(load, self._close_in_zygote)
        proctitle.show("LISTENER")
        self.timers = Timers()
        self.sessions: set[Session] = set()
        self.per_ip: dict[str, int] = {}
        self.procs: set[Proc] = set()  # pre-login processes and TLS helpers still running
        self.workers: set[Worker] = set()  # identity workers still running
        self.open: dict[tuple[Any, ...], list[Worker]] = {}  # those taking sessions, by sharing key
        self.queue: deque[tuple[Session, Login]] = deque()  # logins waiting for a check slot
        self.holds: dict[Session, socket.socket] = {}  # session_support: each session holder's end
        self.checking = 0
        self.generation = 0
        self.serials = itertools.count(1)
        self.stop_asked = self.reload_asked = self.stopping = False
        self.deadline = 0.0
        self.exit_code = 0
        # who/kick and sd_notify (ops/): set by cli.py after this constructor, so neither the
        # checker nor the zygote ever holds them; (listening socket, admin gid) or None
        self._control: Any = None
        self.uploads: BrokerUploads | None = None  # quotas and upload_hook (ops/brokered.py)

    # ------------------------------------------------------------------ the loop

    def serve(self, ready: Callable[[], None] | None = None) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        # what the zygote or the checker leaves behind when it dies comes to us, and is reaped
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
        wake_r, _ = self._wake = wake_on_signals()  # a signal (an ended child too) wakes the loop at once
        self.sel = selectors.DefaultSelector()
        for sock in self.sockets:
            sock.setblocking(False)
            self._watch(sock, functools.partial(self._accept, sock))
        self._watch(wake_r, functools.partial(drain, wake_r))
        self._watch(self.zygote, self._zygote_died)
        self._start_ops()
        self._start_state()
        self._start_uploads()
        if self.site.cfg.proxy_protocol_enable:
            self._start_proxy()  # before the first accept
        self._ops_tick()
        if ready:
            ready()
        if self.notifier is not None and self.notifier.enabled:
            self.notifier.ready(len(self.sessions))
            self._notify_tick()
        while True:
            if self.stop_asked and not self.stopping:
                self._begin_stop()
            if self.reload_asked and not self.stopping:
                self._reload()
            self._reap_checker()
            self._pump()  # here, not where a session ends: a new checker is forked with no client socket open
            if self.stopping and (not (self.procs or self.workers) or time.monotonic() >= self.deadline):
                break
            for key, _ in self.sel.select(self.timers.wait(1.0)):
                self._run(*key.data)
            for timer in self.timers.due():
                self._run(timer.fn, timer.owner)
        return self._finish()

    def _watch(self, obj: Any, fn: Callable[[], None], owner: Owner = None,
               events: int = selectors.EVENT_READ) -> None:
        assert self.sel is not None
        self.sel.register(obj, events, (fn, owner))

    def _forget(self, obj: Any) -> None:
        """Stop watching `obj` (registered or not) and close it."""
        if self.sel is not None:
            try:
                self.sel.unregister(obj)
            except (KeyError, ValueError):
                pass
        if isinstance(obj, int):
            os.close(obj)
        else:
            obj.close()

    def _run(self, fn: Callable[[], None], owner: Owner) -> None:
        """One callback; what goes wrong in it ends its session (or worker), never the broker."""
        try:
            fn()
        except ChannelClosed:
            self._end_owner(owner, None)
        except ChannelError as e:
            self._end_owner(owner, str(e) or type(e).__name__)
        except Exception as e:
            log.exception("broker: %s", e)
            self._end_owner(owner, "internal error")

    def _end_owner(self, owner: Owner, why: str | None) -> None:
        if isinstance(owner, Session):
            self._end(owner, why)
        elif isinstance(owner, Worker):  # its admission channel ended or broke the protocol
            if why:
                log.warning("identity worker %d: %s", owner.proc.pid, why)
            self._close_admission(owner)
            self._retire(owner)

    def _on_stop(self, _signum: int, _frame: Any) -> None:
        self.stop_asked = True

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload_asked = True

    # ------------------------------------------------------------------ accept

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(BURST):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:  # EMFILE and the like: the next wake-up tries again
                log.warning("accept: %s", e)
                return
            if self.site.cfg.proxy_protocol_enable:
                self._ask_proxy(conn, peer[0])  # kept until its header is read
                continue
            with conn:  # passed on or refused: never kept here
                self._start(conn, peer[0])

    def _start(self, conn: socket.socket, ip: str, declared: ProxyDeclared | None = None) -> None:
        """`ip`: the client's address (with proxy_protocol_enable the declared one, `declared`)."""
        cfg = self.site.cfg
        max_clients, max_per_ip = int(cfg.max_clients or 0), int(cfg.max_per_ip or 0)
        refusal = None
        if self.site.bans is not None and self.site.bans.is_banned(ip):
            refusal = BANNED
        elif max_clients and len(self.sessions) >= max_clients:
            refusal = TOO_MANY
        elif max_per_ip and self.per_ip.get(ip, 0) >= max_per_ip:
            refusal = TOO_MANY_FROM_YOU
        if refusal:
            _say(conn, refusal)
            return
        try:
            ino = os.fstat(conn.fileno()).st_ino
            local_ip = conn.getsockname()[0]
            conn.setblocking(True)
        except OSError:  # the client is gone already
            return
        spawn = SpawnPrelogin()
        if declared is not None and declared.client_ip:
            spawn = SpawnPrelogin(ip, declared.client_port, declared.server_ip, declared.server_port)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, pidfd = self.zygote.spawn_prelogin(conn, theirs, spawn)
        except SpawnRefused as e:
            log.warning("no pre-login process for %s: %s", ip, e)
            mine.close()
            return
        except ChannelError:
            mine.close()
            self._zygote_died()
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        proc = Proc(pid, pidfd)
        sid = f"{pid}.{next(self.serials)}"
        s = Session(sid, self.site, ip, local_ip, ino, Channel(mine), proc, LogRelay(self.site.events, ip, sid))
        if declared is not None:
            s.advertise = declared.server_ip
        self.sessions.add(s)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self._watch_proc(s)
        self._watch(s.chan, functools.partial(self._on_session, s), s)

    def _watch_proc(self, s: Session) -> None:
        """The session's pre-login process (later its TLS helper): gone when its pidfd is readable."""
        proc = s.proc
        self.procs.add(proc)

        def exited() -> None:
            self.procs.discard(proc)
            seccomp.report_sigsys(proc.pid, proc.pidfd)
            self._forget(proc.pidfd)
            proc.pidfd = -1
            if s.phase is Phase.ADMIT:
                self._admit_held(s)

        self._watch(proc.pidfd, exited, s)

    # ------------------------------------------------------------------ PROXY protocol (proxy_protocol_enable)

    def _trusted_sources(self) -> TrustedSources | None:
        """proxy_protocol_from (parsed once per text by trusted_from); None: trust nobody."""
        try:
            return trusted_from(self.site.cfg)
        except ValueError as e:  # checked at start; a SIGHUP may bring a bad one
            log.warning("%s: every PROXY connection is refused", e)
            return None

    def _ask_proxy(self, conn: socket.socket, peer: str) -> None:
        """A connection that must start with a PROXY header: refused (closed, no reply) unless
        its peer is a trusted balancer; else a dup goes to ftpwarden-proxy and this copy waits."""
        trusted = self._trusted_sources()
        if trusted is None or peer not in trusted:
            self._proxy_refused(conn, peer, "not in proxy_protocol_from")
            return
        max_clients = int(self.site.cfg.max_clients or 0)
        if max_clients and len(self.sessions) >= max_clients:  # early: no header read for nothing
            with conn:
                _say(conn, TOO_MANY)
            return
        proxy, why = self.proxy, ""
        if proxy is None:
            why = "the PROXY header reader is not running"
        elif proxy.full():
            why = "too many PROXY headers are being read"
        else:
            try:
                token, pending = proxy.ask(conn, peer)
            except BlockingIOError:
                why = "the PROXY header reader's channel is full"
            except ChannelError:
                why = "the PROXY header reader is gone"
                self._proxy_ended(proxy, "its channel closed")
            else:
                pending.timer = self.timers.after(HEADER_WAIT + ANSWER_GRACE,
                                                  functools.partial(self._proxy_late, proxy, token))
                return
        self._proxy_refused(conn, peer, why)

    def _proxy_refused(self, conn: socket.socket, peer: str, why: str) -> None:
        """Closed before any reply: one warning with the balancer's address, and a CONNECT refused
        event, both written before the close can be seen."""
        shown = host_addr(peer)
        log.warning("%s: connection refused: %s", shown, why)
        if self.site.events is not None:
            self.site.events.connect_refused("-", shown, f"refused: {why}")
        conn.close()

    def _on_proxy(self, proxy: ProxyLink) -> None:
        """ftpwarden-proxy's answers: each pending connection starts its session, or is closed."""
        if self.proxy is not proxy:
            return
        try:
            for pending, msg in proxy.answers():
                self._proxied(pending, msg)
        except ChannelClosed:
            self._proxy_ended(proxy, "its channel closed")
        except ChannelError as e:
            self._proxy_ended(proxy, f"it broke the protocol: {e}")

    def _proxied(self, pending: Pending, msg: ProxyDeclared) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        conn = pending.conn
        if not msg.ok:
            self._proxy_refused(conn, pending.peer, f"PROXY header: {msg.why}")
            return
        try:  # the reader is unprivileged: what it says is checked
            ip = checked_ip(msg.client_ip) if msg.client_ip else pending.peer  # LOCAL: the balancer
            server = checked_ip(msg.server_ip) if msg.server_ip else ""
        except ValueError:
            self._proxy_refused(conn, pending.peer, "PROXY header: the reader declared no address")
            return
        with conn:
            if not self.stopping:
                self._start(conn, ip, ProxyDeclared(msg.token, True, ip if msg.client_ip else "",
                                                    msg.client_port, server, msg.server_port, ""))

    def _proxy_late(self, proxy: ProxyLink, token: int) -> None:
        pending = proxy.drop(token)
        if pending is not None:
            self._proxy_refused(pending.conn, pending.peer, f"no answer on its PROXY header within "
                                                            f"{HEADER_WAIT + ANSWER_GRACE:g} s")

    def _start_proxy(self) -> None:
        """Have the zygote fork ftpwarden-proxy (a heap that never held a password)."""
        self.proxy_restart = None
        if self.stopping or self.proxy is not None:
            return
        self.proxy_started = time.monotonic()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, pidfd = self.zygote.spawn_proxy(theirs)
        except SpawnRefused as e:
            mine.close()
            log.warning("no PROXY header reader: %s", e)
            self._proxy_later()
            return
        except ChannelError:
            mine.close()
            self._zygote_died()
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        proxy = self.proxy = ProxyLink(pid, pidfd, Channel(mine))
        self._watch(proxy, functools.partial(self._on_proxy, proxy))
        self._watch(pidfd, functools.partial(self._proxy_ended, proxy, "it exited"))

    def _proxy_later(self) -> None:
        """Start it again, at most once per RESTART_GAP (one that cannot start does not spin)."""
        if self.stopping or self.proxy is not None or self.proxy_restart is not None:
            return
        wait = max(0.0, self.proxy_started + RESTART_GAP - time.monotonic())
        self.proxy_restart = self.timers.after(wait, self._start_proxy)

    def _proxy_ended(self, proxy: ProxyLink, why: str) -> None:
        """It exited, or its channel broke: the connections it was reading for are closed."""
        if self.proxy is not proxy:
            return
        if why == "it exited":
            try:  # what it answered before it died still counts
                for pending, msg in proxy.answers():
                    self._proxied(pending, msg)
            except ChannelError:
                pass
            seccomp.report_sigsys(proxy.pid, proxy.pidfd)
        self._stop_proxy()
        print(f"ftpwarden: the PROXY header reader ended ({why}); starting a new one", file=sys.stderr)
        self._proxy_later()

    def _stop_proxy(self) -> None:
        proxy, self.proxy = self.proxy, None
        if self.proxy_restart is not None:
            self.proxy_restart.cancel()
            self.proxy_restart = None
        if proxy is None:
            return
        if self.sel is not None:
            for obj in (proxy, proxy.pidfd):
                try:
                    self.sel.unregister(obj)
                except (KeyError, ValueError):
                    pass
        try:
            signal.pidfd_send_signal(proxy.pidfd, signal.SIGKILL)  # it holds nothing worth a goodbye
        except OSError:
            pass
        os.close(proxy.pidfd)
        left = proxy.close()
        for pending in left:
            if pending.timer is not None:
                pending.timer.cancel()
            pending.conn.close()
        if left:
            log.warning("PROXY: %d connection(s) waiting for their header closed", len(left))

    # ------------------------------------------------------------------ a session's channel

    def _on_session(self, s: Session) -> None:
        chan = s.chan
        for _ in range(BURST):
            if s not in self.sessions or s.chan is not chan or chan.fileno() < 0:
                return  # ended, or handed over: this channel is closed
            expected, max_fds = EXPECTED[s.phase]
            try:
                msg, fds = chan.recv(*expected, *LOG_EVENTS, max_fds=max_fds)
            except BlockingIOError:
                return
            except ChannelClosed:
                self._end(s)
                return
            except ChannelError as e:
                raise ChannelError(f"{e} ({s.phase.value})") from None
            if isinstance(msg, LOG_EVENTS):
                for fd in fds:
                    os.close(fd)
                if fds:
                    raise ChannelError("a log event carries no descriptor")
                s.relay.handle(msg)
            elif isinstance(msg, Handover):
                self._handover(s, msg, fds)
            elif isinstance(msg, ChownUpload):
                try:
                    self._request(s)
                    if len(fds) != 1:
                        raise ChannelError("ChownUpload needs exactly one descriptor")
                    self._send(s, chown_upload(s.site.cfg, fds[0], s.account))
                finally:
                    for fd in fds:
                        os.close(fd)
            else:
                for fd in fds:
                    os.close(fd)
                if fds:
                    raise ChannelError(f"{type(msg).__name__} carries no descriptor")
                if isinstance(msg, Login):
                    self._login(s, msg)
                elif isinstance(msg, ActiveDataSocket):
                    self._request(s)
                    self._active_socket(s, msg)
                elif isinstance(msg, PassiveListen):
                    self._request(s)
                    self._passive_listen(s)
                elif isinstance(msg, RateGrant):
                    self._request(s)
                    self._send(s, rate_wait(s.site.account_rates, s.reserve, msg))
                elif isinstance(msg, UPLOAD_REQUESTS) and self.uploads is not None:  # quotas, upload_hook
                    self._request(s)
                    self.uploads.handle(s, msg, self._answer_upload)

    def _ops_tick(self) -> None:
        """metrics_listen: a snapshot of the session table and counters for the
        ftpwarden-ops process (ops/process.py, set by cli.py), once a second."""
        feed = self.ops_feed
        if feed is None or self.stopping:
            return
        feed.send(self.site.events, {  # each kind's memory (ftpwarden_memory_resident_bytes)
            "broker": [os.getpid()], "zygote": [self.zygote.pid],
            "checker": [self.checker.pid] if self.checker is not None and self.checker.pid else [],
            "session": [p.pid for p in self.procs] + [w.proc.pid for w in self.workers]})
        self.timers.after(1.0, self._ops_tick)

    def _request(self, s: Session) -> None:
        """One request at a time: its answer is not tagged, so a second is out of order."""
        if s.connecting is not None:
            raise ChannelError("a request while an active connect is under way")

    def _send(self, s: Session, msg: Message, fds: tuple[int, ...] = ()) -> None:
        try:
            s.chan.send(msg, fds)
        except BlockingIOError:  # a worker that does not read its answers
            raise ChannelError("the session's channel is full") from None

    def _end(self, s: Session, why: str | None = None) -> None:
        """The session is over for the broker: its counts go, its channel closes."""
        if s not in self.sessions:
            return
        self.sessions.discard(s)
        if self.uploads is not None:
            self.uploads.forget(s)
        table = getattr(getattr(self.site.events, "ops", None), "table", None)  # ops/: its worker may have died
        if table is not None:
            table.disconnect(s.sid)
        left = self.per_ip.get(s.remote_ip, 1) - 1
        if left > 0:
            self.per_ip[s.remote_ip] = left
        else:
            self.per_ip.pop(s.remote_ip, None)
        if why:
            log.warning("session %s (%s) ended: %s", s.sid, s.remote_ip, why)
        self._forget(s.chan)
        self._release(s)
        if s.timer is not None:
            s.timer.cancel()
        if s.check is not None:
            self._stop_check(s).detach()
        elif s.phase is Phase.CHECK:  # waiting for a slot: its password goes now
            self.queue = deque(entry for entry in self.queue if entry[0] is not s)
        if s.connecting is not None:
            self._forget(s.connecting)
            s.connecting = None
        if s.held is not None:
            s.held[1].close()
            s.held = None
        if s.worker is not None:
            s.worker.sessions.discard(s)
            self._idle(s.worker)
        if why and s.phase is not Phase.POST:
            s.proc.kill()  # a pre-login process that broke the protocol: at once
        elif s.proc.alive:
            self.timers.after(EXIT_GRACE, s.proc.kill)  # it exits on its own (its client or peer is gone)

    # ------------------------------------------------------------------ login

    def _login(self, s: Session, msg: Login) -> None:
        s.phase, s.user, s.tls_claimed, s.started = Phase.CHECK, msg.user, msg.tls_protected, time.monotonic()
        if not login_checkable(msg):
            self._decide(s, None)
        elif self.checker is None:
            try:
                account = s.site.authenticate(msg.user, msg.password, s.remote_ip)
            except LoginUnavailable as e:
                self._unavailable(s, e.reason)
                return
            except Exception:  # an authenticator bug refuses the login, never grants it
                account = None
            self._decide(s, account)
        elif self.checking < CHECKS_AT_ONCE:
            self._start_check(s, msg)
        else:  # the wait depends on the load alone, known user or not
            self.queue.append((s, msg))
            s.timer = self.timers.after(CHECK_QUEUE_WAIT, functools.partial(self._queue_waited, s), s)

    def _start_check(self, s: Session, msg: Login) -> None:
        assert self.checker is not None
        client = self.checker.connect()
        if not client.ask(msg.user, msg.password, s.remote_ip):
            self._decide(s, None)
            return
        s.check = client
        self.checking += 1
        assert client.chan is not None
        self._watch(client.chan, functools.partial(self._on_check, s), s)
        s.timer = self.timers.after(ANSWER_WAIT, functools.partial(self._check_late, s), s)

    def _stop_check(self, s: Session) -> CheckerClient:
        client, s.check = s.check, None
        assert client is not None and self.sel is not None
        if client.chan is not None:
            self.sel.unregister(client.chan)
        self.checking -= 1
        if s.timer is not None:
            s.timer.cancel()
        return client

    def _on_check(self, s: Session) -> None:
        if s.check is None:
            return
        client = self._stop_check(s)
        try:
            account = client.answer()
        except LoginUnavailable as e:
            self._pump()
            self._unavailable(s, e.reason)
            return
        if client.held is not None:  # session_support: until the session ends
            self._hold(s, client.held)
            client.held = None
        self._pump()
        self._decide(s, account)

    def _hold(self, s: Session, held: socket.socket) -> None:
        """session_support: the session holder's end (priv/sessionrec.py), closed when the
        session ends; readable only if the holder died (its records ended then)."""
        self._release(s)
        self.holds[s] = held

        def gone() -> None:
            if self.holds.get(s) is held:
                log.warning("session %s (%s): its PAM session holder ended", s.sid, s.remote_ip)
                self._release(s)

        self._watch(held, gone)

    def _release(self, s: Session) -> None:
        if (held := self.holds.pop(s, None)) is not None:
            self._forget(held)

    def _check_late(self, s: Session) -> None:
        if s.check is not None:
            self._stop_check(s).detach()
            self._pump()
            self._decide(s, None)

    def _queue_waited(self, s: Session) -> None:
        self.queue = deque(entry for entry in self.queue if entry[0] is not s)
        self._decide(s, None)

    def _pump(self) -> None:
        """Start the checks waiting for a slot (a check may fork a new checker: see serve)."""
        while self.checking < CHECKS_AT_ONCE and self.queue:
            s, msg = self.queue.popleft()
            if s in self.sessions and s.phase is Phase.CHECK and s.check is None:
                if s.timer is not None:
                    s.timer.cancel()
                self._start_check(s, msg)

    def _decide(self, s: Session, account: Principal | None) -> None:
        if s not in self.sessions:
            return
        cfg = s.site.cfg
        if account is not None and (why := login_refusal(cfg, Login(s.user, "", s.tls_claimed), account)):
            log.warning("login %s refused by the broker: %s", s.user, why)
            account = None
        s.relay.login(s.user, account)
        if account is None:
            self._release(s)
            # counted toward a ban now; answered delay_failed_login after the Login came
            delay = login_failed(self.site.bans, s.remote_ip, self.site.events, s.started,
                                 float(cfg.delay_failed_login or 0), time.monotonic())
            s.phase = Phase.ANSWER
            s.timer = self.timers.after(delay, functools.partial(self._refuse, s), s)
            return
        s.account = account
        pause = float(cfg.delay_successful_login or 0)
        if pause > 0:  # delay_successful_login: a timer, the loop goes on meanwhile
            s.phase = Phase.ANSWER
            s.timer = self.timers.after(pause, functools.partial(self._grant, s), s)
            return
        self._grant(s)

    def _unavailable(self, s: Session, reason: str) -> None:
        """No decision (the user database cannot be reached): the pre-login process
        answers 421 and hangs up.  Not a failed login: no ban counted, no delay."""
        if s not in self.sessions:
            return
        log.warning("login %s from %s: 421, the user database cannot be reached: %s", s.user, s.remote_ip, reason)
        s.relay.login(s.user, None, reason)  # the logs' FAIL LOGIN line, as in pooled mode (no ban counted)
        s.phase = Phase.LEAVING
        self._send(s, messages.LoginUnavailable())
        s.timer = self.timers.after(EXIT_GRACE, s.proc.kill)

    def _grant(self, s: Session) -> None:
        if s not in self.sessions or s.account is None:
            return
        s.phase = Phase.HANDOVER
        self._send(s, LoginOk(s.account.name, s.account.user_class.value))

    def _refuse(self, s: Session) -> None:
        if s not in self.sessions:
            return
        self._send(s, LoginFailed())
        s.fails += 1
        if s.fails < max(1, int(s.site.cfg.max_login_fails or 3)):
            s.phase = Phase.LOGIN
            return
        # it answers this last failure with its 530 and hangs up: the moment to do so, then killed
        s.phase = Phase.LEAVING
        s.timer = self.timers.after(EXIT_GRACE, s.proc.kill)

    # ------------------------------------------------------------------ handover and admission

    def _handover(self, s: Session, msg: Handover, fds: list[int]) -> None:
        socks: list[socket.socket] = []
        try:
            for fd in list(fds):
                try:
                    socks.append(socket.socket(fileno=fd))
                except OSError:
                    raise ChannelError("a Handover descriptor is not a socket") from None
                fds.remove(fd)
            check_handover(s.ino, msg, socks)
            self._forget(s.chan)  # the pre-login process has nothing more to ask
            if self.stopping:
                raise ChannelClosed("stopping")
            if msg.tls_protected:  # it stays as the TLS helper, the one reader of the client's socket
                self._admit(s, msg, socks[0], socks[1])
                return
            # Plain text: it exits now, and until it has, it could still read the
            # client's next command; the identity worker gets the socket after.
            s.phase, s.held = Phase.ADMIT, (msg, socks.pop())
            s.timer = self.timers.after(EXIT_GRACE, s.proc.kill)
            if not s.proc.alive:
                self._admit_held(s)
        finally:
            for fd in fds:
                os.close(fd)
            for sock in socks:
                sock.close()

    def _admit_held(self, s: Session) -> None:
        if s.held is None or s not in self.sessions:
            return
        (msg, control), s.held = s.held, None
        if s.timer is not None:
            s.timer.cancel()
        try:
            if self.stopping:  # its pre-login process said 421 on the way out
                raise ChannelClosed("stopping")
            self._admit(s, msg, control, None)
        finally:
            control.close()

    def _admit(self, s: Session, msg: Handover, control: socket.socket, tls_chan: socket.socket | None) -> None:
        account = s.account
        assert account is not None and account.uid is not None and account.gid is not None
        cfg = s.site.cfg
        if line := root_refusal(cfg, account):
            try:  # one fixed line to the client (or the TLS helper): never a read
                control.setblocking(False)
                control.send(line)
            except OSError:
                pass
            self._end(s)
            return
        groups: tuple[int, ...] = ()
        if account.user_class.value == "real":
            groups = tuple(os.getgrouplist(pwd.getpwuid(account.uid).pw_name, account.gid))
        identity = Identity(account.uid, account.gid, groups, account.root, account.chroot)
        key = (identity, account.grants, account.umask, self.generation)
        admit = Admit(account.name, account.user_class.value, account.root,
                      ",".join(sorted(p.value for p in account.grants)), account.umask, account.anon_password,
                      account.uid, account.gid, account.chroot, account.start_dir, msg.pending,
                      msg.tls_protected, msg.tls_pbsz, msg.tls_prot_private, s.local_ip, s.remote_ip, s.sid,
                      s.advertise)
        s.relay.logged_in(account)  # from now on the user in every line is the account's
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = (control.fileno(), theirs.fileno(), *([tls_chan.fileno()] if tls_chan is not None else []))
            worker = self._admitted(key, identity, admit, fds)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        s.chan, s.phase, s.worker = Channel(mine), Phase.POST, worker
        self._watch(s.chan, functools.partial(self._on_session, s), s)
        worker.sessions.add(s)
        if worker.linger is not None:
            worker.linger.cancel()
            worker.linger = None
        if s.site.account_rates is not None:  # user_max_rate: booked on this session's account only
            s.reserve = s.site.account_rates.reserve_for(account.name)
        if cfg.session_isolation == "process":
            self._retire(worker)  # one session each: it takes no other

    def _admitted(self, key: tuple[Any, ...], identity: Identity, admit: Admit, fds: tuple[int, ...]) -> Worker:
        """Admit into an open worker of `key` with room, else a new one; the worker that took it."""
        room = int(self.site.cfg.identity_sessions_max or 256)
        for fresh in (False, True):
            worker = None if fresh else next((w for w in self.open.get(key, []) if len(w.sessions) < room), None)
            if worker is None:
                worker = self._spawn_worker(key, identity)
            assert worker.admission is not None
            try:
                worker.admission.send(admit, fds)
                return worker
            except BlockingIOError:  # it does not keep up: no more sessions there
                self._retire(worker)
            except ChannelClosed:  # it is gone
                self._close_admission(worker)
                self._retire(worker)
        raise ChannelError("no identity worker took the session")

    def _spawn_worker(self, key: tuple[Any, ...], identity: Identity) -> Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, pidfd = self.zygote.spawn_identity(identity, theirs)
        except SpawnRefused as e:
            mine.close()
            raise ChannelError(f"no identity worker: {e}") from None
        except ChannelError:
            mine.close()
            self._zygote_died()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        worker = Worker(key, Proc(pid, pidfd), Channel(mine), LogRelay(self.site.events, "-", f"worker.{pid}"))
        self.workers.add(worker)
        self.open.setdefault(key, []).append(worker)
        self._watch(worker.admission, functools.partial(self._on_admission, worker), worker)
        self._watch(pidfd, functools.partial(self._worker_exited, worker))
        return worker

    def _on_admission(self, w: Worker) -> None:
        """A worker says only LogNotice here; anything else, or EOF, and it gets no more sessions."""
        for _ in range(BURST):
            if w.admission is None:
                return
            try:
                msg, _ = w.admission.recv(LogNotice)  # EOF or another kind: ChannelError
            except BlockingIOError:
                return
            w.relay.handle(msg)

    def _retire(self, w: Worker) -> None:
        """No new session for `w`.  Its admission channel, where its own warnings
        come, closes once its last session has ended: then it exits."""
        if not w.retired:
            w.retired = True
            peers = self.open.get(w.key, [])
            if w in peers:
                peers.remove(w)
            if not peers:
                self.open.pop(w.key, None)
        if w.linger is not None:
            w.linger.cancel()
            w.linger = None
        self._idle(w)

    def _close_admission(self, w: Worker) -> None:
        if w.admission is not None:
            self._forget(w.admission)
            w.admission = None

    def _idle(self, w: Worker) -> None:
        if w.sessions:
            return
        if not w.retired:
            if w.linger is None:
                w.linger = self.timers.after(IDENTITY_LINGER, functools.partial(self._retire, w), w)
            return
        self._close_admission(w)
        if w.proc.alive:
            self.timers.after(EXIT_GRACE, w.proc.kill)

    def _worker_exited(self, w: Worker) -> None:
        """Its pidfd is readable: every session it hosted is over."""
        self._retire(w)
        self._close_admission(w)
        self.workers.discard(w)
        seccomp.report_sigsys(w.proc.pid, w.proc.pidfd)
        self._forget(w.proc.pidfd)
        w.proc.pidfd = -1
        for s in list(w.sessions):
            self._end(s)

    # ------------------------------------------------------------------ post-login requests

    def _active_socket(self, s: Session, msg: ActiveDataSocket) -> None:
        port = active_source_port(s.site.cfg, msg, s.remote_ip)
        try:
            sock = active_socket(msg.host, s.local_ip, port)
        except OSError as e:
            self._send(s, Refused(_reason(e)))
            return
        try:
            sock.setblocking(False)
            err = sock.connect_ex((msg.host, msg.port))
        except OSError as e:
            sock.close()
            self._send(s, Refused(_reason(e)))
            return
        if err == errno.EINPROGRESS:
            s.connecting = sock
            self._watch(sock, functools.partial(self._connected, s), s, selectors.EVENT_WRITE)
            s.timer = self.timers.after(float(s.site.cfg.connect_timeout or 60),
                                        functools.partial(self._connected, s, errno.ETIMEDOUT), s)
            return
        s.connecting = sock
        self._connected(s, err)

    def _passive_listen(self, s: Session) -> None:
        """isolate_network: a listener on the session's own local address at a port of
        its range (bind_retries tries), passed to the session and closed here; or Refused."""
        try:
            sock = passive_listener(s.site.cfg, s.local_ip)
        except OSError as e:
            self._send(s, Refused(_reason(e)))
            return
        try:
            self._send(s, DataSocket(), (sock.fileno(),))
        finally:
            sock.close()

    def _connected(self, s: Session, err: int | None = None) -> None:
        sock, s.connecting = s.connecting, None
        if sock is None:
            return
        if s.timer is not None:
            s.timer.cancel()
        try:
            if self.sel is not None and sock.fileno() in self.sel.get_map():
                self.sel.unregister(sock)
            if err is None:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._send(s, Refused(os.strerror(err)))
            else:
                self._send(s, DataSocket(), (sock.fileno(),))
        finally:
            sock.close()

    # ------------------------------------------------------------------ SIGHUP, the end

    def _reload(self) -> None:
        self.reload_asked = False
        if self.notifier is not None:  # sd_notify: RELOADING=1 now, READY=1 when done (kept or new)
            self.notifier.reloading()
        try:
            self._load_again()
        finally:
            if self.notifier is not None:
                self.notifier.ready(len(self.sessions))

    def _load_again(self) -> None:
        try:
            old, self.site = self.site, self.load()
        except Exception as e:  # a broken file keeps the old config running
            print(f"ftpwarden: SIGHUP: keeping the old configuration: {e}", file=sys.stderr)
            return
        if old.events is not None and old.events is not self.site.events:
            events = self.site.events if self.site.events is not None else EventLog()
            for relay in [s.relay for s in self.sessions] + [w.relay for w in self.workers]:
                relay.events = events  # the files now configured; the old ones close
            old.events.close()
        if self.checker is not None:
            self.checker.reload()  # the checker reads the user DB again itself
        try:
            self.zygote.reload()
        except ChannelError:
            self._zygote_died()
        self.generation += 1
        for w in list(self.workers):
            self._retire(w)  # they keep their sessions under the old config, take no new ones
        if self.site.cfg.proxy_protocol_enable:
            self._proxy_later()  # turned on now: started (a running one reads on)
        if self.state is not None:  # the ban list may be a new one (ban_threshold turned on)
            self.state.attach(self.site.bans)
        print("ftpwarden: configuration re-read; new sessions use it", file=sys.stderr)

    def _zygote_died(self) -> None:
        if self.exit_code == 0:
            print("ftpwarden: the zygote ended; stopping (its processes end with it)", file=sys.stderr)
        self.exit_code = 1
        self._forget(self.zygote)
        self.stop_asked = True

    def _begin_stop(self) -> None:
        """Stop accepting; every child is asked to say 421 and exit."""
        self.stopping = True
        self.deadline = time.monotonic() + STOP_WAIT
        if self.notifier is not None:
            self.notifier.stopping()
        if self._control is not None:
            self._control.close()
            self._control = None
        for sock in self.sockets:
            self._forget(sock)
        self._stop_proxy()  # the connections waiting for their header close too
        self.queue.clear()
        for s in self.sessions:
            if s.phase is not Phase.POST:
                s.proc.signal(signal.SIGTERM)
        for w in list(self.workers):
            self._retire(w)
            w.proc.signal(signal.SIGTERM)
        self.timers.after(HELPER_STOP, self._stop_helpers)

    def _stop_helpers(self) -> None:
        for proc in self.procs:
            proc.signal(signal.SIGTERM)

    def _finish(self) -> int:
        signal.set_wakeup_fd(-1)
        self._stop_proxy()
        for proc in [*self.procs, *(w.proc for w in self.workers)]:
            proc.kill()
        for s in list(self.sessions):
            self._end(s)
        if self.sel is not None:
            for key in list(self.sel.get_map().values()):
                self._forget(key.fileobj)  # the wake-up pipe's read end too
            self.sel.close()
            self.sel = None
        os.close(self._wake[1])
        self._wake = ()
        if self.state is not None:
            self.state.close()  # it exits on this (and with the zygote, below)
        self.zygote.close()  # it exits on this; what it forked is gone already
        end_child(self.zygote.pid, STOP_WAIT)
        if self.checker is not None:
            pid = self.checker.pid
            self.checker.close()  # with no session left, the checker ends on this
            end_child(pid, STOP_WAIT)
        return self.exit_code

    def _reap_checker(self) -> None:
        """Reap our children (the checker, an older one, the zygote, orphans of
        the two); start a new checker if it died."""
        for pid in reap_exited():
            if self.checker is not None and self.checker.ended(pid):
                print("ftpwarden: the password checker ended; starting a new one", file=sys.stderr)
        if self.checker is not None and not self.stopping:
            self.checker.ensure()  # it died: a new one (meanwhile logins are refused)

    def _close_in_child(self) -> None:
        """Run first in a process forked from here (the checker, the zygote): it
        holds none of the broker's descriptors (their copies close, ours stay)."""
        if self.proxy is not None:  # client sockets waiting for their header: in no selector
            for pending in self.proxy.pending.values():
                pending.conn.close()
        for sock in self.sockets:
            sock.close()
        if self.ops_feed is not None:
            self.ops_feed.close()
        if self.state is not None:
            self.state.close()
        control, notifier = self.control, self.notifier
        if control is not None:
            control[0].close()
        if notifier is not None:
            notifier.close()
        signal.set_wakeup_fd(-1)
        if self.sel is not None:
            for key in list(self.sel.get_map().values()):
                obj: Any = key.fileobj  # sockets, channels, the zygote's handle, pidfds, the wake-up pipe
                if isinstance(obj, int):
                    os.close(obj)
                else:
                    obj.close()
            self.sel.close()
            self.sel = None
            os.close(self._wake[1])
        self._wake = ()

    def _close_in_zygote(self) -> None:
        """Also the checker's control channel, our log files and shared tables: the
        zygote loads its own site, and what it forks must hold none of ours."""
        self._close_in_child()
        if self.checker is not None:
            self.checker.close()
        if self.site.events is not None:
            self.site.events.close()
        for table in (self.site.bans, self.site.account_rates):
            if table is not None:
                table.detach()


    # ------------------------------------------------------------------ who, kick, sd_notify (ops/)

    def _start_uploads(self) -> None:
        """Quotas and upload_hook: the usage kept here; the hook runner forked now, before
        the first accept (cli.py checked the settings, `BrokerUploads` raises on a bad one)."""
        self.uploads = BrokerUploads(self.site.cfg)
        runner = self.uploads.start_runner()
        if runner is not None:
            def answers() -> None:
                if self.uploads is not None and not self.uploads.on_runner():
                    self._forget(runner)
                    self.uploads.runner = None
            self._watch(runner, answers)

    def _answer_upload(self, s: Session, msg: Message) -> None:
        if s in self.sessions and s.chan.fileno() >= 0:
            try:
                self._send(s, msg)
            except ChannelError as e:
                self._end(s, str(e))

    def _start_ops(self) -> None:
        if self.control is not None:
            from ..ops.control import SelectorControl
            sock, group = self.control

            def unwatch(obj: Any) -> None:
                if self.sel is not None:
                    try:
                        self.sel.unregister(obj)
                    except (KeyError, ValueError):
                        pass

            self._control = SelectorControl(sock, group, (self._who, self._kick),
                                            lambda obj, fn, events: self._watch(obj, fn, None, events),
                                            unwatch, lambda delay, fn: self.timers.after(delay, fn))

    def _start_state(self) -> None:
        """state_db_url: ftpwarden-state (started by cli.py; again here when it dies) gets
        each failed login and the accounts moving bytes; its bans and shares apply here."""
        if self.state is None:
            return
        self.state.attach(self.site.bans)
        self._state_tick()
        if self.state.chan is None:  # it could not be started at first: again in a moment
            self.timers.after(self.state.ended(), self._restart_state)
            return
        self._watch(self.state.chan, self._on_state)

    def _on_state(self) -> None:
        state = self.state
        if state.receive(self.site.bans, self.site.account_rates, self.site.events):
            return
        if state.chan is not None and self.sel is not None:
            self.sel.unregister(state.chan)
        self.timers.after(state.ended(), self._restart_state)

    def _restart_state(self) -> None:
        if self.stopping or self.state is None or self.state.chan is not None:
            return
        try:
            self.state.start(self.zygote.spawn_state)
        except ChannelError:
            self._zygote_died()
            return
        except OSError as e:  # SpawnRefused among them: tried again later
            log.warning("ftpwarden-state: not started: %s", e)
            self.timers.after(self.state.ended(), self._restart_state)
            return
        self._watch(self.state.chan, self._on_state)

    def _state_tick(self) -> None:
        if self.state is None or self.stopping:
            return
        if self.site.account_rates is not None:
            self.state.active(self.site.account_rates.recently_active())
        self.timers.after(0.5, self._state_tick)

    def _notify_tick(self) -> None:
        """STATUS= and WATCHDOG=1, from this loop: a broker stuck anywhere stops the pings."""
        if self.notifier is None or self.stopping:
            return
        self.notifier.tick(len(self.sessions))
        self.timers.after(self.notifier.period(), self._notify_tick)

    def _who(self) -> list[dict[str, Any]]:
        """The sessions: the ops table's rows (ops/table.py), else what the broker knows."""
        from ..ops.control import find_table
        live = {s.sid: s for s in self.sessions}
        table = find_table(self.site.events)
        rows = [r for r in table.snapshot() if r["id"] in live] if table is not None else []
        known = {r["id"] for r in rows}
        for sid, s in live.items():
            if sid not in known:
                account = s.account
                rows.append({"id": sid, "user": account.name if account is not None else s.user,
                             "class": account.user_class.value if account is not None else "",
                             "client": s.remote_ip, "since": None, "idle": None, "mode": "isolated",
                             "command": "" if s.phase is Phase.POST else "(logging in)",
                             "transfer": None})
        for r in rows:  # the broker's word on who it is, after login
            s = live[r["id"]]
            if s.account is not None:
                r["user"], r["class"] = s.account.name, s.account.user_class.value
        return rows

    def _kick(self, field: str, value: str) -> list[str]:
        """End the matching sessions: a logged-in one through its identity worker (Kick: it
        writes 421 and closes), one before login by its pre-login process (SIGTERM: 421)."""
        from ..ops.control import matches
        kicked = []
        live = {s.sid: s for s in self.sessions}
        for row in self._who():
            s = live.get(row["id"])
            if s is None or not matches(row, field, value):
                continue
            if s.phase is Phase.POST:
                w = s.worker
                if w is None or w.admission is None:
                    continue
                try:
                    w.admission.send(Kick(s.sid))
                except (BlockingIOError, ChannelError, OSError):
                    continue
            elif s.phase is Phase.ADMIT:  # between its two processes: nobody reads it; closed
                self._end(s, "kicked by the administrator")
            else:
                s.proc.signal(signal.SIGTERM)
            kicked.append(s.sid)
        return kicked


def _say(conn: socket.socket, line: bytes) -> None:
    """One fixed line to a client we refuse: never a read, never a wait."""
    try:
        conn.setblocking(False)
        conn.send(line)
    except OSError:
        pass


def _reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)
