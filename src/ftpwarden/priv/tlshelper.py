"""Isolated mode's TLS helper: the pre-login worker, kept after login when TLS is on.

It is unprivileged (nopriv_user, empty chroot) and the only process of the
session holding the private key.  It owns the TLS state of the control
connection and relays its plaintext to the post-login worker over a
socketpair; for each PROT P data connection the worker passes it the TCP
socket and a socketpair end, and it does the handshake (checking session
reuse) and relays.  This costs one copy of every TLS byte, as vsftpd's SSL
slave does, and keeps all TLS parsing away from the login user's process.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any

from ..net import tls
from .channel import Channel, ChannelClosed
from .messages import ChannelError, DataWrapped, Refused, WrapData

__all__ = ["serve_helper", "TlsLink", "TlsRefused"]

RELAY_CHUNK = 256 * 1024


class TlsRefused(Exception):
    """The helper could not protect a data connection; the text says why."""


class TlsLink:
    """The post-login worker's side: hand a data socket over, get plaintext back."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.lock = threading.Lock()

    def wrap(self, sock: socket.socket) -> socket.socket:
        mine, theirs = socket.socketpair()
        try:
            with self.lock:
                self.chan.send(WrapData(), (sock.fileno(), theirs.fileno()))
                msg, _ = self.chan.recv(DataWrapped, Refused)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
            sock.close()
        if isinstance(msg, Refused):
            mine.close()
            raise TlsRefused(msg.reason)
        mine.setblocking(False)
        return mine


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, eof: bool) -> None:
    """Copy until EOF; then half-close (plaintext side) or close (TLS side)."""
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, ConnectionError):
        pass
    finally:
        try:
            if eof and writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
        except (OSError, RuntimeError):
            pass


async def _relay_data(cfg: Any, ctx: ssl.SSLContext, chan: Channel, tcp: socket.socket,
                      plain: socket.socket) -> None:
    timeout = float(cfg.accept_timeout or 60)
    try:
        stream = await tls.wrap_data(tcp, ctx, timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
        tcp.close()
        plain.close()
        chan.send(Refused(f"handshake failed ({e.__class__.__name__})"))
        return
    if cfg.require_ssl_reuse and not stream.reused:
        await stream.close()
        plain.close()
        chan.send(Refused(tls.REUSE_REQUIRED))
        return
    chan.send(DataWrapped())
    preader, pwriter = await asyncio.open_connection(sock=plain, limit=RELAY_CHUNK)
    # client -> worker ends with a half-close (upload EOF); worker -> client
    # ends with TLS close_notify (the client then knows the file is whole)
    await asyncio.gather(_pump(stream.reader, pwriter, eof=True),
                         _pump(preader, stream.writer, eof=False))
    await stream.close()
    pwriter.close()


async def _readable(fd: int) -> None:
    """Wait until `fd` can be read without blocking (no thread left behind)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _serve_requests(cfg: Any, ctx: ssl.SSLContext, chan: Channel) -> None:
    relays: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                await _readable(chan.fileno())
                _msg, fds = chan.recv(WrapData, max_fds=2)
            except (ChannelClosed, ChannelError):
                return
            if len(fds) != 2:
                return  # a malformed request ends the session
            tcp, plain = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
            task = asyncio.create_task(_relay_data(cfg, ctx, chan, tcp, plain))
            relays.add(task)
            task.add_done_callback(relays.discard)
    finally:
        for task in relays:
            task.cancel()


async def serve_helper(cfg: Any, ctx: ssl.SSLContext, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, plain: socket.socket, chan: Channel) -> None:
    """Relay the control connection and serve data handshakes until either side ends."""
    preader, pwriter = await asyncio.open_connection(sock=plain, limit=RELAY_CHUNK)
    tasks = [asyncio.create_task(_pump(reader, pwriter, eof=True)),
             asyncio.create_task(_pump(preader, writer, eof=False)),
             asyncio.create_task(_serve_requests(cfg, ctx, chan))]
    await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.wait(tasks[:2], timeout=5)  # let the last replies (221) reach the client
    for task in tasks:
        task.cancel()
    chan.close()
