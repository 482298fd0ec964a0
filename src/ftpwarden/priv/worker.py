"""The unprivileged halves of an isolated session: drop privileges, then run net.control.

pre-login:  nopriv_user, chrooted to secure_chroot_dir (empty), parses USER/PASS;
            a good login is handed over to the monitor and this process exits.
post-login: the account's uid/gid, chrooted to its root where the options say so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - asyncio.to_thread needs it; nothing can be imported after chroot
import errno
import grp
import logging
import os
import posixpath
import pwd
import signal
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..net import proctitle
from ..net.context import ServerContext
from ..net.control import ControlConnection, serve
from ..net.limits import MAX_WAIT, RateGrants
from ..net.tls import Contexts, handshake_deadline, make_context, wait_fd
from ..ops.hooks import Result
from ..ops.quota import Exceeded
from ..policy.auth.base import LoginRefused, LoginRequest, LoginUnavailable
from ..policy.hostsaccess import DENIED_REPLY, Verdict, check, rules_dir
from ..policy.rdns import bounded
from ..proto.actions import TlsState
from ..proto.framing import line_cap
from ..proto.principal import Principal, UserClass
from . import messages, seccomp
from .channel import Channel
from .creds import close_strays, drop_privileges, minimal_environment, set_parent_death_signal
from .logrelay import ForwardingEventLog, forward_logs
from .messages import (
    ActiveDataSocket,
    ChannelError,
    ChownUpload,
    DataSocket,
    Done,
    Handover,
    HookDone,
    LogHostsDenied,
    Login,
    LoginFailed,
    LoginOk,
    PassiveListen,
    QuotaAsk,
    QuotaGrant,
    QuotaLines,
    QuotaShow,
    QuotaUsed,
    RateGrant,
    RateWait,
    Refused,
    UploadHook,
)
from .tlshelper import TlsLink, serve_helper

__all__ = ["Site", "hosts_admitted", "prelogin", "postlogin", "WORKER_MEMORY_LIMIT"]

WORKER_MEMORY_LIMIT = 1 << 30  # address space a session process may add to what it inherits (threads reserve stacks)

log = logging.getLogger("ftpwarden.worker")


@dataclass
class Site:
    """What every session of a listener shares; prepared before any fork or jail."""

    cfg: Any
    authenticate: Callable[[str, str, str], Any]  # the monitor's check: -> account or None
    banner: str | None = None
    events: Any = None  # logs.events.EventLog with its files already open
    bans: Any = None  # net.bans.BanList: the listener and monitors only; workers detach it
    account_rates: Any = None  # net.limits.AccountRates (user_max_rate), shared by every session


class MonitorAuthenticator:
    """Pre-login: every password check is the monitor's."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.protected: Callable[[], bool] = lambda: False  # is the control connection under TLS now?

    def authenticate(self, req: LoginRequest) -> Principal:
        # the monitor re-checks force_*_logins_ssl against what we say here
        self.chan.send(Login(req.user, req.password, self.protected()))
        return self._answer()

    async def authenticate_async(self, req: LoginRequest) -> Principal:
        """The same without a thread: one small datagram out, then the loop waits
        for the answer (a thread per login costs more than the rest of it)."""
        self.chan.send(Login(req.user, req.password, self.protected()))
        await wait_fd(self.chan.fileno(), writing=False)
        return self._answer()

    def _answer(self) -> Principal:
        msg, _ = self.chan.recv(LoginOk, LoginFailed, messages.LoginUnavailable)
        if isinstance(msg, LoginFailed):
            raise LoginRefused("refused by the monitor")
        if isinstance(msg, messages.LoginUnavailable):  # 421 and the end (net/control.py)
            raise LoginUnavailable("the user database cannot be reached")
        assert isinstance(msg, LoginOk)
        # What the pre-login worker learns of a good login: who, and of which
        # class (for the log).  No grants: the monitor keeps the rest.
        return Principal(msg.name, UserClass(msg.user_class), root="/", grants=frozenset(), umask=0o077)


