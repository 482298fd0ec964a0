"""Pooled mode: asyncio sessions, many per process, one process per core.

The listening sockets are bound once, in the parent, without SO_REUSEPORT,
and every worker process accepts on those same sockets (inherited by fork).
So a second server on the same port fails with "Address already in use", as
vsftpd does, instead of silently sharing it: SO_REUSEPORT would let any
process of the same user join the port and take a share of the clients.
Whichever worker is idle takes the next connection.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from ..ops.pooledlink import SupervisorOps, start_worker_ops
from ..policy import hostsaccess, rdns
from . import proctitle, proxyproto
from .context import ServerContext
from .control import ControlConnection
from .tls import handshake_deadline

__all__ = ["bind_listeners", "serve_pooled", "Listener"]

log = logging.getLogger("ftpwarden.server")
_PR_SET_PDEATHSIG = 1

Listener = tuple[socket.socket, ...]  # one worker's sockets (one per address)
Sandbox = Callable[[], object] | None  # installs seccomp_sandbox's allow-list in the calling process


def _bind(host: str, port: int, *, v6only: bool | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart despite TIME_WAIT; never shares a listener
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listeners(addresses: list[tuple[str, bool | None]], port: int, workers: int) -> list[Listener]:
    """One socket per address, all on one port (port 0: the kernel picks it once);
    the same sockets for each of the `workers`.  OSError.filename names the address."""
    socks: list[socket.socket] = []
    try:
        for host, v6only in addresses:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                sock = _bind(host, port, v6only=v6only)
            except OSError as e:
                raise OSError(e.errno, e.strerror, shown) from None
            except (TypeError, ValueError, UnicodeError):  # a NUL or a label IDNA refuses
                raise OSError(errno.EINVAL, "not an address", repr(shown)) from None
            port = sock.getsockname()[1]
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return [tuple(socks)] * workers


async def _serve(ctx: ServerContext, sockets: Listener, ready: Callable[[], None] | None,
                 sandbox: Sandbox = None) -> None:
    limits = ctx.limits
    sessions: set[ControlConnection] = set()
    titled = proctitle.active()
    if titled:
        _title(0)
    all_ended = asyncio.Event()

    def admit(cc: ControlConnection) -> str | None:
        """A new connection: its refusal, or None when its session may start."""
        ip = cc.remote_ip
        if ctx.bans is not None and ctx.bans.is_banned(ip):
            return "Too many failed logins from your address; try again later."
        refusal = limits.enter(ip) if limits else None
        if not refusal:
            sessions.add(cc)
            if titled:
                _title(len(sessions))
        return refusal

    def ended(cc: ControlConnection) -> None:
        sessions.discard(cc)
        if titled:
            _title(len(sessions))
        if limits:
            limits.leave(cc.remote_ip)
        if not sessions:
            all_ended.set()

    def protocol(addresses: tuple[str, str] | None = None, advertise: str | None = None) -> asyncio.Protocol:
        """`addresses` (real local, declared client) and `advertise` come from a PROXY header."""
        def session() -> ControlConnection:
            return ControlConnection(ctx, admit=admit, on_end=ended, addresses=addresses, advertise=advertise)
        return _HostsGate(ctx, session, addresses) if ctx.cfg.tcp_wrappers else session()

    cfg = ctx.cfg
    def tls_for(sock: socket.socket) -> Any:
        """implicit_ssl: every port is TLS from the first byte; else only implicit_ssl_port."""
        if ctx.tls_contexts is None:
            return None
        return ctx.tls_contexts if cfg.implicit_ssl or sock.getsockname()[1] == cfg.implicit_ssl_port else None

    loop = asyncio.get_running_loop()
    servers: list[Any]
    if cfg.proxy_protocol_enable:  # a PROXY header first, from a trusted balancer; then the session
        servers = [_ProxiedListener(ctx, s, tls_for(s), protocol) for s in sockets]
    else:
        servers = [await loop.create_server(protocol, sock=s, ssl=tls_for(s),
                                            ssl_handshake_timeout=handshake_deadline(cfg) if tls_for(s) else None)
                   for s in sockets]
    stop = asyncio.Event()
    notifier = getattr(ctx, "notifier", None)  # sd_notify: set only when this worker is the main process
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, functools.partial(_reopen, ctx, notifier, sessions))
    stop_ops = start_worker_ops(ctx, lambda: sessions, loop)  # who/kick, the supervisor's link, sd_notify
    ops_http = getattr(ctx, "ops_http", None)  # metrics_listen, one worker: /metrics and /status (ops/http.py)
    if ops_http is not None:
        await ops_http.start()
    if sandbox is not None:  # seccomp_sandbox: the listeners are ready, the loop runs; from here on
        sandbox()  # only the calls a worker needs (priv/seccomp.py, passed in by cli.py)
    if ready:
        ready()
    if notifier is not None:
        notifier.ready(len(sessions))
    await stop.wait()
    if notifier is not None:
        notifier.stopping()
    stop_ops()
    for srv in servers:
        srv.close()
    if sessions:
        all_ended.clear()
        for cc in list(sessions):
            cc.stop()  # the session ends quietly
        try:
            await asyncio.wait_for(all_ended.wait(), 5)
        except TimeoutError:
            pass


def _reopen(ctx: ServerContext, notifier: Any, sessions: set[ControlConnection]) -> None:
    """SIGHUP: logrotate moved the logs (sd_notify: RELOADING=1 around it)."""
    if notifier is not None:
        notifier.reloading()
    ctx.events.reopen()
    if notifier is not None:
        notifier.ready(len(sessions))


def _title(count: int) -> None:
    """setproctitle_enable: a pooled process hosts many sessions; it shows how many."""
    proctitle.show(f"pooled: {count} session{'' if count == 1 else 's'}")


class _HostsGate(asyncio.Protocol):
    """tcp_wrappers=YES: hosts.allow / hosts.deny decide before the session starts
    (no greeting, no byte read).  An address rule decides at once; a name rule
    waits for a reverse lookup in a thread, bounded in time, while the loop goes on.
    Granted, the connection goes to the session's protocol; denied, vsftpd's 421."""

    def __init__(self, ctx: ServerContext, session: Callable[[], ControlConnection],
                 addresses: tuple[str, str] | None = None) -> None:
        self.ctx, self.session = ctx, session
        self.addresses = addresses  # (real local, declared client) behind a PROXY header
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self._decide(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _decide(self, transport: Any) -> None:
        try:
            await self._check(transport)
        except Exception:  # our bug: this connection is refused (fail closed), the others go on
            log.exception("tcp_wrappers check failed")
            transport.abort()

    async def _check(self, transport: Any) -> None:
        client, server = transport.get_extra_info("peername")[0], transport.get_extra_info("sockname")[0]
        if self.addresses is not None:  # the declared client decides, as it does everywhere
            client = self.addresses[1]
        rules = hostsaccess.load(hostsaccess.rules_dir(self.ctx.cfg))  # two small local files
        decision = hostsaccess.decide(rules, hostsaccess.Peer(client), hostsaccess.Peer(server))
        if decision is hostsaccess.NEED_NAME:
            loop = asyncio.get_running_loop()
            try:
                name, paranoid = await asyncio.wait_for(
                    loop.run_in_executor(None, rdns.lookup, hostsaccess.host_addr(client)), rdns.LOOKUP_SECONDS)
            except TimeoutError:
                name, paranoid = "", False
            decision = hostsaccess.decide(rules, hostsaccess.Peer(client, name, paranoid), hostsaccess.Peer(server))
        assert isinstance(decision, hostsaccess.Decision)
        decision = hostsaccess.without_load_conf(decision)
        if transport.is_closing():
            return
        if decision.verdict is hostsaccess.Verdict.DENY:
            log.warning("%s: refused by %s", hostsaccess.host_addr(client), decision.where or "hosts.deny")
            self.ctx.events.connect_refused(self.ctx.session_id(), hostsaccess.host_addr(client),
                                            hostsaccess.DENIED_TEXT)
            transport.write(hostsaccess.DENIED_REPLY)
            transport.close()
            return
        self.task = None
        cc = self.session()
        transport.set_protocol(cc)
        cc.connection_made(transport)
        if not transport.is_closing():
            transport.resume_reading()


class _ProxiedListener:
    """proxy_protocol_enable=YES: one listening socket whose connections come from a
    balancer and start with a PROXY header (net/proxyproto.py).

    A peer outside proxy_protocol_from, or a header that is malformed, missing or
    late (HEADER_SECONDS), is closed before any reply, with one warning line and a
    "CONNECT" log event.  Otherwise the session starts on the socket as create_server
    would start it (tcp_wrappers' gate, TLS on an implicit port: its handshake comes
    after the header), with the declared client as its remote address.  Headers are
    read in tasks while accepting goes on; at most MAX_PENDING at a time, each bounded
    by its deadline, so half-open connections cannot grow without end."""

    MAX_PENDING = 1024
    ACCEPTS_PER_WAKE = 64  # then the loop serves the others
    BACKOFF = 1.0  # seconds without accepting after EMFILE / ENFILE / ENOBUFS / ENOMEM

    def __init__(self, ctx: ServerContext, sock: socket.socket, tls: Any,
                 protocol: Callable[[tuple[str, str], str | None], asyncio.Protocol]) -> None:
        self.ctx, self.sock, self.tls, self.protocol = ctx, sock, tls, protocol
        self.trusted: proxyproto.TrustedSources = ctx.proxy_trusted
        self.pending: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        for task in list(self.pending):
            task.cancel()

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.ACCEPTS_PER_WAKE):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # another worker took it, or the client gave up already
            except OSError as e:  # out of descriptors or memory: pause, as asyncio's own server does
                log.warning("accept failed: %s; pausing for %.0f s", e, self.BACKOFF)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(self.BACKOFF, self._resume)
                return
            self._adopt(conn, str(peer[0]))

    def _adopt(self, conn: socket.socket, peer: str) -> None:
        if peer not in self.trusted:
            self._refuse(conn, peer, "not in proxy_protocol_from")
        elif len(self.pending) >= self.MAX_PENDING:
            self._refuse(conn, peer, f"{self.MAX_PENDING} connections already wait for their PROXY header")
        else:
            task = self.loop.create_task(self._start(conn, peer))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    def _refuse(self, conn: socket.socket, peer: str, why: str) -> None:
        shown = hostsaccess.host_addr(peer)
        log.warning("%s: connection refused: %s", shown, why)  # logged before the close is seen
        self.ctx.events.connect_refused(self.ctx.session_id(), shown, f"refused: {why}")
        conn.close()

    async def _start(self, conn: socket.socket, peer: str) -> None:
        started = False
        try:
            conn.setblocking(False)
            try:
                declared = await proxyproto.read_header(conn)
            except proxyproto.ProxyHeaderError as e:
                self._refuse(conn, peer, f"PROXY header: {e}")
                return
            except TimeoutError:
                self._refuse(conn, peer, f"no whole PROXY header within {proxyproto.HEADER_SECONDS:.0f} s")
                return
            client = proxyproto.effective(declared, conn)[0]
            local = str(conn.getsockname()[0])
            advertise = declared.server[0] if declared.server is not None else None
            started = True  # from here on the transport owns the socket (and closes it on failure)
            await self.loop.connect_accepted_socket(
                lambda: self.protocol((local, client), advertise), conn, ssl=self.tls,
                ssl_handshake_timeout=handshake_deadline(self.ctx.cfg) if self.tls else None)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError):
            pass  # the peer went away or failed its TLS handshake: as create_server, nothing to say
        finally:
            if not started:
                conn.close()


def _run_worker(ctx: ServerContext, sockets: Listener, ready: Callable[[], None] | None = None,
                sandbox: Sandbox = None) -> None:
    from ..ops.uploads import start_hooks
    start_hooks(ctx)  # upload_hook: its runner is forked now, before the sandbox forbids it
    asyncio.run(_serve(ctx, sockets, ready, sandbox))


def _die_with_parent(parent: int) -> None:
    """A worker never outlives its supervisor (SIGKILLed, say): it then gets SIGTERM,
    as on a stop.  Checked against `parent` in case it died before the signal was set."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)


