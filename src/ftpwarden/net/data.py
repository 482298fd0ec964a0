"""Data connections: passive listeners, active connects, and moving the bytes.

Binary downloads use sendfile (zero copy) on plain connections; uploads read
into one large buffer per transfer; TYPE A converts line endings on the way
(RFC 959 3.1.1.1).  One mover serves plain and TLS connections (`PlainConn`,
`tls.TlsConn`: the same non-blocking recv_into/send).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..policy.config import ConfigError
from ..proto import addr
from . import proxyproto
from .tls import wait_socket

__all__ = ["DataChannel", "DataRefused", "AsciiEncoder", "AsciiDecoder", "PlainConn", "send_file", "receive_file",
           "send_bytes", "relay", "active_socket", "passive_listener", "resolved_pasv_address", "chunk_size"]

RECV_BUFFER = 1 << 20  # uploads: one 1 MiB buffer per transfer
READ_CHUNK = 1 << 16   # ASCII downloads read this much at a time
SENDFILE_CHUNK = 1 << 20  # one sendfile call moves at most this much, so other sessions get a turn
TLS_CHUNK = 256 * 1024  # downloads over TLS: file bytes read and encrypted at a time
# Zero-copy downloads (`_tune_for_sendfile`): room for this much in flight (the kernel
# doubles it, capped by net.core.wmem_max; sendfile queues page references, not
# copies), but at most UNSENT_LOW of it not yet sent: the socket wakes us when the
# unsent part is half gone, so the bytes leave while we queue more, not in bursts
# driven by the peer's ACKs.  200 loopback downloads: 1.7x the aggregate rate of
# autotuned buffers, and 40 % less CPU per GiB for both ends together.
SEND_BUFFER = 4 << 20
UNSENT_LOW = 256 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux; named in Python 3.12+
VSFTPD_CHUNK = 65536  # vsftpd's VSFTP_DATA_BUFSIZE: trans_chunk_size at or above it means "automatic"


def chunk_size(setting: int | None) -> int:
    """trans_chunk_size as vsftpd reads it: 0 (or 64 KiB and more) lets us pick
    (0 here: our own sizes above), anything smaller is the bytes per I/O call,
    at least 4096."""
    if not setting or setting <= 0 or setting >= VSFTPD_CHUNK:
        return 0
    return max(4096, setting)


class DataRefused(Exception):
    """No data connection could be made (timeout, refused, wrong peer)."""


class DataChannel:
    """The data side of one control connection: at most one listener or target."""

    __slots__ = ("cfg", "broker", "local_ip", "remote_ip", "listener", "advertise", "trusted")

    def __init__(self, cfg: Any, *, local_ip: str, remote_ip: str, broker: Any = None,
                 advertise: str | None = None) -> None:
        """`advertise`: the address PASV names when pasv_address is unset (the server
        address a PROXY header declared); else local_ip, where the listener is."""
        self.cfg = cfg
        self.broker = broker  # isolated mode: the monitor makes active-mode sockets
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.advertise = advertise
        self.trusted = proxyproto.trusted_from(cfg)  # proxy_protocol_enable: balancers send a header first
        self.listener: socket.socket | None = None

    # ------------------------------------------------------------ passive

    async def open_passive(self) -> tuple[str, int]:
        """A listener on the control connection's local address; return (host, port).
        isolate_network (isolated mode): this process has no network of its own,
        the monitor makes the listener and passes it in."""
        self.close()
        if self.broker is not None and self.cfg.isolate_network:
            sock = await asyncio.to_thread(self.broker.passive_listen)
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.close()
                raise OSError(errno.EPROTO, "the monitor's passive socket is not listening")
            sock.setblocking(False)
        else:
            sock = passive_listener(self.cfg, self.local_ip)
        self.listener = sock
        host = (self.cfg.pasv_address or addr.ipv4_of(self.advertise or "") or addr.ipv4_of(self.local_ip)
                or self.local_ip)
        return host, sock.getsockname()[1]

    async def _accept(self, timeout: float) -> socket.socket:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:  # a passive client connects before it sends RETR: it is usually waiting already
            conn, peer = self.listener.accept()
        except BlockingIOError:
            pass
        else:
            if await self._admitted(conn, peer[0], deadline):
                return conn
            conn.close()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DataRefused("accept timed out")
            try:
                async with asyncio.timeout(remaining):
                    conn, peer = await loop.sock_accept(self.listener)
            except TimeoutError:
                raise DataRefused("accept timed out") from None
            if await self._admitted(conn, peer[0], deadline):
                return conn
            conn.close()  # a third party raced for our port: refuse it, keep waiting for the client

    async def _admitted(self, conn: socket.socket, peer: str, deadline: float) -> bool:
        """The data connection comes from the session's client (or pasv_promiscuous).
        From a trusted balancer (proxy_protocol_enable) it starts with a PROXY header,
        consumed here, and its declared client must be the session's; from any other
        peer no header is read (a node advertising its own address for data)."""
        if self.trusted is not None and peer in self.trusted:
            conn.setblocking(False)
            left = min(proxyproto.HEADER_SECONDS, deadline - asyncio.get_running_loop().time())
            try:
                peer = proxyproto.effective(await proxyproto.read_header(conn, max(0.1, left)), conn)[0]
            except (proxyproto.ProxyHeaderError, TimeoutError, OSError):
                return False
        return bool(self.cfg.pasv_promiscuous) or addr.same_host(peer, self.remote_ip)

    # ------------------------------------------------------------ active

    async def _connect(self, host: str, port: int, timeout: float) -> socket.socket:
        if self.broker is not None:
            try:
                return await asyncio.wait_for(asyncio.to_thread(self.broker.active_socket, host, port), timeout)
            except (TimeoutError, OSError) as e:
                raise DataRefused(f"monitor could not connect: {e}") from None
        try:
            sock = active_socket(host, self.local_ip)
        except OSError as e:
            raise DataRefused(f"connect failed: {e}") from None
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
        except (TimeoutError, OSError) as e:
            sock.close()
            raise DataRefused(f"connect failed: {e}") from None
        return sock

    async def connect(self, kind: str | None, target: tuple[str, int] | None) -> socket.socket:
        """The data socket for one transfer, as PASV/PORT arranged."""
        try:
            if kind == "pasv" and self.listener is not None:
                sock = await self._accept(float(self.cfg.accept_timeout or 60))
            elif kind == "port" and target is not None:
                sock = await self._connect(target[0], target[1], float(self.cfg.connect_timeout or 60))
            else:
                raise DataRefused("no data channel prepared")
        finally:
            self.close()  # one listener serves one transfer
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def passive_listener(cfg: Any, local_ip: str) -> socket.socket:
    """A non-blocking socket listening on `local_ip` at a port of pasv_min_port..
    pasv_max_port (any free port when they are unset), for one passive data
    connection.  As vsftpd: at most bind_retries random ports are tried, the
    next only after EADDRINUSE or EACCES; then the error is the caller's."""
    family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
    lo, hi = int(cfg.pasv_min_port or 0), int(cfg.pasv_max_port or 0)
    last: OSError | None = None
    for port in _passive_ports(lo, hi, max(1, int(cfg.bind_retries or 0))):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # a port whose last data connection is in TIME_WAIT is still free to listen on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((local_ip, port))
            sock.listen(1)
        except OSError as e:
            sock.close()
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            last = e
            continue
        return sock
    raise last or OSError(errno.EADDRINUSE, "no free passive port")


