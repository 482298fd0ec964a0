"""The per-session privileged monitor: root, blocking, small, never reads the network.

Inetd mode's (listen=NO); standalone isolated mode has one broker (priv/broker.py)
that makes the same checks, with the functions at the end of this module.

It forks the pre-login worker, answers exactly one kind of request before
login (Login) and a closed set after it (ActiveDataSocket, ChownUpload,
RateGrant), and ends the session on anything else.  Imports neither asyncio nor `net`.
In both phases it also writes the workers' log events (logrelay): the
processes that run as nopriv_user or as the login user hold no log descriptor.

Ending: SIGTERM (the listener stopping) asks the worker to say 421 and go,
then kills whatever is left within a few seconds.  Each worker has a parent-
death signal that outlives its privilege drop (creds.drop_privileges), so a
monitor that dies any other way takes its workers with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

from ..net.bans import login_failed
from ..net.data import active_socket, passive_listener
from ..net.limits import max_grant
from ..policy.auth.base import LoginUnavailable
from ..policy.auth.local import refused_at_user
from ..policy.options import session_options
from ..proto import addr
from ..proto.verbs import tls_login_refusal
from . import messages
from .channel import Channel, ChannelClosed, end_child, fork_with_channel
from .checker import CheckerClient
from .logrelay import LOG_EVENTS, LogRelay
from .messages import (
    ActiveDataSocket,
    ChannelError,
    ChownUpload,
    DataSocket,
    Done,
    Handover,
    Login,
    LoginFailed,
    LoginOk,
    Message,
    PassiveListen,
    RateGrant,
    RateWait,
    Refused,
)
from .namespaces import Namespaces
from .namespaces import enter as enter_namespaces

__all__ = ["Monitor", "run_one_session", "login_checkable", "login_refusal", "active_source_port", "rate_wait",
           "chown_upload", "hash_buffers_unmapped"]

log = logging.getLogger("ftpwarden.monitor")

# What the worker functions look like (priv/worker.py; injected so this
# module never imports the asyncio side).
PreLogin = Callable[[socket.socket, Channel], None]
PostLogin = Callable[..., None]  # (conn, chan, account, pending, *, tls_state, tls_fd, addresses)

STOP_WORKER = 2.0  # seconds a worker has to say 421 and exit after SIGTERM
STOP_HELPER = 1.0  # then the TLS helper, to relay that 421
_libc = ctypes.CDLL(None, use_errno=True)
_M_MMAP_THRESHOLD = -3


class _Stopped(BaseException):
    """SIGTERM: end the session now (BaseException: no `except Exception` keeps it)."""


_stop_asked = False  # one monitor per process: a module flag is this session's


def _on_sigterm(_signum: int, _frame: Any) -> None:
    global _stop_asked
    _stop_asked = True  # for where the exception is swallowed (a PAM callback)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: we are ending
    raise _Stopped()


class Monitor:
    """One session.  `authenticate(user, password, remote_ip) -> account | None`."""

    def __init__(self, cfg: Any, conn: socket.socket, *, authenticate: Callable[[str, str, str], Any],
                 prelogin: PreLogin, postlogin: PostLogin, bans: Any = None, events: Any = None,
                 account_rates: Any = None) -> None:
        """`bans`: net.bans.BanList (None: off); `events` logs a ban."""
        self.cfg = cfg
        self.account_rates = account_rates  # net.limits.AccountRates: booked here, never by a worker
        self.bans = bans
        self.events = events
        self.conn = conn
        self.authenticate = authenticate
        self.prelogin = prelogin
        self.postlogin = postlogin
        self.local_ip = conn.getsockname()[0]
        self.remote_ip = conn.getpeername()[0]
        self.worker = 0
        self.helper = 0  # the pre-login worker kept as TLS helper
        self.ns = Namespaces()  # isolate, isolate_network: each worker in namespaces of its own
        # the workers' log events, written here: they hold no log descriptor
        self.relay = LogRelay(events, self.remote_ip, f"{os.getpid()}.1")

    # ------------------------------------------------------------------ phases

    def run(self) -> int:
        stopped = False
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            login = self._pre_login()
            if login is None:
                return 0
            account, handover, fds = login
            self._post_login(account, handover, fds)
            return 0
        except _Stopped:
            stopped = True
            return 0
        except ChannelError:
            return 1  # the worker broke the protocol, crashed or left: end the session
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end is under way either way
            if stopped:  # the worker says 421 (through the TLS helper, which then ends too)
                self._end_worker(wait=STOP_WORKER, term=True)
                self.worker, self.helper = self.helper, 0
                self._end_worker(wait=STOP_HELPER)
            else:
                self._end_worker()
                self.worker, self.helper = self.helper, 0
                self._end_worker(wait=5.0)

    def _fork_worker(self, body: Callable[[Channel], None]) -> Channel:
        def fork(flags: int) -> int:
            def child(chan: Channel) -> int:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the monitor's; the worker sets its own
                if isinstance(self.authenticate, CheckerClient):
                    self.authenticate.detach()  # only the monitor asks the password checker
                self.ns.close_in_child()
                enter_namespaces(flags)  # isolate, isolate_network
                body(chan)
                return 0

            # a worker's errors reach the monitor through the channel: its fd 2 is /dev/null (logrelay)
            pid, mine = fork_with_channel(child, lambda: log.exception("session worker failed"))
            chans.append(mine)
            return pid

        chans: list[Channel] = []
        self.worker = self.ns.fork(self.cfg, fork)
        return chans[0]

    def _pre_login(self) -> tuple[Any, Handover, list[int]] | None:
        chan = self._fork_worker(lambda ch: self.prelogin(self.conn, ch))
        fails = 0
        max_fails = max(1, int(self.cfg.max_login_fails or 3))
        granted = False  # once logged in, the pre-login worker's later events are not the session's
        try:
            while True:
                try:
                    msg, _ = self._recv(chan, Login)
                except ChannelClosed:
                    return None  # QUIT, timeout or disconnect before login
                assert isinstance(msg, Login)
                started = time.monotonic()
                try:
                    account = self._check(msg)
                except LoginUnavailable as e:  # 421 and the end: no failed login, no delay
                    log.warning("login %s from %s: 421, the user database cannot be reached: %s",
                                msg.user, self.remote_ip, e.reason)
                    chan.send(messages.LoginUnavailable())
                    self._end_worker(wait=5.0)
                    return None
                if account is not None and (why := login_refusal(self.cfg, msg, account)):
                    log.warning("login %s refused by the monitor: %s", msg.user, why)
                    account = None
                self.relay.login(msg.user, account)
                if account is None:
                    fails += 1
                    # the delay is read here, not taken from the (untrusted) worker
                    time.sleep(login_failed(self.bans, self.remote_ip, self.events, started,
                                            float(self.cfg.delay_failed_login or 0), time.monotonic()))
                    chan.send(LoginFailed())
                    if fails >= max_fails:
                        # the worker answers this last failure with its 530 and
                        # hangs up: give it the moment to do so before it is killed
                        self._end_worker(wait=5.0)
                        return None
                    continue
                granted = True
                time.sleep(float(self.cfg.delay_successful_login or 0))  # one session here: vsftpd's sleep
                chan.send(LoginOk(account.name, account.user_class.value))
                msg, fds = self._recv(chan, Handover, max_fds=2)
                assert isinstance(msg, Handover)
                if len(fds) == 1:  # plain text: the client's socket back (for a broker); ours is self.conn
                    os.close(fds.pop())
                if fds:  # TLS: the pre-login worker stays on as the TLS helper
                    if len(fds) != 2:
                        for fd in fds:
                            os.close(fd)
                        raise ChannelError("a TLS handover carries two descriptors")
                    self.helper, self.worker = self.worker, 0
                else:
                    self._end_worker(wait=5.0)
                return account, msg, fds
        finally:
            if not granted:
                self._drain_logs(chan)  # what it said last (530, disconnect, or before a SIGTERM)
            chan.close()

    def _check(self, msg: Login) -> Any:
        if not login_checkable(msg):
            return None
        try:
            account = self.authenticate(msg.user, msg.password, self.remote_ip)
        except LoginUnavailable:
            raise
        except Exception:  # an authenticator bug refuses the login, never grants it
            account = None
        finally:
            _trim()
        if _stop_asked:
            raise _Stopped()
        return account

    def _post_login(self, account: Any, handover: Handover, fds: list[int]) -> None:
        conn = socket.socket(fileno=fds[0]) if fds else self.conn
        tls_fd = fds[1] if fds else -1
        addresses = (self.local_ip, self.remote_ip)
        self.relay.logged_in(account)  # from now on the user in every line is the account's
        if fds:  # TLS: the client's TCP socket is the helper's alone; the worker never holds it
            self.conn.close()
        chan = self._fork_worker(lambda ch: self.postlogin(
            conn, ch, account, handover.pending, tls_state=handover.tls_state, tls_fd=tls_fd,
            addresses=addresses))
        # the worker owns the connection now; we never touch client bytes
        self.conn.close()
        if fds:
            conn.close()
            os.close(tls_fd)
        # user_max_rate: this session's account is the only one the worker's grants book on
        reserve = self.account_rates.reserve_for(account.name) if self.account_rates is not None else None
        try:
            while True:
                try:
                    msg, fds = self._recv(chan, ActiveDataSocket, PassiveListen, ChownUpload, RateGrant, max_fds=1)
                except ChannelClosed:
                    return
                if isinstance(msg, ActiveDataSocket):
                    if fds:
                        raise ChannelError("ActiveDataSocket carries no descriptor")
                    self._active_socket(chan, msg)
                elif isinstance(msg, PassiveListen):
                    if fds:
                        raise ChannelError("PassiveListen carries no descriptor")
                    self._passive_listen(chan)
                elif isinstance(msg, RateGrant):
                    if fds:
                        raise ChannelError("RateGrant carries no descriptor")
                    self._rate_grant(chan, msg, reserve)
                else:
                    if len(fds) != 1:
                        raise ChannelError("ChownUpload needs exactly one descriptor")
                    try:
                        self._chown_upload(chan, fds[0], account)
                    finally:
                        os.close(fds[0])
        finally:
            self._drain_logs(chan)  # what the worker said before a SIGTERM or a broken request
            chan.close()

    # ------------------------------------------------------------------ log events

    def _recv(self, chan: Channel, *expected: type[Message], max_fds: int = 0) -> tuple[Message, list[int]]:
        """The next request of `expected`; the log events before it are written on the way."""
        while True:
            msg, fds = chan.recv(*expected, *LOG_EVENTS, max_fds=max_fds)
            if not isinstance(msg, LOG_EVENTS):
                return msg, fds
            for fd in fds:
                os.close(fd)
            if fds:
                raise ChannelError("a log event carries no descriptor")
            self._write(msg)

    def _write(self, msg: Message) -> None:
        """A line is written whole or not at all: SIGTERM (_Stopped) waits until it is out."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self.relay.handle(msg)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _drain_logs(self, chan: Channel) -> None:
        """The log events an ended worker left in the channel (bounded: it is gone)."""
        chan.sock.setblocking(False)
        try:
            for _ in range(10_000):
                msg, _ = chan.recv(*LOG_EVENTS)
                self._write(msg)
        except (OSError, ChannelError):  # empty (BlockingIOError), closed or malformed
            pass

    # ------------------------------------------------------------------ requests

    def _active_socket(self, chan: Channel, msg: ActiveDataSocket) -> None:
        def connected() -> socket.socket:
            sock = active_socket(msg.host, self.local_ip, active_source_port(self.cfg, msg, self.remote_ip))
            try:
                sock.settimeout(float(self.cfg.connect_timeout or 60))
                sock.connect((msg.host, msg.port))
            except OSError:
                sock.close()
                raise
            return sock

        _pass_socket(chan, connected)

    def _passive_listen(self, chan: Channel) -> None:
        """isolate_network: a listener on this session's own local address, passed in."""
        _pass_socket(chan, lambda: passive_listener(self.cfg, self.local_ip))

    def _rate_grant(self, chan: Channel, msg: RateGrant, reserve: Callable[[int], float] | None) -> None:
        chan.send(rate_wait(self.account_rates, reserve, msg))

    def _chown_upload(self, chan: Channel, fd: int, account: Any) -> None:
        chan.send(chown_upload(self.cfg, fd, account))

    # ------------------------------------------------------------------ helpers

    def _end_worker(self, wait: float = 0.0, *, term: bool = False) -> None:
        """Reap the current worker; after `wait` seconds (or at once) kill it.
        `term`: first ask it to end (SIGTERM: it says 421 and exits)."""
        pid, self.worker = self.worker, 0
        if not pid:
            return
        status = end_child(pid, wait, term=term)
        if status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
            log.warning("session process %d killed by the seccomp sandbox (SIGSYS); the kernel log "
                        "(dmesg | grep syscall=) names the call", pid)