def _spawn(ctx: ServerContext, listeners: list[Listener], i: int, sandbox: Sandbox = None,
           ops: SupervisorOps | None = None) -> int:
    parent = os.getpid()
    link = ops.for_worker(ctx, i) if ops is not None else None  # who/kick and the session count
    pid = os.fork()
    if pid:
        if link is not None:
            link.close()
        return pid
    code = 0
    try:
        if ops is not None and link is not None:
            ops.in_worker(ctx, link)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until _serve installs its own handler
        _die_with_parent(parent)
        if ctx.limits is not None:
            ctx.limits.attach(i)
        _run_worker(ctx, listeners[i], sandbox=sandbox)  # the sockets every worker shares
    except BaseException:
        log.exception("worker failed")
        code = 1
    finally:
        os._exit(code)


def serve_pooled(ctx: ServerContext, listeners: list[Listener], ready: Callable[[], None] | None = None,
                 sandbox: Sandbox = None) -> int:
    """Run one worker per listener set; with one, in this process.  Returns an exit code.

    With several, this process supervises: it keeps the sockets (so nothing is
    lost while a crashed worker is replaced) and passes SIGTERM on.  `sandbox`:
    called in each worker once it serves (seccomp_sandbox), never in the supervisor.
    """
    if ctx.cfg.setproctitle_enable:
        proctitle.take_over()  # now: it reads /proc, and the workers inherit the room
    if len(listeners) == 1:
        _run_worker(ctx, listeners[0], ready, sandbox)
        return 0
    proctitle.show(f"pooled: supervisor of {len(listeners)} workers")
    stopping = False
    ops: SupervisorOps | None = SupervisorOps(ctx)
    if ops is not None and not ops.wanted:
        ops = None
    workers = {_spawn(ctx, listeners, i, sandbox, ops): i for i in range(len(listeners))}

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if ops is not None and ops.notifier is not None:
            ops.notifier.stopping()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def hup(signum: int, _frame: Any) -> None:
        if ops is not None and ops.notifier is not None:
            ops.notifier.reloading()  # READY=1 follows once the workers have been told
        for pid in workers:  # each worker reopens its own log files
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        if ops is not None and ops.notifier is not None:
            ops.notifier.ready(ops.last_count)  # the thread's last count: no link is asked from a handler

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    if ops is not None:
        ops.start()
    ops_http = getattr(ctx, "ops_supervisor", None)  # metrics_listen: the workers' numbers summed (ops/multiproc.py)
    if ops_http is not None:
        ops_http.start_thread()
    if ready:
        ready()
    if ops is not None and ops.notifier is not None:
        ops.notifier.ready()
    status = 0
    while workers:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        i = workers.pop(pid, None)
        if i is None:
            continue
        code = os.waitstatus_to_exitcode(st)
        if ctx.limits is not None:
            ctx.limits.forget(i)  # its sessions died with it
        if not stopping:
            why = ", killed by the seccomp sandbox (SIGSYS)" if code == -signal.SIGSYS else ""
            print(f"ftpwarden: worker {pid} ended ({code}{why}); starting a new one", file=sys.stderr)
            workers[_spawn(ctx, listeners, i, sandbox, ops)] = i
        elif code not in (0, -signal.SIGTERM):
            status = 1
    return status
