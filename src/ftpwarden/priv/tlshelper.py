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
import functools
import itertools
import os
import select
import socket
import ssl
import threading
from typing import Any

from ..net import data, tls
from .channel import Channel, ChannelClosed
from .messages import ChannelError, DataEnded, DataSent, DataWrapped, Refused, WrapData

__all__ = ["serve_helper", "TlsLink", "TlsRefused"]

RELAY_CHUNK = 256 * 1024


class TlsRefused(Exception):
    """The helper could not protect a data connection; the text says why."""


class TlsLink:
    """The post-login worker's side: hand a data socket over, get plaintext back,
    then learn from the helper how the TLS stream ended (`ended`)."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.lock = threading.Lock()
        self._serials = itertools.count(1)
        self.serial = 0  # the transfer being relayed

    def wrap(self, sock: socket.socket, upload: bool, reuse_required: bool) -> socket.socket:
        mine, theirs = socket.socketpair()
        try:
            with self.lock:
                self.serial = next(self._serials)
                self.chan.send(WrapData(int(upload), self.serial, int(reuse_required)),
                               (sock.fileno(), theirs.fileno()))
                while True:  # the end report of an abandoned transfer may come first
                    msg, _ = self.chan.recv(DataWrapped, Refused, DataEnded)
                    if not isinstance(msg, DataEnded):
                        break
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

    def sent(self) -> None:
        """The download is written whole: the helper may end it with close_notify."""
        with self.lock:
            self.chan.send(DataSent(self.serial))

    def ended(self, timeout: float) -> str | None:
        """Wait for the helper's report on this transfer: None for a clean end, else why not."""
        try:
            with self.lock:
                while True:
                    poller = select.poll()  # not select(): an identity worker's descriptors pass 1024
                    poller.register(self.chan.fileno(), select.POLLIN)
                    if not poller.poll(timeout * 1000):
                        return "the TLS helper did not report the end of the transfer"
                    msg, _ = self.chan.recv(DataEnded)
                    assert isinstance(msg, DataEnded)
                    if msg.serial == self.serial:
                        return msg.reason or None
        except (ChannelError, OSError) as e:
            return f"TLS helper gone ({e.__class__.__name__})"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, eof: bool) -> None:
    """Control connection: copy until EOF; then half-close (plaintext side) or close (TLS side)."""
    try:
        while chunk := await reader.read(RELAY_CHUNK):
            writer.write(chunk)
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


WORKER_DONE_WAIT = 5.0  # seconds between the worker's plaintext EOF and its DataSent


async def _move(cfg: Any, conn: tls.TlsConn, plain: data.PlainConn, upload: bool, sent: asyncio.Event) -> str:
    """Relay one transfer; '' when the TLS stream ended whole, else why not."""
    try:
        if upload:
            # the worker writes nothing to us: its end becoming readable means it gave up
            relay = asyncio.ensure_future(data.relay(conn, plain, RELAY_CHUNK))
            gone = asyncio.ensure_future(tls.wait_socket(plain.sock, writing=False))
            try:
                await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not relay.done():
                    relay.cancel()
            if not relay.done() or relay.cancelled():
                return "the worker ended the transfer"
            relay.result()  # raises tls.Truncated and the like
            await plain.close()  # the worker's EOF comes after every byte
            await conn.close()  # our close_notify answers the client's
            return ""
        await data.relay(plain, conn, RELAY_CHUNK)
        try:  # the worker's EOF alone may be an abort (ABOR, a failed read)
            await asyncio.wait_for(sent.wait(), WORKER_DONE_WAIT)
        except TimeoutError:
            return "the worker did not finish the transfer"
        confirm = float(cfg.data_connection_timeout or 60) if cfg.strict_ssl_write_shutdown else 0.0
        if not await conn.close(confirm=confirm):
            return "the client did not confirm the end with close_notify (strict_ssl_write_shutdown)"
        return ""
    except (TimeoutError, OSError, ssl.SSLError) as e:
        return str(e) or e.__class__.__name__
    finally:
        conn.abort()
        plain.abort()


async def _relay_data(cfg: Any, ctx: ssl.SSLContext, chan: Channel, tcp: socket.socket,
                      plain: socket.socket, request: WrapData, sent: asyncio.Event) -> None:
    timeout = float(cfg.accept_timeout or 60)
    tcp.setblocking(False)
    try:
        conn = await tls.accept_data(tcp, ctx, timeout, strict_eof=bool(cfg.strict_ssl_read_eof))
    except (TimeoutError, OSError, ssl.SSLError) as e:
        tcp.close()
        plain.close()
        chan.send(Refused(f"handshake failed ({e.__class__.__name__})"))
        return
    refusal = await tls.refuse_unresumed(conn, bool(request.reuse_required))
    if refusal:
        plain.close()
        chan.send(Refused(refusal))
        return
    chan.send(DataWrapped())
    plain.setblocking(False)
    reason = await _move(cfg, conn, data.PlainConn(plain), bool(request.upload), sent)
    try:
        chan.send(DataEnded(request.serial, reason))
    except ChannelClosed:
        pass


async def _serve_requests(cfg: Any, ctx: ssl.SSLContext, chan: Channel) -> None:
    relays: set[asyncio.Task[None]] = set()
    sent: dict[int, asyncio.Event] = {}  # serial -> set by the worker's DataSent
    try:
        while True:
            try:
                await tls.wait_fd(chan.fileno(), writing=False)
                msg, fds = chan.recv(WrapData, DataSent, max_fds=2)
            except (ChannelClosed, ChannelError):
                return
            if isinstance(msg, DataSent) and not fds:
                if msg.serial in sent:  # else that relay is over already
                    sent[msg.serial].set()
                continue
            if len(fds) != 2 or not isinstance(msg, WrapData):
                for fd in fds:
                    os.close(fd)
                return  # a malformed request ends the session
            tcp, plain = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
            sent[msg.serial] = asyncio.Event()
            task = asyncio.create_task(_relay_data(cfg, ctx, chan, tcp, plain, msg, sent[msg.serial]))
            relays.add(task)
            task.add_done_callback(relays.discard)
            task.add_done_callback(functools.partial(_forget, sent, msg.serial))
    finally:
        for task in relays:
            task.cancel()


def _forget(sent: dict[int, asyncio.Event], serial: int, _task: object) -> None:
    sent.pop(serial, None)


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