class MonitorBroker:
    """Post-login: the privileged things, asked of the monitor one at a time."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.lock = threading.Lock()  # asyncio.to_thread may call from several threads

    def active_socket(self, host: str, port: int) -> socket.socket:
        with self.lock:
            self.chan.send(ActiveDataSocket(host, port))
            msg, fds = self.chan.recv(DataSocket, Refused, max_fds=1)
        if isinstance(msg, Refused):
            raise ConnectionRefusedError(msg.reason)
        return socket.socket(fileno=fds[0])

    def passive_listen(self) -> socket.socket:
        """isolate_network: a listening socket for the next passive data connection."""
        with self.lock:
            self.chan.send(PassiveListen())
            msg, fds = self.chan.recv(DataSocket, Refused, max_fds=1)
        if isinstance(msg, Refused):
            raise OSError(errno.EADDRINUSE, msg.reason)
        if len(fds) != 1:
            raise OSError(errno.EPROTO, "the monitor answered PassiveListen without a socket")
        return socket.socket(fileno=fds[0])

    def rate_grant(self, nbytes: int) -> float:
        """user_max_rate: book `nbytes` on this session's account; seconds to wait before moving them."""
        with self.lock:
            self.chan.send(RateGrant(nbytes))
            msg, _ = self.chan.recv(RateWait)
        assert isinstance(msg, RateWait)
        return min(max(msg.micros, 0) / 1e6, MAX_WAIT)

    def chown_upload(self, fd: int) -> None:
        with self.lock:
            self.chan.send(ChownUpload(), (fd,))
            msg, _ = self.chan.recv(Done, Refused)
        if isinstance(msg, Refused):
            raise PermissionError(msg.reason)

    def quota_ask(self, new_file: bool, replaced: int, probe: bool = False) -> QuotaGrant:
        with self.lock:
            self.chan.send(QuotaAsk(new_file, replaced, probe))
            msg, _ = self.chan.recv(QuotaGrant)
        assert isinstance(msg, QuotaGrant)
        return msg

    def quota_used(self, nbytes: int, files: int) -> None:
        with self.lock:
            self.chan.send(QuotaUsed(nbytes, files))
            self.chan.recv(Done)

    def quota_show(self) -> str:
        with self.lock:
            self.chan.send(QuotaShow())
            msg, _ = self.chan.recv(QuotaLines)
        assert isinstance(msg, QuotaLines)
        return msg.text

    def upload_hook(self, path: str, size: int) -> HookDone:
        """Blocks until the broker answers: sync, after the program ran (bounded by its timeout)."""
        with self.lock:
            self.chan.send(UploadHook(path, size))
            msg, _ = self.chan.recv(HookDone)
        assert isinstance(msg, HookDone)
        return msg


class BrokerQuota:
    """Isolated mode's quota backend (ops/uploads.py): the broker keeps the usage and decides."""

    def __init__(self, broker: MonitorBroker) -> None:
        self.broker = broker
        self._applies: bool | None = None  # one session, one account: asked once

    def applies(self, account: Any) -> bool:
        if self._applies is None:
            self._applies = self.broker.quota_ask(False, 0, probe=True).applies
        return self._applies

    def grant(self, account: Any, *, new_file: bool, replaced: int) -> int | None:
        msg = self.broker.quota_ask(new_file, replaced)
        if msg.refused:
            raise Exceeded(msg.refused)
        return None if msg.left < 0 else msg.left

    def add(self, account: Any, dbytes: int, dfiles: int) -> None:
        self.broker.quota_used(dbytes, dfiles)

    def lines(self, account: Any) -> tuple[str, ...]:
        text = self.broker.quota_show()
        return tuple(text.split("\n")) if text else ()