# ---------------------------------------------------------------------- the checks (the broker's too)

def login_checkable(msg: Login) -> bool:
    """Worth a password check: a plausible name, a password of at most 128 bytes."""
    return _plausible_name(msg.user) and len(msg.password.encode("utf-8", "surrogateescape")) <= 128


def login_refusal(cfg: Any, msg: Login, account: Any) -> str | None:
    """What the pre-login worker checks at USER, checked again for every class
    of account: userlist_file, force_*_logins_ssl and allow_anon_ssl.
    `msg.tls_protected` is the worker's word (see messages.Login)."""
    if refused_at_user(cfg, msg.user):
        return "refused by userlist_file"
    return tls_login_refusal(session_options(cfg), anonymous=account.user_class.value == "anonymous",
                             protected=msg.tls_protected)


def _pass_socket(chan: Channel, make: Callable[[], socket.socket]) -> None:
    """The socket `make` returns, sent to the session and closed here; or why not."""
    try:
        sock = make()
    except OSError as e:
        chan.send(Refused(os.strerror(e.errno) if e.errno else str(e)))
        return
    try:
        chan.send(DataSocket(), (sock.fileno(),))
    finally:
        sock.close()


def active_source_port(cfg: Any, msg: ActiveDataSocket, remote_ip: str) -> int:
    """The local port of an active data connection (0: any); ChannelError when
    the target is a host or port the session's client does not own."""
    if not addr.port_allowed(msg.host, msg.port, remote_ip, promiscuous=bool(cfg.port_promiscuous)):
        raise ChannelError("active data socket to a port or host the client does not own")
    return int(cfg.ftp_data_port or 20) if cfg.connect_from_port_20 else 0


