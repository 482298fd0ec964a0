"""Isolated mode's zygote: the root process that forks every unprivileged one.

The listener+broker receives every client's password on its way to the
checker, so a process forked from it would carry other clients' passwords in
its freed heap.  The zygote is forked before the first accept, loads the site
itself, closes what no child may hold (log files, the ban and account-rate
tables), warms and freezes its heap, and from then on only forks: a pre-login
process per connection, an identity worker per identity (priv/identity.py),
with proxy_protocol_enable the PROXY header reader (priv/proxyreader.py), and with
state_db_url the shared-state process (ops/stateproc.py).
It never reads client bytes; its one channel carries typed spawn requests
with their descriptors, each answered at once with the child's pidfd.
It ends with the listener (death signal) or when its channel closes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .channel import Channel, ChannelClosed, drain, fork_child, fork_with_channel, reap_exited, wake_on_signals
from .checker import _name
from .creds import minimal_environment
from .messages import (
    ChannelError,
    Refused,
    Spawned,
    SpawnIdentity,
    SpawnPrelogin,
    SpawnProxy,
    SpawnState,
    ZygoteReload,
)
from .namespaces import CLONE_NEWNET, Namespaces, enter, keep_signals
from .warmup import settle, warm

__all__ = ["Identity", "Zygote", "SpawnRefused", "RateNumber", "ZYGOTE_NAME", "PRELOGIN_NAME", "IDENTITY_NAME"]

SPAWN_WAIT = 10.0  # seconds the broker waits for an answer: the zygote only forks
# Process names (/proc/PID/comm, 15 bytes at most: "ftpwarden-zygote" is cut there)
ZYGOTE_NAME = "ftpwarden-zygot"
PRELOGIN_NAME = "ftpwarden-login"  # also the session's TLS helper once logged in
IDENTITY_NAME = "ftpwarden-user"

log = logging.getLogger("ftpwarden.zygote")


@dataclass(frozen=True)
class Identity:
    """What an identity worker runs as (and, with the config, what sessions share it by)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    root: str
    chroot: bool


class SpawnRefused(OSError):
    """The zygote could not start that child (fork failed, a bad descriptor): this session only."""


@dataclass(frozen=True)
class RateNumber:
    """What stays of user_max_rate's shared table in the zygote and its children:
    the rate the broker books with (its grants are sized from it), not the table."""

    rate: int

    def detach(self) -> None:
        pass


class Zygote:
    """The broker's handle: forks the zygote now; spawn requests answer (pid, pidfd).

    `load()` -> worker.Site, called in the zygote (at start and on `reload`);
    `after_fork()` runs first in the zygote: it closes what the listener holds
    that the zygote must not (listening sockets, the checker's channel, pipes).
    The broker reaps the zygote (it is the broker's child) and watches `fileno()`:
    readable with nothing to read is the zygote gone.
    """

    def __init__(self, load: Callable[[], Any], after_fork: Callable[[], None]) -> None:
        self.pid, self.chan = fork_with_channel(
            lambda chan: _Zygote(chan, load, after_fork).serve(),
            lambda: log.exception("the zygote failed"))
        self.chan.sock.settimeout(SPAWN_WAIT)

    def fileno(self) -> int:
        return self.chan.fileno()

    def spawn_prelogin(self, conn: socket.socket, chan: socket.socket,
                       declared: SpawnPrelogin | None = None) -> tuple[int, int]:
        """A pre-login process for `conn` talking over `chan`; the caller closes both after.
        `declared`: the addresses a PROXY header declared (proxy_protocol_enable)."""
        return self._spawn(declared or SpawnPrelogin(), (conn.fileno(), chan.fileno()))

    def spawn_proxy(self, chan: socket.socket) -> tuple[int, int]:
        """The ftpwarden-proxy process (priv/proxyreader.py) talking over `chan`; the caller closes it after."""
        return self._spawn(SpawnProxy(), (chan.fileno(),))

    def spawn_state(self, chan: socket.socket, node: str) -> tuple[int, int]:
        """The ftpwarden-state process (ops/stateproc.py) talking over `chan`; the caller closes it after."""
        return self._spawn(SpawnState(node), (chan.fileno(),))

    def spawn_identity(self, identity: Identity, admission: socket.socket) -> tuple[int, int]:
        """An identity worker taking sessions over `admission`; the caller closes it after."""
        msg = SpawnIdentity(identity.uid, identity.gid, ",".join(str(g) for g in identity.groups),
                            identity.root, identity.chroot)
        return self._spawn(msg, (admission.fileno(),))

    def reload(self) -> None:
        """Read the configuration again for the children forked from now on."""
        self._guarded(lambda: self.chan.send(ZygoteReload()))

    def close(self) -> None:
        """The zygote exits on this (its children live on until their own end)."""
        self.chan.close()

    def _spawn(self, msg: SpawnPrelogin | SpawnIdentity | SpawnProxy | SpawnState,
               fds: tuple[int, ...]) -> tuple[int, int]:
        def ask() -> tuple[Any, list[int]]:
            self.chan.send(msg, fds)
            return self.chan.recv(Spawned, Refused, max_fds=1)

        answer, got = self._guarded(ask)
        if isinstance(answer, Refused):
            for fd in got:
                os.close(fd)
            raise SpawnRefused(answer.reason)
        if len(got) != 1:
            for fd in got:
                os.close(fd)
            self.chan.close()
            raise ChannelError("Spawned without its pidfd")
        return answer.pid, got[0]

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """A timeout or a broken channel leaves it out of step: it is closed, never reused."""
        if self.chan.sock.fileno() < 0:
            raise ChannelClosed("the zygote channel is closed")
        try:
            return call()
        except (OSError, ChannelError) as e:
            self.chan.close()
            if isinstance(e, ChannelError):
                raise
            raise ChannelError(f"zygote: {e}") from None