class BrokerHooks:
    """Isolated mode's upload_hook: no execve here (seccomp), so the broker runs it."""

    def __init__(self, broker: MonitorBroker, settings: Any) -> None:
        self.broker = broker
        self.settings = settings

    async def run(self, env: dict[str, str], root: str, vpath: str) -> Any:
        try:
            msg = await asyncio.to_thread(self.broker.upload_hook, vpath, int(env.get("FTPW_SIZE", "0")))
        except (OSError, ChannelError) as e:
            return Result("error", output=str(e))
        return Result(msg.status, None if msg.code < 0 else msg.code, "", msg.moved_to)


def _names_snapshot(cfg: Any) -> dict[tuple[int, bool], str]:
    """uid/gid -> name, read before the chroot hides /etc/passwd."""
    if not cfg.text_userdb_names:
        return {}
    names = {(p.pw_uid, True): p.pw_name for p in pwd.getpwall()}
    names.update({(g.gr_gid, False): g.gr_name for g in grp.getgrall()})
    return names


def _run(ctx: ServerContext, conn: socket.socket, *, account: Any = None, pending: bytes = b"",
         tls_state: TlsState | None = None, addresses: tuple[str, str] | None = None) -> None:
    async def main() -> None:
        await serve(ControlConnection(ctx, account=account, pending=pending, tls_state=tls_state,
                                      addresses=addresses), conn)

    asyncio.run(main())


def _detach_bans(site: Site) -> None:
    """The shared ban table is never mapped in a process that parses client bytes:
    a worker could otherwise unban, ban others, or hold its lock forever."""
    if site.bans is not None:
        site.bans.detach()
        site.bans = None


def _detach_rates(site: Site) -> None:
    """Only the monitors book bytes on the shared account budgets: a worker
    could book (or stall) every account's; the post-login one asks its monitor."""
    if site.account_rates is not None:
        site.account_rates.detach()
        site.account_rates = None


_SHUTTING_DOWN = b"421 Server shutting down.\r\n"


def _prepare(conn: socket.socket | None = None) -> None:
    """`conn`: where a last 421 may go in plain text when the monitor ends us (SIGTERM)."""
    def stop(_signum: int, _frame: Any) -> None:
        if conn is not None:
            try:  # only what fits in the socket buffer now: a stop never waits on a client
                conn.send(_SHUTTING_DOWN, socket.MSG_DONTWAIT)
            except OSError:
                pass
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    set_parent_death_signal()
    minimal_environment()  # before tzset: TZ is one of the few variables kept
    time.tzset()
    time.localtime()  # load the zone data now: /etc/localtime is gone after chroot


def hosts_admitted(site: Site, conn_fd: int, chan_fd: int, client_ip: str | None = None) -> bool:
    """tcp_wrappers=YES: may this client connect (hosts.allow / hosts.deny)?  Run
    first in the pre-login process, as root, before its namespaces and before any
    client byte is read: a name rule may need the resolver (a child, bounded in
    time).  `client_ip`: the address a PROXY header declared (else the socket's
    peer).  Refused: vsftpd's 421 line, the broker logs it, and False."""
    cfg = site.cfg
    if not cfg.tcp_wrappers:
        return True
    conn, chan = socket.socket(fileno=conn_fd), socket.socket(fileno=chan_fd)
    try:
        client = client_ip or conn.getpeername()[0]
        decision = check(rules_dir(cfg), client, conn.getsockname()[0], bounded)
        if decision.verdict is Verdict.ALLOW:
            return True
        ForwardingEventLog(chan).post(LogHostsDenied(decision.where[:200]))
        conn.send(DENIED_REPLY, socket.MSG_DONTWAIT)
    except OSError:
        pass  # the client or the broker is gone: refused all the same
    finally:
        conn.detach()  # the descriptors stay the child's: run() takes them over
        chan.detach()
    return False


