"""Isolated mode's password checker: the one process that holds the user DB and runs PAM.

Root.  The listener (or, in inetd mode, the session process) forks it before
anything else loads the user DB, so neither the listener nor any monitor holds
hash material, and no worker forked from them can.  Each monitor gets its own
channel to it (`connect`: one end travels over the control channel as
SCM_RIGHTS); a check is `CheckLogin` -> `CheckGranted` (the account's fields,
never a hash), `CheckRefused`, or `CheckUnavailable` (the user database cannot
be reached: the monitor raises LoginUnavailable, the client gets 421).

Each check runs in a child of the checker that answers and exits: PAM's
buffers (shadow lines) and scrypt's 16 MiB die with it, and a PAM module that
is not thread-safe sees one login per process.  The checker forks no user
process.  It ends when its parent (parent-death signal) or, the control
channel closed, its last monitor is gone.  If it dies, a check under way or
asked meanwhile is refused, never granted; the listener starts a new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..net import proctitle
from ..policy.auth.base import LoginUnavailable
from ..policy.auth.pam import take_held
from ..policy.passwords import dummy_verify
from ..proto.commands import Perm
from ..proto.principal import Principal, UserClass
from . import sessionrec
from .channel import Channel, ChannelClosed, channel_pair, drain, fork_with_channel, reap_exited, wake_on_signals
from .messages import (
    ChannelError,
    CheckerConn,
    CheckerReload,
    CheckerUp,
    CheckGranted,
    CheckLogin,
    CheckRefused,
    CheckUnavailable,
)

__all__ = ["Checker", "CheckerClient", "refused"]

# authenticate(user, password, remote_ip) -> account or None: what the checker runs.
Authenticate = Callable[[str, str, str], Any]

ANSWER_WAIT = 60.0  # seconds a monitor waits for an answer (PAM may be slow); then refused
CHECK_SECONDS = 50  # a check child still running after this is killed (SIGALRM)
MAX_CHECKS = 64  # checks at once in the checker, whatever the monitors' slots say
RESTART_GAP = 5.0  # seconds between two starts: a checker that cannot load does not spin
_PR_SET_NAME = 15


def refused(_user: str, _password: str, _remote_ip: str) -> None:
    """worker.Site's `authenticate` in isolated mode: checks go to the checker, never here."""
    return None


class CheckerClient:
    """A monitor's end: callable like an authenticator; any fault refuses."""

    def __init__(self, chan: Channel | None) -> None:
        self.chan = chan
        # session_support: the session holder's end of a good login (priv/sessionrec.py);
        # the login's PAM session and utmp record end when it is closed
        self.held: socket.socket | None = None

    def __call__(self, user: str, password: str, remote_ip: str) -> Principal | None:
        if self.chan is None:
            return None
        try:
            self.chan.sock.settimeout(ANSWER_WAIT)
            self.chan.send(CheckLogin(user, password, remote_ip))
            return self._read()
        except (ChannelError, OSError, ValueError):
            self.detach()  # a late answer must never be read as the next check's
            return None

    def ask(self, user: str, password: str, remote_ip: str) -> bool:
        """Send a check without waiting for it (the broker's loop); False: refused at once."""
        if self.chan is None:
            return False
        try:
            self.chan.sock.setblocking(False)
            self.chan.send(CheckLogin(user, password, remote_ip))  # the first datagram: room for it
            return True
        except (ChannelError, OSError, ValueError):
            self.detach()
            return False

    def answer(self) -> Principal | None:
        """The answer to `ask`, read once the channel is readable; any fault refuses."""
        if self.chan is None:
            return None
        try:
            return self._read()
        except (ChannelError, OSError, ValueError):
            return None
        finally:
            self.detach()  # one check per channel: a late answer is never the next check's

    def _read(self) -> Principal | None:
        """The answer; a grant may carry its session holder's end (kept in `held`).
        Raises LoginUnavailable when the checker could not decide."""
        assert self.chan is not None
        msg, fds = self.chan.recv(CheckGranted, CheckRefused, CheckUnavailable, max_fds=1)
        if isinstance(msg, CheckUnavailable):
            for fd in fds:
                os.close(fd)
            raise LoginUnavailable(msg.reason)
        try:
            held = socket.socket(fileno=fds[0]) if fds else None
        except OSError:  # not a socket
            os.close(fds[0])
            raise ChannelError("a grant carries something else than a socket") from None
        try:
            account = _account(msg) if isinstance(msg, CheckGranted) else None
        except ValueError:
            account = None
        if account is None or (held is not None and held.type != socket.SOCK_SEQPACKET):
            if held is not None:
                held.close()  # refused: the holder ends the session records now
            return None
        self.release()
        self.held = held
        return account

    def release(self) -> None:
        """The session is over: its PAM session and utmp record end (session_support)."""
        if self.held is not None:
            held, self.held = self.held, None
            held.close()

    def detach(self) -> None:
        """Close the channel (workers: they never ask the checker)."""
        if self.chan is not None:
            chan, self.chan = self.chan, None
            chan.close()