def resolved_pasv_address(cfg: Any) -> Any:
    """The config with pasv_address as the IPv4 address the 227 reply carries.

    pasv_addr_resolve=YES: pasv_address is a host name, resolved here, once per
    reading of the config (start-up, SIGHUP), never per PASV.  A name that does
    not resolve, or (without it) a value that is not an IPv4 address, is a
    ConfigError at the line that set pasv_address."""
    name = cfg.pasv_address
    if not name:
        return cfg
    where = cfg.where.get("pasv_address", "pasv_address")
    if not cfg.pasv_addr_resolve:
        if addr.ipv4_of(name) != name:
            raise ConfigError(where, f"pasv_address={name} is not an IPv4 address "
                                     "(set pasv_addr_resolve=YES to give a host name)")
        return cfg
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(where, f"pasv_address={name}: cannot resolve it (pasv_addr_resolve=YES): "
                                 f"{reason}") from None
    return cfg.replace(pasv_address=str(infos[0][4][0]))


def _passive_ports(lo: int, hi: int, tries: int) -> Iterator[int]:
    """`tries` distinct ports of lo..hi in random order (fewer if the range is
    smaller); 0 (the kernel picks) when no range is set."""
    if not (lo and hi and lo <= hi):
        yield 0
        return
    yield from random.sample(range(lo, hi + 1), min(hi - lo + 1, tries))