def prelogin(site: Site, conn: socket.socket, chan: Channel, *, declared: tuple[str, str] | None = None) -> None:
    """`declared`: (client, server) addresses of the connection's PROXY header (server "" if
    none): the session's remote address, and the destination PASV may advertise (after
    login the identity worker's, from Admit.server_ip)."""
    cfg = site.cfg
    _prepare(None if cfg.ssl_enable else conn)  # TLS may be on: no plain-text 421 then
    ip = declared[0] if declared else _peer_ip(conn) if proctitle.active() else ""
    proctitle.show(f"{ip}: connected")
    forward_logs(site, chan.sock)  # no log fd here: the monitor writes what we report
    _detach_bans(site)
    _detach_rates(site)
    nobody = pwd.getpwnam(cfg.nopriv_user or "nobody")
    helper: list[Any] = []  # (plaintext end, request channel) once this process is the TLS helper

    async def handover(control: ControlConnection, _account: Any) -> None:
        state = control.session.tls_state()
        if not state.protected:  # the client's socket goes back: the broker passes it on
            # one small datagram to a broker that reads at once: no thread for it
            chan.send(Handover.of(control.pending_bytes(), state), (conn.fileno(),))
            return
        plain_mine, plain_theirs = socket.socketpair()
        req_mine, req_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            chan.send(Handover.of(control.pending_bytes(), state), (plain_theirs.fileno(), req_theirs.fileno()))
        finally:
            plain_theirs.close()
            req_theirs.close()
        helper.extend((plain_mine, Channel(req_mine)))
        control.detached = True  # keep the TLS transport: we relay it from now on
        if proctitle.active():
            proctitle.show(f"{ip}/{_account.name}: SSL handler")

    # Made before the jail: the userlist file and (TLS) the private key are read
    # here.  Only this process ever loads the key; the monitor never does, so
    # the post-login process, forked from the monitor, never holds it.
    monitor_auth = MonitorAuthenticator(chan)
    ctx = ServerContext(cfg, monitor_auth, banner=site.banner, events=site.events,
                        handover=handover)
    if cfg.ssl_enable:
        # one session per pre-login process, so one context: it is this session's alone
        ctx.tls_contexts = Contexts.fixed(make_context(cfg))
    implicit = ctx.tls_contexts is not None and (cfg.implicit_ssl or conn.getsockname()[1] == cfg.implicit_ssl_port)
    # all this process needs: its client, its channel (log events go through it too)
    close_strays({conn.fileno(), chan.fileno()})
    drop_privileges(nobody.pw_uid, nobody.pw_gid, root=cfg.secure_chroot_dir,
                    memory_limit=WORKER_MEMORY_LIMIT)
    if cfg.seccomp_sandbox:  # last: from here on only the pre-login / TLS helper calls (priv/seccomp.py)
        seccomp.install("prelogin")
    proctitle.show(f"{ip}: not logged in")

    addresses = None
    if declared:  # the real local address (the passive listener binds there), the declared client
        addresses = (conn.getsockname()[0], declared[0])

    async def main() -> None:
        control = ControlConnection(ctx, addresses=addresses, advertise=declared[1] or None if declared else None)
        monitor_auth.protected = lambda: control.session.tls_state().protected
        try:
            # implicit TLS: nothing is read before the handshake, so no clear byte reaches the session
            await serve(control, conn, ssl=ctx.tls_contexts if implicit else None,
                        handshake_timeout=handshake_deadline(cfg) if implicit else None)
        except (TimeoutError, OSError, ssl.SSLError):
            return  # no handshake within the deadline, or a failed one: the session ends
        if helper:
            assert control.ssl_context is not None
            reader, writer = control.streams(line_cap(cfg.control_line_max))
            await serve_helper(cfg, control.ssl_context, reader, writer, helper[0], helper[1])

    asyncio.run(main())