class Checker:
    """The parent's handle: start, restart, a channel per monitor, reload."""

    def __init__(self, load: Callable[[], Authenticate], after_fork: Callable[[], None] = lambda: None) -> None:
        """`load()` reads the configuration and the user DB (run in the checker only);
        `after_fork` runs in the new checker first (close what it must not hold).
        Raises RuntimeError when the first start cannot load."""
        self.load = load
        self.after_fork = after_fork
        self.pid = 0
        self.control: Channel | None = None
        self.started = 0.0
        error = self.start()
        if error:
            raise RuntimeError(error)

    def start(self) -> str:
        """Fork a checker and wait until it has loaded; its error ("" if none)."""
        self.close()
        self.started = time.monotonic()
        def child(chan: Channel) -> int:
            self.after_fork()
            return _serve(chan, self.load)

        pid, mine = fork_with_channel(child, _print_exception)
        self.pid, self.control = pid, mine
        try:
            mine.sock.settimeout(ANSWER_WAIT)
            msg, _ = mine.recv(CheckerUp)
            mine.sock.settimeout(None)
            assert isinstance(msg, CheckerUp)
            error = msg.error
        except (ChannelError, OSError) as e:
            error = f"the password checker did not start: {e}"
        if error:
            self.close()
        return error

    def ensure(self) -> None:
        """Start a new checker if the last one is gone (at most once per RESTART_GAP)."""
        if self.control is None and time.monotonic() - self.started >= RESTART_GAP:
            error = self.start()
            if error:
                print(f"ftpwarden: password checker: {error}", file=sys.stderr)

    def ended(self, pid: int) -> bool:
        """The parent reaped `pid`: True if it was the checker (now gone)."""
        if pid != self.pid or not pid:
            return False
        self.pid = 0
        self.close()
        return True

    def connect(self) -> CheckerClient:
        """A channel for one monitor; without a checker, one that refuses every check."""
        self.ensure()
        mine, theirs = channel_pair()
        try:
            if self.control is None:
                raise ChannelClosed("no checker")
            self.control.send(CheckerConn(), (theirs.fileno(),))
        except ChannelClosed:
            self.close()
            mine.close()
            return CheckerClient(None)
        finally:
            theirs.close()
        return CheckerClient(mine)

    def reload(self) -> None:
        with contextlib.suppress(ChannelClosed):
            if self.control is not None:
                self.control.send(CheckerReload())

    def close(self) -> None:
        """Drop the control channel (a monitor child; inetd mode once connected)."""
        if self.control is not None:
            control, self.control = self.control, None
            control.close()


# ---------------------------------------------------------------------- the checker process

