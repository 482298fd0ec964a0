"""One control connection: frame lines, feed the Session, write replies, run actions.

This module only moves bytes and performs the actions the core asks for; every
decision about what a command means is in `proto/session.py`.

Thousands of logged-in sessions may sit idle, so an idle one holds as little
as possible: the connection is an asyncio Protocol that frames lines as they
arrive (no StreamReader/StreamWriter), a coroutine runs only while commands
are being handled (no task per session), and one timer per event loop
(`_Sweep`) ends the sessions whose idle or login time is up (no timer per read).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import stat
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

from ..ops import uploads
from ..policy.auth.base import LoginRefused, LoginRequest, LoginUnavailable
from ..policy.auth.local import USERLIST_TEXT
from ..policy.options import session_options
from ..proto import actions
from ..proto.framing import Frame, LineFramer
from ..proto.replies import Code, Reply
from ..proto.session import Session
from . import bans, context, data, files, tls, transfer
from .context import ServerContext
from .jail import Jail

__all__ = ["ControlConnection", "serve"]

log = logging.getLogger("ftpwarden.session")
# user_db_url down: no decision possible, so no 530; the client may try again later (or another node)
UNAVAILABLE_REPLY = Reply(Code.UNAVAILABLE, "Service not available: the user database cannot be reached.", close=True)

_NO_FRAMES: Final[list[Frame]] = []  # shared while none wait; data_received makes a new list, never appends
_NO_PROGRESS: Final[list[int]] = [0]  # until the first transfer (each one gets its own)


class ControlConnection(asyncio.Protocol):
    """Drives one Session over one transport (plain or TLS)."""

    __slots__ = ("ctx", "transport", "local_ip", "remote_ip", "session", "data", "jail", "detached",
                 "transfer_task", "transfer_progress", "closing", "sid", "end_reason", "login_deadline",
                 "ssl_context", "framer", "frames", "handler", "last_active", "eof", "lost", "paused",
                 "drain_waiter", "lost_waiter", "held", "ended", "on_end", "opening", "advertise")

    def __init__(self, ctx: ServerContext, *, account: Any = None, pending: bytes = b"",
                 tls_state: actions.TlsState | None = None, addresses: tuple[str, str] | None = None,
                 admit: Callable[[ControlConnection], str | None] | None = None,
                 on_end: Callable[[ControlConnection], None] | None = None,
                 advertise: str | None = None) -> None:
        """`account`: start logged in (isolated mode's post-login process), after
        feeding `pending`, the bytes the client pipelined after PASS; `tls_state`
        and `addresses` (local, remote) come along when the control connection
        reaches us as plaintext from the TLS helper.  `admit(self)`: a
        refusal answers 421 and ends the connection before any session starts;
        `on_end(self)` runs once the session has ended.  `advertise`: the server
        address a PROXY header declared (PASV names it unless pasv_address is set)."""
        self.ctx = ctx
        self.advertise = advertise
        # the start's arguments until connection_made; then None, or False: refused at admission
        self.opening: Any = (account, pending, tls_state, addresses, admit)
        self.on_end = on_end
        self.transport: Any = None
        self.handler: asyncio.Task[None] | None = None  # the coroutine handling commands, while one runs
        self.closing = self.ended = False
        self.detached = False  # the TLS helper keeps the transport after handover
        self.eof = self.lost = self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.lost_waiter: asyncio.Future[None] | None = None
        self.held: bytearray | None = None  # after pending_bytes(): what came since, for the TLS helper

    @property
    def cfg(self) -> Any:
        return self.ctx.cfg

    @property
    def events(self) -> Any:
        return self.ctx.events

    @property
    def user(self) -> str:
        account = self.session.account
        return account.name if account is not None else (self.session.pending_user or "")

    # the faces of the former stream pair that transfer.py uses: cc.reader.at_eof(), cc.writer.transport
    @property
    def reader(self) -> ControlConnection:
        return self

    @property
    def writer(self) -> ControlConnection:
        return self

    def at_eof(self) -> bool:
        """The client ended its side of the control connection."""
        return self.eof

    # ------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: Any) -> None:  # plain or TLS transport
        account, pending, tls_state, addresses, admit = self.opening
        self.opening = None
        self.transport = transport
        if addresses is None:
            addresses = (transport.get_extra_info("sockname")[0], transport.get_extra_info("peername")[0])
        self.local_ip, self.remote_ip = addresses
        refusal = admit(self) if admit is not None else None
        if refusal:
            transport.write(f"421 {refusal}\r\n".encode())
            transport.close()
            self.opening = False
            self.closing = self.ended = True
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            # ABOR is sent with urgent data (RFC 959 4.1.3; ftplib's abort()): keep the urgent
            # byte in the stream, where the framing finds the line (strip_telnet drops IAC IP/DM).
            # Every transfer runs beside this connection's reader, so ABOR is handled during it:
            # vsftpd's async_abor_enable=YES, whatever the option says (NO would gain nothing).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = self.ctx.cfg
        self.session = Session(session_options(cfg), local_ip=self.local_ip, remote_ip=self.remote_ip,
                               banner=self.ctx.banner, names=self.ctx.name_of,
                               refuse_user=self._userlist_logged if cfg.userlist_log and self.ctx.refuse_user
                               else self.ctx.refuse_user)
        self.data = data.DataChannel(cfg, local_ip=self.local_ip, remote_ip=self.remote_ip,
                                     broker=self.ctx.broker, advertise=self.advertise)
        self.jail: Jail | None = None
        self.framer = LineFramer(cfg.control_line_max)
        # framed, not yet handled, the next one LAST (pop() from the end is O(1))
        self.frames = _NO_FRAMES
        self.transfer_task: asyncio.Task[None] | None = None
        self.transfer_progress = _NO_PROGRESS
        self.sid = self.ctx.session_id()
        self.end_reason = "client closed"
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self.login_deadline = self.last_active + float(cfg.login_timeout or 60)
        # this connection's own SSLContext: its data connections must resume its session
        self.ssl_context: ssl.SSLContext | None = None
        if tls_state is not None:
            self.session.resume_tls(tls_state)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.ssl_context = sslobj.context  # implicit TLS (tls.Contexts made it for this connection)
            tls.set_note(self.ssl_context, self._tls_note)
            tls.control_done(self.ssl_context, sslobj)
            self.session.tls_started()  # protected from the first byte
            self.events.tls_handshake(self.sid, self.remote_ip, True)
        if account is None:
            self.events.connect(self.sid, self.remote_ip)
        if pending:  # handled after the opening, by the same handler
            self.frames = self.framer.feed(pending)[::-1]
        _Sweep.of(loop).add(self)
        self._start(lambda: self._open(account))

    def data_received(self, data_: bytes) -> None:
        if self.held is not None:  # handed over: kept for the TLS helper, unread here
            self.held += data_
            return
        if self.closing:
            return
        frames = self.framer.feed(data_)
        if frames:
            self._framed(frames)

    def eof_received(self) -> bool:
        self.eof = True
        if not self.closing and self.held is None:
            self._framed(self.framer.end())  # an unterminated last line still counts
            if self.handler is None:
                self._start(None)  # the end of the session
        # plain: keep our side open for the replies still to come; TLS cannot half-close
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.opening is not None:
            return  # refused at admission
        self.eof = self.lost = True
        if exc is not None and not self.closing:
            self.end_reason = f"connection error: {exc.__class__.__name__}"
            self.frames = _NO_FRAMES  # nothing could be answered
        for waiter in (self.drain_waiter, self.lost_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.handler is None and not self.ended:
            self._start(None)  # the end of the session

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ command handling

    def _framed(self, frames: list[Frame]) -> None:
        """Queue complete lines; start handling them unless that runs already."""
        if not frames:
            return
        frames.reverse()
        frames += self.frames
        self.frames = frames
        if self.handler is None:
            if not self.ended:
                self._start(None)
        elif self.transport.get_protocol() is self:  # (not so while AUTH TLS replaces the transport)
            # one chunk at a time while a command runs, as a read loop would take them
            self.transport.pause_reading()

    def _start(self, first: Callable[[], Awaitable[None]] | None) -> None:
        self.handler = asyncio.get_running_loop().create_task(self._run(first))

    async def _run(self, first: Callable[[], Awaitable[None]] | None) -> None:
        """Handle the queued lines, then stop: the next line starts this again."""
        try:
            if first is not None:
                await first()
            while not self.closing and self.frames:
                frame = self.frames.pop()
                if isinstance(frame, bytes):  # TOO_LONG is answered at once, even mid-transfer
                    task = self.transfer_task
                    if task is not None and not task.done() and not self.session.runs_during_transfer(frame):
                        await asyncio.wait({task})
                    self.events.command(self.sid, self.remote_ip, self.user, frame)
                await self.emit(self.session.feed(frame))
        except (ConnectionError, OSError) as e:
            self.end_reason = f"connection error: {e.__class__.__name__}"
            self.closing = True
        except asyncio.CancelledError:  # server shutdown: the session ends quietly
            self.closing = True
        except Exception:  # our bug: this session ends, the server lives on
            self.end_reason = "internal error"
            self.closing = True
            log.exception("session %s failed", self.remote_ip)
            await self._write_safely(b"421 Internal error; closing connection.\r\n")
        if not self.closing and not self.eof:  # idle until the next line (no await from the check on)
            self.frames = _NO_FRAMES
            self.handler = None
            self.last_active = asyncio.get_running_loop().time()
            if self.held is None:
                self.transport.resume_reading()
            return
        await self._end()

    async def _open(self, account: Any) -> None:
        if account is None:
            await self.emit(self.session.greeting())
        else:
            self.jail = Jail(account.root)
            await self.emit(self.session.complete(actions.Authenticate(account.name, ""), account))

    def expire(self, now: float) -> None:
        """The sweep's look at this session: end it if it is idle past its time."""
        if self.handler is not None or self.closing:
            return  # a command is being handled
        task = self.transfer_task
        if task is not None and not task.done():
            return
        idle = self.session.idle_timeout
        if not self.session.logged_in and now >= self.login_deadline:
            pass  # login_timeout counts from the connection, whatever is sent meanwhile
        elif not idle or now - self.last_active < idle:
            return
        self.end_reason = "idle timeout" if self.session.logged_in else "login timeout"
        self.closing = True
        self._start(lambda: self._write_safely(b"421 Timeout.\r\n"))

    def stop(self) -> None:
        """Server shutdown: end this session now."""
        if self.ended or self.closing:
            return
        if self.handler is not None:
            self.handler.cancel()
        else:
            self.closing = True
            self._start(None)

    def kick(self, line: bytes) -> bool:
        """`ftpwarden kick`: the client gets `line` (a 421) and the session ends, a
        transfer under way too.  False when it is ending already."""
        if self.ended or self.closing or self.opening is not None:
            return False
        self.end_reason = "kicked by the administrator"
        self.frames = _NO_FRAMES
        if self.handler is not None:  # a command runs: it stops; the line goes out before the close
            self.handler.cancel()
            self.transport.write(line)
        else:
            self.closing = True
            self._start(lambda: self._write_safely(line))
        return True

    async def _write_safely(self, data_: bytes) -> None:
        try:
            self.transport.write(data_)
            await asyncio.wait_for(self.drain(), 5)
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
                    self.transport.write(b"".join(out))
                    self.end_reason = f"closed by server ({ev.code})"
                    self.closing = True
                    await self.drain()
                    return
                continue
            if out:  # the replies before an action go out before it runs
                self.transport.write(b"".join(out))
                out.clear()
            follow = await self._perform(ev)
            if follow:
                await self.emit(follow)
            if self.closing:
                return
        if out:
            self.transport.write(b"".join(out))
        await self.drain()

    async def _start_tls(self) -> None:
        """AUTH TLS: the server side of the handshake on the control connection
        (server_side=True: right for the isolated worker's adopted socket too)."""
        await self.drain()
        # Bytes that came after "AUTH TLS" and before the handshake travelled in
        # clear: run as commands inside the protected session they would be a
        # man-in-the-middle's injection (CVE-2011-0411).  No client may send
        # them (RFC 4217 waits for 234), so they end the session; discarding
        # them would carry on a session whose clear part was tampered with.
        # Reading stops first, with no await in between, so nothing slips in.
        self.transport.pause_reading()
        if self.frames or self.framer.buffered or self.framer.discarding:
            raise ConnectionError("bytes pipelined after AUTH TLS, before the handshake")
        assert self.ctx.tls_contexts is not None
        self.ssl_context = self.ctx.tls_contexts.new()
        tls.set_note(self.ssl_context, self._tls_note)  # SNI refusals, debug_ssl: this session's log
        loop = asyncio.get_running_loop()
        left = self.login_deadline - loop.time() if not self.session.logged_in else tls.HANDSHAKE_MAX
        deadline = max(0.1, min(tls.handshake_deadline(self.cfg), left))
        async with asyncio.timeout(deadline):  # in this task: no command runs meanwhile
            try:
                transport = await loop.start_tls(self.transport, self, self.ssl_context, server_side=True,
                                                 ssl_handshake_timeout=deadline)
            except (OSError, ssl.SSLError) as e:
                tls.handshake_failed(self.ssl_context, "control connection", e)
                raise
        self.transport = transport
        tls.control_done(self.ssl_context, transport.get_extra_info("ssl_object") if transport else None)

    def _tls_note(self, text: str) -> None:
        """A TLS diagnostic (net/tls.py) as a DEBUG line of this session's log."""
        self.events.debug(self.sid, self.remote_ip, self.user, text)

    def pending_bytes(self) -> bytes:
        """Take what the client sent that we have not handled (handed over after
        login); from now on nothing is read here (`streams` passes on what comes)."""
        self.transport.pause_reading()
        data_ = self.framer.unread(self.frames[::-1])
        self.frames = _NO_FRAMES
        self.held = bytearray()
        return data_

    def streams(self, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The (TLS) connection as an asyncio stream pair, for the TLS helper that
        relays it after a handover: what came since `pending_bytes` is read first."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        if self.held:
            reader.feed_data(bytes(self.held))
        self.held = None
        transport = self.transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.eof:
            reader.feed_eof()
        transport.resume_reading()
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def drain(self) -> None:
        """Wait until the client has taken our replies, but not forever: one that
        never reads would hold its session (and its max_clients slot) for good."""
        if self.transport.is_closing():  # as StreamWriter.drain: a lost connection is an error
            await asyncio.sleep(0)
            if self.lost:
                raise ConnectionResetError("Connection lost")
        if not self.paused:
            return  # the kernel took every reply, or enough of them (the common case)
        waiter = self.drain_waiter
        if waiter is None or waiter.done():
            waiter = self.drain_waiter = asyncio.get_running_loop().create_future()
        # asyncio.wait: one waiter shared by the command and the transfer, never cancelled by either
        done, _ = await asyncio.wait({waiter}, timeout=float(self.session.idle_timeout or 300))
        if not done:
            self.end_reason = "client stopped reading"
            self.transport.abort()  # what it has not taken is dropped with the connection
            raise TimeoutError
        if self.lost:
            raise ConnectionResetError("Connection lost")

    def send(self, reply: Reply) -> None:
        self.transport.write(self._logged(reply))

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
            self.transfer_task.add_done_callback(self._transfer_ended)
            return []
        if isinstance(action, actions.AbortTransfer):
            task = self.transfer_task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            return []
        if isinstance(action, actions.Authenticate):
            outcome = await self._authenticate(action)
            if isinstance(outcome, LoginUnavailable):
                return [UNAVAILABLE_REPLY]
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
                self.events.tls_handshake(self.sid, self.remote_ip, False)
                self.closing = True
                self.transport.abort()  # nothing more may be said in clear
                return []
            s.tls_started()
            self.events.tls_handshake(self.sid, self.remote_ip, True)
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
                outcome = await self.data.open_passive()
            except OSError as e:
                outcome = e
            return s.complete(action, outcome)
        if isinstance(action, actions.ShowQuota):
            try:
                outcome = uploads.quota_lines(self)
            except (OSError, ValueError) as e:
                outcome = e if isinstance(e, OSError) else OSError(str(e))
            return s.complete(action, outcome)
        jail = self.jail
        assert jail is not None, "file actions come only after login"
        deleted = self._deleted_by(jail, action) if self.ctx.quota is not None else None
        try:
            outcome = await files.perform(jail, action)
        except OSError as e:
            outcome = e
        if deleted is not None and outcome is None:  # quotas: a deleted file no longer counts
            uploads.forget_file(self, deleted)
        if isinstance(action, actions.FsChange):
            self.events.fs_change(self.sid, self.remote_ip, self.user, action.verb or action.op,
                                  action.path, action.target, not isinstance(outcome, OSError))
        return s.complete(action, outcome)

    @staticmethod
    def _deleted_by(jail: Jail, action: actions.Action) -> int | None:
        """Quota bookkeeping: the size of the regular file that `action` removes (DELE, or
        the target an RNTO replaces), or None."""
        if not isinstance(action, actions.FsChange) or action.op not in ("unlink", "rename"):
            return None
        try:
            st = jail.lstat(action.target if action.op == "rename" else action.path)
            if action.op == "rename" and jail.lstat(action.path)[stat.ST_INO] == st.st_ino:
                return None  # renamed onto itself: nothing goes
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _userlist_logged(self, name: str) -> bool:
        """userlist_log: the user list's refusal at USER, logged in vsftpd's words."""
        refused = self.ctx.refuse_user is not None and self.ctx.refuse_user(name)
        if refused:
            text = USERLIST_TEXT[bool(self.ctx.cfg.userlist_deny)]
            self.events.userlist_refused(self.sid, self.remote_ip, name, text)
        return refused

    async def _authenticate(self, action: actions.Authenticate) -> Any:
        req = LoginRequest(action.user, action.password, self.remote_ip)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            remote = getattr(self.ctx.authenticator, "authenticate_async", None)  # isolated: the broker decides
            if remote is not None:
                account = await remote(req)
            else:
                account = await loop.run_in_executor(context.password_checks(), self.ctx.authenticator.authenticate,
                                                     req)
        except LoginUnavailable as e:  # 421 and the end: not counted toward a ban, no delay
            if remote is None:  # isolated mode: the broker logged it
                log.warning("login %s from %s: 421, the user database cannot be reached: %s", action.user,
                            self.remote_ip, e.reason)
            self.events.login(self.sid, self.remote_ip, action.user, None, False, e.reason)
            return e
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
        if remote is None and (pause := float(self.ctx.cfg.delay_successful_login or 0)) > 0:
            await asyncio.sleep(pause)  # delay_successful_login (isolated mode: the broker's timer)
        return account

    def _transfer_ended(self, _task: asyncio.Task[None]) -> None:
        self.last_active = asyncio.get_running_loop().time()  # idle from the end of the transfer

    # ------------------------------------------------------------ teardown

    def _close_jail(self) -> None:
        if self.jail is not None:
            self.jail.close()
            self.jail = None

    async def _end(self) -> None:
        """The session is over: release what it holds, close, report the end (once)."""
        self.closing = True
        if self.ended:
            return
        self.ended = True
        try:
            _Sweep.of(asyncio.get_running_loop()).sessions.discard(self)
            await self._cleanup()
        finally:
            self.handler = None
            self.events.disconnect(self.sid, self.remote_ip, self.user, self.end_reason)
            if self.on_end is not None:
                self.on_end(self)

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
        if self.detached or self.lost:
            return
        # the replies still buffered go out first, for a while; then the connection is dropped
        waiter = self.lost_waiter = asyncio.get_running_loop().create_future()
        self.transport.close()
        await asyncio.wait({waiter}, timeout=2)
        if not waiter.done():
            self.transport.abort()


class _Sweep:
    """One timer per event loop for every session on it: each tick ends the
    sessions whose idle or login time is up.  A timer per session (or per
    read) costs memory for every idle session; this costs one set entry."""

    __slots__ = ("sessions", "timer")
    PERIOD: ClassVar[float] = 1.0  # seconds: how late a timeout may fire
    # weak: a loop that is gone takes its sweep along (the timer, which holds
    # the loop, runs only while the loop has sessions)
    _loops: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweep]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.sessions: set[ControlConnection] = set()
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Sweep:
        sweep = cls._loops.get(loop)
        if sweep is None:
            sweep = cls._loops[loop] = cls()
        return sweep

    def add(self, cc: ControlConnection) -> None:
        self.sessions.add(cc)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.PERIOD, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for cc in list(self.sessions):
            cc.expire(now)
        self.timer = loop.call_later(self.PERIOD, self._tick) if self.sessions else None


async def serve(control: ControlConnection, sock: socket.socket, *, ssl: Any = None,
                handshake_timeout: float | None = None) -> None:
    """Run `control` on an accepted socket until its session ends (isolated mode's
    one-session processes).  A failed TLS handshake raises (OSError, ssl.SSLError)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_end(_cc: ControlConnection) -> None:
        if not ended.done():
            ended.set_result(None)

    control.on_end = on_end
    await loop.connect_accepted_socket(lambda: control, sock, ssl=ssl, ssl_handshake_timeout=handshake_timeout)
    await ended