def active_socket(host: str, local_ip: str, port: int = 0) -> socket.socket:
    """An unconnected socket for an active (PORT) data connection to `host`,
    bound to the control connection's local address (the client sees the data
    come from the server it talks to); `port` 20 for connect_from_port_20 (the
    monitor, as root).  Port 0: any address will do if that one will not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    local = local_ip if family == socket.AF_INET6 else (addr.ipv4_of(local_ip) or "")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # port 20 again and again
        try:
            sock.bind((local, port))
        except OSError:
            if port:
                raise
            sock.bind(("", 0))
    except BaseException:
        sock.close()
        raise
    return sock


class AsciiEncoder:
    """LF -> CRLF for downloads; a CR already before LF is kept as is."""

    def __init__(self) -> None:
        self._last_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._last_cr and data[:1] == b"\n":
            out = out[1:]  # the CR went out in the previous chunk
        self._last_cr = data[-1:] == b"\r"
        return out


class AsciiDecoder:
    """CRLF -> LF for uploads; a CR split from its LF across chunks is held back."""

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""


class PlainConn:
    """A plain data connection, with the interface of tls.TlsConn."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_into(self, view: memoryview) -> int:
        return self.sock.recv_into(view)

    def send(self, data: Any) -> int:
        return self.sock.send(data)

    def buffered(self) -> bool:
        return False

    def flush(self) -> bool:
        return True  # nothing is held in user space

    async def close(self, *, confirm: float = 0.0) -> bool:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()
        return True

    def abort(self) -> None:
        self.sock.close()


class Conn(Protocol):
    """A data connection: PlainConn or tls.TlsConn (non-blocking: BlockingIOError when not ready)."""

    sock: socket.socket

    def recv_into(self, view: memoryview) -> int: ...

    def send(self, data: Any) -> int: ...

    def buffered(self) -> bool: ...

    def flush(self) -> bool: ...  # True once every byte given to send is on the socket

    async def close(self, *, confirm: float = 0.0) -> bool: ...

    def abort(self) -> None: ...


async def _recv_some(conn: Conn, view: memoryview) -> int:
    while True:
        try:
            return conn.recv_into(view)
        except BlockingIOError:
            await wait_socket(conn.sock, writing=False)


async def _send_all(conn: Conn, data: Any) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[conn.send(view):]
        except BlockingIOError:
            await wait_socket(conn.sock, writing=True)


async def send_bytes(conn: Conn, data: bytes) -> int:
    await _send_all(conn, data)
    return len(data)


async def relay(src: Conn, dst: Conn, chunk: int = 256 * 1024) -> None:
    """Copy `src` to `dst` until `src` ends cleanly; a cut raises (tls.Truncated)."""
    view = memoryview(bytearray(chunk))
    while n := await _recv_some(src, view):
        await _send_all(dst, view[:n])