def rate_wait(account_rates: Any, reserve: Callable[[int], float] | None, msg: RateGrant) -> RateWait:
    """Book the bytes and say how long to wait (reserve clamps it to limits.MAX_WAIT)."""
    if reserve is None or not 0 < msg.nbytes <= max_grant(account_rates.rate):
        raise ChannelError("a rate grant out of bounds, or user_max_rate is off")
    return RateWait(int(reserve(msg.nbytes) * 1_000_000))


def chown_upload(cfg: Any, fd: int, account: Any) -> Done | Refused:
    """Only a regular file owned by the anonymous user, given to chown_username,
    and only where chown_uploads is on: anything else ends the session (ChannelError)."""
    if not cfg.chown_uploads or account.user_class.value != "anonymous":
        raise _refuse("CHOWN_UPLOAD without chown_uploads for an anonymous session")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:  # fchown/fchmod would fail with EBADF
        raise _refuse("CHOWN_UPLOAD of an O_PATH descriptor")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or account.uid is None or st.st_uid != account.uid:
        raise _refuse("chown of something that is not the session's own upload")
    import pwd
    try:
        target = pwd.getpwnam(cfg.chown_username or "root")
    except KeyError:
        return Refused("no such chown_username")
    mode = int(cfg.chown_upload_mode or 0o600) & 0o777
    try:
        os.fchown(fd, target.pw_uid, -1)  # the kernel clears setuid/setgid bits
        os.fchmod(fd, mode)
    except OSError as e:  # a descriptor the checks above let through: still no traceback
        raise _refuse(f"CHOWN_UPLOAD failed: {e.strerror or e}") from None
    return Done()