def _peer_ip(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "?"


def writable_root(account: Any) -> bool:
    """Could the account change its own chroot's top directory?  OSError if it cannot be seen."""
    st = os.stat(account.root)
    if st.st_mode & stat.S_IWOTH:
        return True
    if st.st_uid == account.uid and st.st_mode & stat.S_IWUSR:
        return True
    return st.st_gid == account.gid and bool(st.st_mode & stat.S_IWGRP)


def _cannot_enter(conn: socket.socket, account: Any, error: OSError) -> None:
    """vsftpd's answer when the account's directory cannot be entered; the cause goes to the log."""
    where = posixpath.normpath(account.root + "/" + account.start_dir) if account.chroot else account.start_dir
    log.warning("login %s: cannot change directory to %s: %s", account.name, where,
                error.strerror or error)
    try:
        conn.sendall(f"500 OOPS: cannot change directory:{where}\r\n".encode("utf-8", "replace"))
    except OSError:
        pass  # the client left already


def postlogin(site: Site, conn: socket.socket, chan: Channel, account: Any, pending: bytes, *,
              tls_state: TlsState | None = None, tls_fd: int = -1,
              addresses: tuple[str, str] | None = None) -> None:
    cfg = site.cfg
    _prepare(conn)  # with TLS, the plain-text end whose bytes the TLS helper relays
    rate = site.account_rates.rate if site.account_rates is not None else 0
    _detach_rates(site)  # before anything else runs here: the budgets are the monitor's
    forward_logs(site, chan.sock)  # no log fd here: the monitor writes what we report
    # vsftpd's rule: a user who can write the top of its own chroot could plant
    # files that a process inside trusts (/etc, /lib).  Refused unless the
    # operator says otherwise (never for anonymous).
    anonymous = account.user_class.value == "anonymous"
    try:
        unsafe = account.chroot and writable_root(account)
    except OSError as e:  # the root (home) is missing or unreachable, even for root
        return _cannot_enter(conn, account, e)
    if unsafe and (anonymous or not cfg.allow_writeable_chroot):
        conn.sendall(b"500 OOPS: refusing to run with writable root inside chroot(); "
                     b"see allow_writeable_chroot\r\n")
        return
    _detach_bans(site)
    names = _names_snapshot(cfg)
    groups: list[int] = []
    if account.user_class.value == "real":
        groups = os.getgrouplist(pwd.getpwuid(account.uid).pw_name, account.gid)
    broker = MonitorBroker(chan)
    ctx = ServerContext(cfg, None, broker=broker, events=site.events)
    if proctitle.active():  # vsftpd's per-session form: this process is one session's
        ip = addresses[1] if addresses else _peer_ip(conn)  # with TLS, conn is the helper's plaintext end
        ctx.events = proctitle.titled(ctx.events, f"{ip}/{account.name}")
    if rate:  # user_max_rate: grants from the monitor, for this session's account only
        ctx.account_rates = RateGrants(broker.rate_grant, rate)
    ctx.preload_names(names)
    if tls_fd >= 0:
        ctx.tls_link = TlsLink(Channel(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=tls_fd)))
    # all this process needs: its client (or the TLS helper's plaintext end), its
    # channel (log events and rate grants go through it too), the TLS link
    close_strays({conn.fileno(), chan.fileno(), *([tls_fd] if tls_fd >= 0 else [])})
    try:
        drop_privileges(account.uid, account.gid, groups=groups,
                        root=account.root if account.chroot else None, memory_limit=WORKER_MEMORY_LIMIT)
        os.chdir(account.start_dir)  # as the user, as vsftpd: a home it may not enter ends here
    except OSError as e:  # this process exits after the reply: never runs half-dropped
        return _cannot_enter(conn, account, e)
    if cfg.seccomp_sandbox:  # inetd mode's session process: an identity worker's calls
        seccomp.install("identity")
    _run(ctx, conn, account=replace(account, root="/") if account.chroot else account, pending=pending,
         tls_state=tls_state, addresses=addresses)
