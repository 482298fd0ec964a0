"""One control connection: read lines, feed the Session, write replies, run actions.

This module only moves bytes and performs the actions the core asks for; every
decision about what a command means is in `proto/session.py`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from ..policy.auth.base import LoginRefused, LoginRequest
from ..policy.options import session_options
from ..proto import actions
from ..proto.framing import Frame, LineFramer
from ..proto.replies import Reply
from ..proto.session import Session
from . import bans, context, data, files, tls, transfer
from .context import ServerContext
from .jail import Jail

__all__ = ["ControlConnection"]

log = logging.getLogger("ftpwarden.session")


class ControlConnection:
    """Drives one Session over an asyncio stream pair."""

    __slots__ = ("ctx", "cfg", "reader", "writer", "local_ip", "remote_ip", "session", "data", "jail",
                 "start_account", "detached", "transfer_task", "transfer_progress", "closing", "events",
                 "sid", "end_reason", "login_deadline", "ssl_context", "framer", "frames")

    def __init__(self, ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, account: Any = None, pending: bytes = b"", tls_state: actions.TlsState | None = None,
                 addresses: tuple[str, str] | None = None) -> None:
        """`account`: start logged in (isolated mode's post-login process), after
        feeding `pending`, the bytes the client pipelined after PASS; `tls_state`
        and `addresses` (local, remote) come along when the control connection
        reaches us as plaintext from the TLS helper."""
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("socket")
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        if addresses is None:
            addresses = (local[0], peer[0])
        self.local_ip, self.remote_ip = addresses
        if sock is not None and sock.family != socket.AF_UNIX:
            # ABOR is sent with urgent data (RFC 959 4.1.3): keep it in the stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(session_options(self.cfg), local_ip=self.local_ip, remote_ip=self.remote_ip,
                               banner=ctx.banner, names=ctx.name_of, refuse_user=ctx.refuse_user)
        self.data = data.DataChannel(self.cfg, local_ip=self.local_ip, remote_ip=self.remote_ip,
                                     broker=ctx.broker)
        self.jail: Jail | None = None
        self.start_account = account
        self.detached = False  # the TLS helper keeps the transport after handover
        if tls_state is not None:
            self.session.resume_tls(tls_state)
        if pending:
            reader.feed_data(pending)
        self.framer = LineFramer(self.cfg.control_line_max)
        # framed, not yet handled, the next one LAST: a list costs 56 bytes per
        # idle session where a deque costs 760, and pop() from the end is O(1)
        self.frames: list[Frame] = []
        self.transfer_task: asyncio.Task[None] | None = None
        self.transfer_progress = [0]
        self.closing = False
        self.events = ctx.events
        self.sid = ctx.session_id()
        self.end_reason = "client closed"
        self.login_deadline = asyncio.get_event_loop().time() + float(self.cfg.login_timeout or 60)
        # this connection's own SSLContext: its data connections must resume its session
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def user(self) -> str:
        account = self.session.account
        return account.name if account is not None else (self.session.pending_user or "")

    # ------------------------------------------------------------ main loop

    async def run(self) -> None:
        sslobj = self.writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self.ssl_context = sslobj.context  # implicit TLS (tls.Contexts made it for this connection)
            tls.control_done(self.ssl_context)
            self.session.tls_started()  # protected from the first byte
        if self.start_account is None:
            self.events.connect(self.sid, self.remote_ip)
        try:
            if self.start_account is None:
                await self.emit(self.session.greeting())
            else:
                self.jail = Jail(self.start_account.root)
                await self.emit(self.session.complete(
                    actions.Authenticate(self.start_account.name, ""), self.start_account))
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            self.end_reason = f"connection error: {e.__class__.__name__}"
        except Exception:  # our bug: this session ends, the server lives on
            self.end_reason = "internal error"
            log.exception("session %s failed", self.remote_ip)
            await self._write_safely(b"421 Internal error; closing connection.\r\n")
        finally:
            await self._cleanup()
            self.events.disconnect(self.sid, self.remote_ip, self.user, self.end_reason)

    async def _loop(self) -> None:
        while not self.closing:
            frame = await self._next_frame()
            if frame is None:
                return
            if isinstance(frame, bytes):  # TOO_LONG is answered at once, even mid-transfer
                task = self.transfer_task
                if task is not None and not task.done() and not self.session.runs_during_transfer(frame):
                    await asyncio.wait({task})
                self.events.command(self.sid, self.remote_ip, self.user, frame)
            await self.emit(self.session.feed(frame))

    async def _next_frame(self) -> Frame | None:
        """The next line (or TOO_LONG, as soon as a line passes the cap), within
        the idle or login timeout.  None: the client left, or the time ran out."""
        if not self.frames:
            timeout: float | None = None
            if self.transfer_task is None or self.transfer_task.done():
                timeout = self.session.idle_timeout or None
                if not self.session.logged_in:
                    # login_timeout counts from the connection, whatever is sent meanwhile
                    left = self.login_deadline - asyncio.get_running_loop().time()
                    timeout = max(0.0, min(timeout or left, left))
            try:
                async with asyncio.timeout(timeout):  # no extra task per read, unlike wait_for
                    while not self.frames:
                        chunk = await self.reader.read(READ_CHUNK)
                        self.frames = self.framer.feed(chunk) if chunk else self.framer.end()
                        self.frames.reverse()
                        if not chunk:
                            break
            except TimeoutError:
                self.end_reason = "idle timeout" if self.session.logged_in else "login timeout"
                await self._write_safely(b"421 Timeout.\r\n")
                return None
        return self.frames.pop() if self.frames else None

    async def _write_safely(self, data_: bytes) -> None:
        try:
            self.writer.write(data_)
            await asyncio.wait_for(self.writer.drain(), 5)
        except (TimeoutError, OSError, ConnectionError):
            pass

    async def emit(self, events: list[Any]) -> None:
        """Send replies; perform actions and emit what they lead to, in order.
        Replies in a row leave in one write (one send, one segment)."""
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, Reply):
                out.append(self._logged(ev))
                if ev.close:
                    self.writer.write(b"".join(out))
                    self.end_reason = f"closed by server ({ev.code})"
                    self.closing = True
                    await self.drain()
                    return
                continue
            if out:  # the replies before an action go out before it runs
                self.writer.write(b"".join(out))
                out.clear()
            follow = await self._perform(ev)
            if follow:
                await self.emit(follow)
            if self.closing:
                return
        if out:
            self.writer.write(b"".join(out))
        await self.drain()

    async def _start_tls(self) -> None:
        """AUTH TLS: the server side of the handshake on the control connection.

        StreamWriter.start_tls guesses the side from how the stream was made,
        which is wrong for the isolated worker's adopted socket; so the loop's
        start_tls is called with server_side=True and the stream is re-pointed,
        as StreamWriter.start_tls itself does.
        """
        await self.drain()
        # Bytes that came after "AUTH TLS" and before the handshake travelled in
        # clear: run as commands inside the protected session they would be a
        # man-in-the-middle's injection (CVE-2011-0411).  No client may send
        # them (RFC 4217 waits for 234), so they end the session; discarding
        # them would carry on a session whose clear part was tampered with.
        # Reading stops first, with no await in between, so nothing slips in.
        self.writer.transport.pause_reading()  # type: ignore[attr-defined] # a socket transport: it can
        if self.frames or self.framer.buffered or self.reader._buffer:  # type: ignore[attr-defined] # no accessor
            raise ConnectionError("bytes pipelined after AUTH TLS, before the handshake")
        assert self.ctx.tls_contexts is not None
        self.ssl_context = self.ctx.tls_contexts.new()
        loop = asyncio.get_running_loop()
        protocol = self.writer.transport.get_protocol()
        left = self.login_deadline - loop.time() if not self.session.logged_in else tls.HANDSHAKE_MAX
        deadline = max(0.1, min(tls.handshake_deadline(self.cfg), left))
        async with asyncio.timeout(deadline):  # in this task: no other reader runs meanwhile
            transport = await loop.start_tls(self.writer.transport, protocol, self.ssl_context, server_side=True,
                                             ssl_handshake_timeout=deadline)
        self.writer._transport = transport  # type: ignore[attr-defined] # see the docstring
        protocol._replace_writer(self.writer)  # type: ignore[attr-defined]
        tls.control_done(self.ssl_context)

    def pending_bytes(self) -> bytes:
        """Take what the client sent that we have not read yet (handed over after login)."""
        buf = self.reader._buffer  # type: ignore[attr-defined] # asyncio has no public accessor for this
        data_ = self.framer.unread(self.frames[::-1]) + bytes(buf)
        self.frames.clear()
        buf.clear()
        return data_

    async def drain(self) -> None:
        """Wait until the client has taken our replies, but not forever: one that
        never reads would hold its session (and its max_clients slot) for good."""
        transport = self.writer.transport
        if not transport.get_write_buffer_size() and not transport.is_closing():
            return  # the kernel took every reply: nothing to wait for (the common case)
        try:
            async with asyncio.timeout(float(self.session.idle_timeout or 300)):
                await self.writer.drain()
        except TimeoutError:
            self.end_reason = "client stopped reading"
            self.writer.transport.abort()  # what it has not taken is dropped with the connection
            raise

    def send(self, reply: Reply) -> None:
        self.writer.write(self._logged(reply))

    def _logged(self, reply: Reply) -> bytes:
        data_ = reply.encode()
        self.events.reply(self.sid, self.remote_ip, self.user, data_)
        return data_

    # ------------------------------------------------------------ actions

    async def _perform(self, action: actions.Action) -> list[Any]:
        s = self.session
        outcome: Any
        if isinstance(action, (actions.SendFile, actions.ReceiveFile, actions.SendListing)):
            await self.drain()
            self.transfer_progress = [0]
            self.transfer_task = asyncio.create_task(transfer.run(self, action))
            return []
        if isinstance(action, actions.AbortTransfer):
            task = self.transfer_task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            return []
        if isinstance(action, actions.Authenticate):
            outcome = await self._authenticate(action)
            if self.ctx.handover is not None and outcome is not None and not isinstance(outcome, OSError):
                # the post-login process answers 230 and reads on from here
                await self.ctx.handover(self, outcome)
                self.end_reason = "logged in: handed over"
                self.closing = True
                return []
            return s.complete(action, outcome)
        if isinstance(action, actions.StartTls):
            try:
                await self._start_tls()
            except (TimeoutError, OSError, ssl.SSLError, ConnectionError, tls.TlsSetupError) as e:
                self.end_reason = f"TLS handshake failed ({e.__class__.__name__})"
                self.closing = True
                self.writer.transport.abort()  # nothing more may be said in clear
                return []
            s.tls_started()
            return []
        if isinstance(action, actions.ResetSession):
            self._close_jail()
            self.data.close()
            return []
        if isinstance(action, actions.ClosePassive):
            self.data.close()
            return []
        if isinstance(action, actions.OpenPassive):
            try:
                outcome = self.data.open_passive()
            except OSError as e:
                outcome = e
            return s.complete(action, outcome)
        jail = self.jail
        assert jail is not None, "file actions come only after login"
        try:
            outcome = await files.perform(jail, action)
        except OSError as e:
            outcome = e
        if isinstance(action, actions.FsChange):
            self.events.fs_change(self.sid, self.remote_ip, self.user, action.verb or action.op,
                                  action.path, action.target, not isinstance(outcome, OSError))
        return s.complete(action, outcome)

    async def _authenticate(self, action: actions.Authenticate) -> Any:
        req = LoginRequest(action.user, action.password, self.remote_ip)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            account = await loop.run_in_executor(context.password_checks(), self.ctx.authenticator.authenticate, req)
        except LoginRefused as e:
            self.events.login(self.sid, self.remote_ip, action.user, None, False, e.reason)
            # answered at a fixed time after PASS: an unknown user and a cheap hash look alike
            await asyncio.sleep(bans.login_failed(self.ctx.bans, self.remote_ip, self.events, started,
                                                  action.failure_delay, loop.time()))
            return None
        try:
            if self.ctx.handover is None:
                self.jail = Jail(account.root)
        except OSError as e:
            self.events.login(self.sid, self.remote_ip, action.user, account.user_class.value, False,
                              f"cannot open root {account.root}: {e.strerror}")
            return e
        self.events.login(self.sid, self.remote_ip, account.name, account.user_class.value, True)
        return account

    # ------------------------------------------------------------ teardown

    def _close_jail(self) -> None:
        if self.jail is not None:
            self.jail.close()
            self.jail = None

    async def _cleanup(self) -> None:
        task = self.transfer_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await asyncio.wait({task}, timeout=5)
            except Exception:
                pass
        self.data.close()
        self._close_jail()
        if self.detached:
            return
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, OSError, ConnectionError):
            pass


READ_CHUNK = 65536  # bytes per read of the control connection; the framer keeps at most its cap