def _refuse(why: str) -> ChannelError:
    """A request out of what this session may ask: logged, then the session ends."""
    log.warning("session ended: %s", why)
    return ChannelError(why)


def run_one_session(site: Any, conn: socket.socket, checker: CheckerClient | None = None) -> int:
    """One session in this process (inetd mode).  `checker`: this session's
    channel to the password checker (None: site.authenticate checks)."""
    import functools

    from ..net import proctitle
    from . import worker
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    if site.cfg.setproctitle_enable and proctitle.take_over():  # its children inherit the room
        proctitle.show(f"{worker._peer_ip(conn)}: connected")
    if site.cfg.tcp_wrappers and not _hosts_admitted(site, conn):
        return 0
    return Monitor(site.cfg, conn, authenticate=site.authenticate if checker is None else checker,
                   prelogin=functools.partial(worker.prelogin, site),
                   postlogin=functools.partial(worker.postlogin, site),
                   bans=site.bans, events=site.events, account_rates=site.account_rates).run()


def _hosts_admitted(site: Any, conn: socket.socket) -> bool:
    """tcp_wrappers=YES in inetd mode: decided here, as root, before the pre-login
    process exists; refused, vsftpd's 421 line and its log line."""
    from ..policy import hostsaccess, rdns
    try:
        client, server = conn.getpeername()[0], conn.getsockname()[0]
    except OSError:
        return False
    decision = hostsaccess.check(hostsaccess.rules_dir(site.cfg), client, server, rdns.bounded)
    if decision.verdict is hostsaccess.Verdict.ALLOW:
        return True
    log.warning("%s: refused by %s", client, decision.where or "hosts.deny")
    if site.events is not None:
        site.events.connect_refused("-", hostsaccess.host_addr(client), hostsaccess.DENIED_TEXT)
    try:
        conn.send(hostsaccess.DENIED_REPLY, socket.MSG_DONTWAIT)
    except OSError:
        pass
    return False


def hash_buffers_unmapped() -> None:
    """Keep glibc's mmap threshold fixed (inherited by every child): a freed
    16 MiB scrypt buffer would otherwise raise it, and the next ones would come
    from the heap and stay with the process after its check."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):
        pass  # not glibc


def _trim() -> None:
    """Give the check's big buffers (scrypt: 16 MiB) back to the kernel now: a
    monitor may wait minutes for the next PASS of its client."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


def _plausible_name(user: str) -> bool:
    """vsftpd's check: 1-128 bytes, printable, no space, a sane first character."""
    if not 0 < len(user.encode("utf-8", "surrogateescape")) <= 128:
        return False
    if not (user[0].isalnum() or user[0] in "_."):
        return False
    return user.isprintable() and " " not in user and "/" not in user