class Stalled:
    """data_connection_timeout: the transfer fails when no byte moves for `seconds`.

    `moved` only notes the time (it runs on every wake-up of a transfer); one
    timer per transfer reads the note when it falls due and moves itself on.
    Rescheduling the timeout itself on every chunk cost a timer handle and a
    heap push each time (a tenth of a bulk download's Python time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds or 0.0
        self.last = 0.0
        self._cm: Any = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Stalled:
        loop = asyncio.get_running_loop()
        self._loop, self._time = loop, loop.time  # looked up once, not per chunk
        self._cm = asyncio.timeout(None)
        await self._cm.__aenter__()
        self.last = loop.time()
        if self.seconds:
            self._timer = loop.call_at(self.last + self.seconds, self._check)
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return await self._cm.__aexit__(*exc)

    def moved(self) -> None:
        self.last = self._time()

    def _check(self) -> None:
        due = self.last + self.seconds
        now = self._time()
        if due > now:  # bytes moved since this timer was set: wait from the last of them
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        self._cm.reschedule(now)  # expires at once: the transfer's task gets TimeoutError


class Throttle:
    """anon_max_rate / local_max_rate: keep a transfer's average at `rate` bytes/s;
    `shared` (user_max_rate) reserves time on the account's bucket shared by all
    of its sessions and returns how long to wait.

    `grant` > 0 (isolated mode): `shared` is a blocking request to the monitor,
    asked off the event loop for `grant` bytes at a time; the bytes of a grant
    then move without asking again (a few requests a second)."""

    def __init__(self, rate: int, shared: Callable[[int], float] | None = None, grant: int = 0) -> None:
        self.rate = rate
        self.shared = shared
        self.grant = grant
        self.granted = 0  # bytes of grants not yet moved
        self.started = 0.0
        self.moved = 0

    def chunk(self, default: int) -> int:
        # about ten writes a second, so the rate is smooth, not bursty
        return max(4096, min(default, self.rate // 10)) if self.rate else min(default, 64 * 1024)

    async def account(self, n: int) -> None:
        wait = await self._shared_wait(n) if self.shared else 0.0
        if self.rate:
            now = asyncio.get_running_loop().time()
            if not self.moved:
                self.started = now
            self.moved += n
            wait = max(wait, self.moved / self.rate - (now - self.started))
        if wait > 0:
            await asyncio.sleep(wait)

    async def _shared_wait(self, n: int) -> float:
        assert self.shared is not None
        if not self.grant:
            return self.shared(n)
        self.granted -= n
        if self.granted >= 0:
            return 0.0
        ask = max(self.grant, -self.granted)
        wait = await asyncio.to_thread(self.shared, ask)
        self.granted += ask
        return wait


async def send_file(conn: Conn, fd: int, offset: int, ascii_mode: bool, progress: list[int],
                    stall_timeout: float = 0, throttle: Throttle | None = None, *, chunk: int = 0,
                    use_sendfile: bool = True) -> None:
    """Send the file from `offset`; `progress[0]` counts bytes sent (for aborts and logs).
    `chunk` (trans_chunk_size, see `chunk_size`): bytes per read or sendfile call, 0
    for ours; `use_sendfile` False: a plain connection gets a read/send loop too."""
    async with Stalled(stall_timeout) as stall:
        if not ascii_mode and throttle is None:
            pos = [offset]
            if isinstance(conn, PlainConn) and use_sendfile:
                _tune_for_sendfile(conn.sock)
                count = chunk or SENDFILE_CHUNK

                def step(sfd: int) -> bool:
                    sent = os.sendfile(sfd, fd, pos[0], count)
                    pos[0] += sent
                    progress[0] += sent
                    if 0 < sent < count:  # the socket is full (or the file ends): no call to
                        raise BlockingIOError      # learn EAGAIN; epoll says when to go on
                    return sent == 0
            elif isinstance(conn, PlainConn):  # use_sendfile=NO: read, then send what was read
                count = chunk or READ_CHUNK
                pending = [memoryview(b"")]

                def step(sfd: int) -> bool:
                    if not pending[0]:
                        data_ = os.pread(fd, count, pos[0])
                        if not data_:
                            return True
                        pos[0] += len(data_)
                        pending[0] = memoryview(data_)
                    sent = conn.send(pending[0])  # BlockingIOError keeps `pending` for the next turn
                    pending[0] = pending[0][sent:]
                    progress[0] += sent
                    return False
            else:  # no sendfile through TLS in Python 3.11 (no kernel TLS): copy
                count = chunk or TLS_CHUNK

                def step(sfd: int) -> bool:
                    if not conn.flush():
                        raise BlockingIOError
                    piece = os.pread(fd, count, pos[0])
                    if piece:
                        conn.send(piece)  # takes it all (or raised before)
                    pos[0] += len(piece)
                    progress[0] += len(piece)
                    return not piece
            await _pump(conn, step, stall, writing=True)
            return
        encoder = AsciiEncoder() if ascii_mode else None
        throttle = throttle or Throttle(0)
        size = throttle.chunk(chunk or READ_CHUNK)
        os.lseek(fd, offset, os.SEEK_SET)
        while piece := os.read(fd, size):
            await _send_all(conn, encoder.feed(piece) if encoder else piece)
            progress[0] += len(piece)
            stall.moved()
            await throttle.account(len(piece))


async def receive_file(conn: Conn, fd: int, ascii_mode: bool, progress: list[int],
                       stall_timeout: float = 0, throttle: Throttle | None = None, *, chunk: int = 0,
                       limit: int | None = None) -> None:
    """Read the data connection to its end into `fd`; `progress[0]` counts bytes
    written.  A TLS stream cut without close_notify raises tls.Truncated, after
    every byte decrypted before the cut is written.  `chunk`: bytes per read (0: ours).
    `limit` (a quota's grant): more bytes than this raise EDQUOT before they are written."""
    buf = bytearray(chunk or RECV_BUFFER)
    view = memoryview(buf)
    decoder = AsciiDecoder() if ascii_mode else None

    def within(n: int) -> None:
        if limit is not None and progress[0] + n > limit:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    async with Stalled(stall_timeout) as stall:
        if decoder is None and throttle is None:
            def step(sfd: int) -> bool:
                n = conn.recv_into(view)
                within(n)
                _write_all(fd, view[:n])
                progress[0] += n
                return n == 0
            await _pump(conn, step, stall, writing=False)
            return
        throttle = throttle or Throttle(0)
        size = throttle.chunk(RECV_BUFFER)
        while n := await _recv_some(conn, view[:size]):
            within(n)
            _write_all(fd, decoder.feed(bytes(view[:n])) if decoder else view[:n])
            progress[0] += n
            stall.moved()
            await throttle.account(n)
    if decoder is not None:
        _write_all(fd, decoder.flush())


async def _pump(conn: Conn, step: Callable[[int], bool], stall: Stalled, *, writing: bool) -> None:
    """Call `step` whenever the socket is ready, until it returns True (EOF).

    asyncio's sock_sendfile/sock_recv_into re-register the fd with epoll on
    every call; a transfer keeps one registration for its whole life instead,
    which is what makes bulk transfers run at the loopback's speed.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sfd = conn.sock.fileno()

    def ready() -> None:
        if done.done():
            return
        try:
            for _ in range(8):  # bounded, so other sessions get their turn
                if step(sfd):
                    done.set_result(None)
                    return
            stall.moved()
            if conn.buffered():  # TLS records already read: the socket will not wake us for them
                loop.call_soon(ready)
        except (BlockingIOError, InterruptedError):
            stall.moved()
        except (OSError, ssl.SSLError) as e:  # ssl.SSLError is an OSError; named for the reader
            done.set_exception(e)

    (loop.add_writer if writing else loop.add_reader)(sfd, ready)
    try:
        await done
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(sfd)


def _tune_for_sendfile(sock: socket.socket) -> None:
    if sock.family == socket.AF_UNIX:  # isolated TLS: plaintext to the helper, which has its own pace
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if UNSENT_LOW:  # 0: no cap (less server CPU on loopback, where the peer's ACKs then send)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, UNSENT_LOW)
    except OSError:  # a socket that cannot take them sends as before
        pass


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