# ---------------------------------------------------------------- the zygote process

class _Zygote:
    def __init__(self, chan: Channel, load: Callable[[], Any], after_fork: Callable[[], None]) -> None:
        self.chan = chan
        self.load = load
        self.after_fork = after_fork
        self.site: Any = None
        self.wake: tuple[int, int] = (-1, -1)
        self.ns = Namespaces()  # isolate, isolate_network: each child in namespaces of its own

    def serve(self) -> int:
        self.after_fork()
        _name(ZYGOTE_NAME.encode())
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the listener's signals: it tells us what to do
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        minimal_environment()  # once for every child (they call it again: then it costs nothing)
        time.tzset()
        time.localtime()  # the zone data, loaded here once
        self.site = _tidy(self.load())
        warm(self.site)
        settle()
        self.wake = wake_on_signals()  # an ended child wakes select: reaped at once
        while True:
            reap_exited()
            try:
                readable, _, _ = select.select([self.chan.fileno(), self.wake[0]], [], [])
            except InterruptedError:
                continue
            if self.wake[0] in readable:
                drain(self.wake[0])
            if self.chan.fileno() in readable and not self._request():
                return 0

    def _request(self) -> bool:
        """One request answered; False when the broker is gone."""
        try:
            msg, fds = self.chan.recv(SpawnPrelogin, SpawnIdentity, SpawnProxy, SpawnState, ZygoteReload, max_fds=2)
        except ChannelClosed:
            return False
        except ChannelError as e:  # malformed: said, and the next one may be fine
            return self._answer(Refused(str(e)))
        try:
            if isinstance(msg, ZygoteReload):  # never answered (the fds, if any, close below)
                self._reload()
                return True
            if isinstance(msg, SpawnPrelogin):
                pid = self._spawn_prelogin(msg, fds)
            elif isinstance(msg, SpawnProxy):
                pid = self._spawn_proxy(fds)
            elif isinstance(msg, SpawnState):
                pid = self._spawn_state(msg, fds)
            else:
                assert isinstance(msg, SpawnIdentity)
                pid = self._spawn_identity(msg, fds)
        except OSError as e:
            return self._answer(Refused(str(e) or type(e).__name__))
        finally:
            for fd in fds:  # passed on: no root process keeps a client socket
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)  # unreaped until our loop runs again: never a reused pid
        except OSError as e:
            return self._answer(Refused(f"pidfd_open: {e.strerror or e}"))
        try:
            return self._answer(Spawned(pid), (pidfd,))
        finally:
            os.close(pidfd)

    def _answer(self, msg: Refused | Spawned, fds: tuple[int, ...] = ()) -> bool:
        try:
            self.chan.send(msg, fds)
        except (ChannelError, OSError):
            return False
        return True

    def _reload(self) -> None:
        try:
            site = _tidy(self.load())
        except Exception as e:  # a broken file keeps the old config for new children
            print(f"ftpwarden: zygote: keeping the old configuration: {e}", file=sys.stderr)
            return
        self.site = site
        settle()

    def _spawn_prelogin(self, msg: SpawnPrelogin, fds: list[int]) -> int:
        if len(fds) != 2:
            raise SpawnRefused("SpawnPrelogin carries two descriptors")
        _socket_of(fds[0], socket.SOCK_STREAM)
        _socket_of(fds[1], socket.SOCK_SEQPACKET, socket.AF_UNIX)
        declared = _declared(msg)
        site = self.site

        def run() -> None:
            from . import worker
            _name(PRELOGIN_NAME.encode())
            conn = socket.socket(fileno=fds[0])
            worker.prelogin(site, conn, Channel(socket.socket(fileno=fds[1])),  # sets its own death signal
                            declared=declared)

        def admitted() -> bool:  # tcp_wrappers, as root with the host's network: before the namespaces
            from . import worker
            return worker.hosts_admitted(site, fds[0], fds[1], declared[0] if declared else None)

        return self._fork(run, signal.SIGKILL, (signal.SIGTERM, signal.SIGINT), admitted)

    def _spawn_proxy(self, fds: list[int]) -> int:
        if len(fds) != 1:
            raise SpawnRefused("SpawnProxy carries one descriptor")
        _socket_of(fds[0], socket.SOCK_SEQPACKET, socket.AF_UNIX)
        cfg = self.site.cfg

        def run() -> None:
            from . import proxyreader
            proxyreader.serve(cfg, socket.socket(fileno=fds[0]))

        return self._fork(run, signal.SIGKILL, (signal.SIGTERM, signal.SIGINT))

    def _spawn_state(self, msg: SpawnState, fds: list[int]) -> int:
        if len(fds) != 1:
            raise SpawnRefused("SpawnState carries one descriptor")
        _socket_of(fds[0], socket.SOCK_SEQPACKET, socket.AF_UNIX)
        cfg = self.site.cfg
        if not cfg.state_db_url:
            raise SpawnRefused("no state_db_url")

        def run() -> None:
            from ..ops import stateproc
            stateproc.serve(socket.socket(fileno=fds[0]), str(cfg.state_db_url), msg.node,
                            str(cfg.nopriv_user or "nobody"))

        # PostgreSQL is reached over the network: never in isolate_network's empty namespace
        return self._fork(run, signal.SIGKILL, (signal.SIGTERM, signal.SIGINT), without=CLONE_NEWNET)

    def _spawn_identity(self, msg: SpawnIdentity, fds: list[int]) -> int:
        if len(fds) != 1:
            raise SpawnRefused("SpawnIdentity carries one descriptor")
        _socket_of(fds[0], socket.SOCK_SEQPACKET, socket.AF_UNIX)
        try:
            groups = tuple(int(g) for g in msg.groups.split(",") if g)
        except ValueError:
            raise SpawnRefused("groups: not a list of numbers") from None
        if msg.uid <= 0 or msg.gid < 0 or any(g < 0 for g in groups):
            raise SpawnRefused("an identity is never root")  # the broker's checks, made again here
        if not os.path.isabs(msg.root):
            raise SpawnRefused("the root is not an absolute path")
        who = Identity(msg.uid, msg.gid, groups, msg.root, msg.chroot)
        site = self.site

        def run() -> None:
            from . import identity
            _name(IDENTITY_NAME.encode())
            identity.serve(site, who, Channel(socket.socket(fileno=fds[0])))

        return self._fork(run, signal.SIGTERM, (signal.SIGTERM,))  # the zygote's end: each session hears 421

    def _fork(self, run: Callable[[], None], death_signal: int, defaults: tuple[int, ...],
              first: Callable[[], bool] | None = None, without: int = 0) -> int:
        """The child leaves the zygote's descriptors and signal set-up (`defaults`:
        the signals it obeys as any process does), enters its namespaces
        (isolate, isolate_network; none of `without`), then runs `run`.  `first()` runs before the
        namespaces (tcp_wrappers' check, which may need the host's resolver); False ends the child."""
        def fork(flags: int) -> int:
            def child() -> int:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, *defaults):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in self.wake:
                    os.close(fd)
                self.chan.close()
                self.ns.close_in_child()
                keep_signals(flags)  # before `first`: a SIGTERM then still ends it
                if first is not None and not first():
                    return 0
                enter(flags)
                run()
                return 0

            return fork_child(child, lambda: log.exception("a child of the zygote failed"), death_signal)

        return self.ns.fork(self.site.cfg, fork, without)