def _serve(control: Channel, load: Callable[[], Authenticate]) -> int:
    _name(b"ftpwarden-check")
    proctitle.show("password checker")  # one started again by the broker has its title's room, not LISTENER
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the listener's signals: it tells us what to do
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # an ended check wakes select: it is reaped at once, never left a zombie
    wake_r, _ = wake_on_signals()
    try:
        authenticate = load()
    except Exception as e:
        control.send(CheckerUp(str(e) or type(e).__name__))
        return 1
    dummy_verify("warm-up")  # the hashing library's set-up, shared by every check child
    control.send(CheckerUp(""))
    conns: list[Channel] = []
    checks: set[int] = set()
    watch: Channel | None = control
    while watch is not None or conns:
        checks.difference_update(reap_exited())
        waiting: list[Channel | int] = [wake_r, *conns] if watch is None else [wake_r, watch, *conns]
        try:
            readable, _, _ = select.select(waiting, [], [], 1.0)
        except InterruptedError:
            continue
        if wake_r in readable:
            drain(wake_r)
        for chan in readable:
            if not isinstance(chan, Channel):
                continue
            if chan is watch:
                try:
                    msg, fds = chan.recv(CheckerConn, CheckerReload, max_fds=1)
                except ChannelError:  # the listener is gone (or broke the protocol)
                    chan.close()
                    watch = None
                    continue
                if isinstance(msg, CheckerConn) and len(fds) == 1:
                    conns.append(Channel(socket.socket(fileno=fds[0])))
                elif isinstance(msg, CheckerReload):
                    authenticate = _reloaded(load, authenticate)
                else:
                    for fd in fds:
                        os.close(fd)
                continue
            try:
                msg, _ = chan.recv(CheckLogin)
            except ChannelError:  # the monitor ended (or broke the protocol)
                conns.remove(chan)
                chan.close()
                continue
            assert isinstance(msg, CheckLogin)
            if len(checks) >= MAX_CHECKS:
                with contextlib.suppress(ChannelError):
                    chan.send(CheckRefused())
                continue
            checks.add(_fork_check(chan, authenticate, msg))
    return 0


def _reloaded(load: Callable[[], Authenticate], current: Authenticate) -> Authenticate:
    try:
        return load()
    except Exception as e:  # a broken file keeps the old user DB
        print(f"ftpwarden: password checker: SIGHUP: keeping the old user DB: {e}", file=sys.stderr)
        return current


def _fork_check(chan: Channel, authenticate: Authenticate, msg: CheckLogin) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # PAM may fork helpers (unix_chkpwd) and wait
            signal.alarm(CHECK_SECONDS)  # SIGALRM's default ends a hung PAM module
            try:
                account = authenticate(msg.user, msg.password, msg.remote_ip)
            except LoginUnavailable as e:  # no decision now (user_db_url down): the client gets 421
                chan.send(CheckUnavailable(e.reason))
                os._exit(0)
            except Exception:  # an authenticator bug refuses the login, never grants it
                account = None
            held = take_held()  # session_support: a PAM login's handle, for its session
            if account is not None and held is not None:
                sessionrec.hold(chan, _granted(account), held, msg.remote_ip)  # the holder answers
            else:
                chan.send(CheckRefused() if account is None else _granted(account))
            code = 0
        except BaseException:
            pass  # the monitor went away: nothing to answer
        finally:
            os._exit(code)
    return pid


def _granted(account: Principal) -> CheckGranted:
    if account.uid is None or account.gid is None:
        raise ValueError("an isolated account has a uid and a gid")
    return CheckGranted(account.name, account.user_class.value, account.root,
                        ",".join(sorted(p.value for p in account.grants)), account.umask, account.anon_password,
                        account.uid, account.gid, account.chroot, account.start_dir,
                        -1 if account.quota_bytes is None else account.quota_bytes,
                        -1 if account.quota_files is None else account.quota_files)


def _account(msg: CheckGranted) -> Principal:
    """The account back from its fields; a bad value is a ValueError (refused)."""
    if msg.uid <= 0 or msg.gid < 0:  # never hand a session root, whatever the checker says
        raise ValueError("uid 0 or a negative id")
    return Principal(msg.name, UserClass(msg.user_class), msg.root,
                     frozenset(Perm(p) for p in msg.grants.split(",") if p), msg.umask,
                     anon_password=msg.anon_password, uid=msg.uid, gid=msg.gid, chroot=msg.chroot,
                     start_dir=msg.start_dir, quota_bytes=None if msg.quota_bytes < 0 else msg.quota_bytes,
                     quota_files=None if msg.quota_files < 0 else msg.quota_files)


def _name(name: bytes) -> None:
    """The process name in ps and /proc/PID/comm (tests find the checker by it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _print_exception() -> None:
    import traceback
    traceback.print_exc()
