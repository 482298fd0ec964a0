"""Isolated mode's PROXY header reader: the `ftpwarden-proxy` process.

With proxy_protocol_enable, every control connection from a balancer starts with
a PROXY header: network bytes, which no root process parses.  The zygote forks
this process (a heap that never held a password) when the broker asks, before
the broker's first accept and again if it dies.  It keeps only its channel,
drops to `nopriv_user` in `secure_chroot_dir` (NO_NEW_PRIVS, not dumpable,
parent-death signal), installs the pre-login process's seccomp list (asyncio on
sockets it is given; it opens no network socket), and then, for each
`ProxyRead(token)` with a socket (a dup: the broker keeps its own copy), reads
the header with the one reader (net/proxyproto.py: exactly the header, never a
byte after it, within HEADER_WAIT), closes its copy and answers
`ProxyDeclared(token, ok, client, server, why)`.  At most READS_MAX at once.

The broker's side (`ProxyLink`) never blocks: a full channel refuses that
connection; an answer that does not come within HEADER_WAIT + ANSWER_GRACE
closes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import pwd
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..net import proctitle
from ..net.proxyproto import HEADER_SECONDS, read_header
from ..proto.proxyheader import ProxyHeaderError
from .channel import Channel
from .creds import close_strays, drop_privileges
from .messages import ChannelError, ProxyDeclared, ProxyRead, encode

__all__ = ["NAME", "READS_MAX", "HEADER_WAIT", "ANSWER_GRACE", "ProxyLink", "Pending", "serve", "checked_ip"]

log = logging.getLogger("ftpwarden.proxy")

NAME = "ftpwarden-proxy"  # /proc/PID/comm (15 bytes: it fits)
READS_MAX = 256  # headers read at once; the broker refuses (closes) connections beyond
HEADER_WAIT = HEADER_SECONDS  # seconds for the header (HAProxy sends it with its first packet)
ANSWER_GRACE = 1.0  # the broker's own deadline is HEADER_WAIT + this
BURST = 64  # requests taken per wake-up
MEMORY_LIMIT = 256 << 20  # address space it may add (RLIMIT_AS): it holds at most READS_MAX small reads


# ---------------------------------------------------------------------- the broker's side

@dataclass(eq=False)
class Pending:
    """A connection whose header is being read: the broker's copy of the socket."""

    conn: socket.socket
    peer: str  # the balancer's address (the socket's own peer)
    timer: Any = None


class ProxyLink:
    """The broker's handle on one ftpwarden-proxy process: its channel and the
    connections it reads for.  Never blocks."""

    def __init__(self, pid: int, pidfd: int, chan: Channel) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.chan = chan
        self.pending: dict[int, Pending] = {}
        self._tokens = itertools.count(1)

    def fileno(self) -> int:
        return self.chan.fileno()

    def full(self) -> bool:
        return len(self.pending) >= READS_MAX

    def ask(self, conn: socket.socket, peer: str) -> tuple[int, Pending]:
        """Send a dup of `conn` to be read; the broker keeps `conn` (now pending).
        BlockingIOError: the channel is full; ChannelClosed: the process is gone."""
        token = next(self._tokens)
        self.chan.send(ProxyRead(token), (conn.fileno(),))  # SCM_RIGHTS: the kernel dups it
        pend = Pending(conn, peer)
        self.pending[token] = pend
        return token, pend

    def answers(self) -> Iterator[tuple[Pending, ProxyDeclared]]:
        """Each answer that came, with its pending connection (taken out of `pending`);
        answers for connections no longer pending (late, closed) are dropped.
        ChannelClosed: the process is gone; ChannelError: it broke the protocol."""
        for _ in range(BURST):
            try:
                msg, _ = self.chan.recv(ProxyDeclared)
            except BlockingIOError:
                return
            assert isinstance(msg, ProxyDeclared)
            pend = self.pending.pop(msg.token, None)
            if pend is not None:
                yield pend, msg

    def drop(self, token: int) -> Pending | None:
        return self.pending.pop(token, None)

    def close(self) -> list[Pending]:
        """Close the channel (the process exits on it); what was pending, for the broker to close."""
        left = list(self.pending.values())
        self.pending.clear()
        self.chan.close()
        return left