def _tidy(site: Any) -> Any:
    """What no child may inherit: the log files (children forward their events on
    their channel) and the shared ban and account-rate tables (the broker's).
    The rate number stays: a worker sizes its grant requests from it."""
    if site.events is not None:
        site.events.close()  # our copies only: the broker's stay open
    if site.bans is not None:
        site.bans.detach()
        site.bans = None
    if site.account_rates is not None:
        rate = int(site.account_rates.rate)
        site.account_rates.detach()
        site.account_rates = RateNumber(rate)
    return site


def _declared(msg: SpawnPrelogin) -> tuple[str, str] | None:
    """(client, server) addresses a PROXY header declared ("" server: none), checked
    again here; None without a header.  SpawnRefused if not addresses."""
    if not msg.client_ip:
        return None
    try:
        client = str(ipaddress.ip_address(msg.client_ip))
        server = str(ipaddress.ip_address(msg.server_ip)) if msg.server_ip else ""
    except ValueError:
        raise SpawnRefused("a declared address that is not one") from None
    return client, server


def _socket_of(fd: int, kind: int, family: int | None = None) -> None:
    """SpawnRefused unless `fd` is a socket of that type (and family)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SpawnRefused("a descriptor is not a socket")
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise SpawnRefused(f"a bad descriptor: {e.strerror or e}") from None
    try:
        if probe.type != kind or (family is not None and probe.family != family):
            raise SpawnRefused("a descriptor of the wrong kind")
    finally:
        probe.close()