def checked_ip(text: str) -> str:
    """An address from the reader, checked (it is unprivileged): the canonical text; ValueError."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# ---------------------------------------------------------------------- the process

def serve(cfg: Any, chan: socket.socket) -> None:
    """The process's body, run in the zygote's child (its death signal armed)."""
    from . import seccomp
    from .checker import _name
    from .logrelay import quiet_stdio
    _name(NAME.encode())
    proctitle.show("PROXY header reader")
    close_strays({chan.fileno()})
    quiet_stdio()  # fd 2 may be root's log file: never writable from here
    nobody = pwd.getpwnam(cfg.nopriv_user or "nobody")
    drop_privileges(nobody.pw_uid, nobody.pw_gid, root=cfg.secure_chroot_dir, memory_limit=MEMORY_LIMIT)
    if cfg.seccomp_sandbox:  # the pre-login list: asyncio on the sockets it is given, no socket of its own
        seccomp.install("prelogin")
    asyncio.run(_serve(chan))


async def _serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    chan = Channel(sock)
    done = loop.create_future()
    reads: set[asyncio.Task[None]] = set()
    out: deque[bytes] = deque()

    def end() -> None:
        if not done.done():
            done.set_result(None)

    def flush() -> None:
        while out:
            try:
                sock.send(out[0])
            except BlockingIOError:
                loop.add_writer(sock, flush)
                return
            except OSError:
                end()
                return
            out.popleft()
        loop.remove_writer(sock)

    def answer(msg: ProxyDeclared) -> None:
        out.append(encode(msg))
        if len(out) == 1:
            flush()

    def on_request() -> None:
        for _ in range(BURST):
            try:
                msg, fds = chan.recv(ProxyRead, max_fds=1)
            except BlockingIOError:
                return
            except ChannelError:  # the broker is gone (or broke the protocol): we end
                end()
                return
            assert isinstance(msg, ProxyRead)
            if len(fds) != 1:
                answer(_refused(msg.token, "no socket came with the request"))
            elif len(reads) >= READS_MAX:
                os.close(fds[0])
                answer(_refused(msg.token, f"{READS_MAX} headers are being read already"))
            else:
                task = loop.create_task(_read_one(msg.token, fds[0], answer))
                reads.add(task)
                task.add_done_callback(reads.discard)

    loop.add_reader(sock, on_request)
    await done
    loop.remove_reader(sock)
    for task in reads:
        task.cancel()


def _refused(token: int, why: str) -> ProxyDeclared:
    return ProxyDeclared(token, False, "", 0, "", 0, why[:300])


async def _read_one(token: int, fd: int, answer: Any) -> None:
    try:
        conn = socket.socket(fileno=fd)
    except OSError as e:
        os.close(fd)
        answer(_refused(token, f"not a socket: {e.strerror or e}"))
        return
    try:
        if conn.type != socket.SOCK_STREAM or conn.family not in (socket.AF_INET, socket.AF_INET6):
            raise ProxyHeaderError("not a TCP connection")
        conn.setblocking(False)
        declared = await read_header(conn, HEADER_WAIT)
        client, server = declared.client, declared.server
        answer(ProxyDeclared(token, True, client[0] if client else "", client[1] if client else 0,
                             server[0] if server else "", server[1] if server else 0, ""))
    except ProxyHeaderError as e:
        answer(_refused(token, str(e) or "malformed PROXY header"))
    except TimeoutError:
        answer(_refused(token, f"no whole PROXY header within {HEADER_WAIT:g} s"))
    except (ConnectionError, EOFError):
        answer(_refused(token, "the connection closed before a complete PROXY header"))
    except OSError as e:
        answer(_refused(token, f"read failed: {e.strerror or e}"))
    except Exception as e:  # never the process: one connection refused
        log.exception("PROXY header: %s", e)
        answer(_refused(token, f"internal error: {type(e).__name__}"))
    finally:
        conn.close()

