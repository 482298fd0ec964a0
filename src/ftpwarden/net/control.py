"""One control connection: read lines, feed the Session, write replies, run actions.

This module only moves bytes and performs the actions the core asks for; every
decision about what a command means is in `proto/session.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import grp
import itertools
import logging
import os
import pwd
import socket
import ssl
import stat as stat_mod
import time
from typing import Any, Awaitable, Callable

from ..proto import paths
from ..proto.actions import (
    AbortTransfer, Action, Authenticate, StartTls, ChangeDir, ClosePassive, ComputeHash, ControlListing,
    FsChange, OpenPassive, ReceiveFile, ResetSession, SendFile, SendListing, StatPath, Transfer,
    TransferDone,
)
from ..logs.events import EventLog, TransferRecord
from ..policy.auth.base import LoginRefused, LoginRequest
from ..policy.auth.local import userlist_filter
from ..proto.listing import Entry
from ..proto.replies import Reply
from ..proto.session import Session
from . import data, files, tls
from .jail import Jail
from .limits import SessionLimits

__all__ = ["ServerContext", "ControlConnection"]

log = logging.getLogger("ftpwarden.session")



class ServerContext:
    """What every session of one server shares: config, authenticator, name cache."""

    def __init__(self, cfg: Any, authenticator: Any, *, banner: str | None = None,
                 events: EventLog | None = None, broker: Any = None,
                 handover: Callable[["ControlConnection", Any], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.authenticator = authenticator  # .authenticate(LoginRequest) -> account, blocking
        self.banner = banner
        self.events = events or EventLog()
        # Isolated mode: `broker` asks the monitor for port-20 sockets and upload
        # chowns; `handover` passes a good login to the monitor, which starts the
        # post-login process.  Pooled mode: both None (done in-process).
        self.broker = broker
        self.handover = handover
        self.tls: tls.Contexts | None = None  # ssl_enable: an SSLContext per control connection
        self.tls_link: Any = None  # isolated post-login: priv.tlshelper.TlsLink to the TLS helper
        # Temporary bans of addresses that keep failing logins (net/bans.py), shared
        # by every process of the server; None when the options leave it off.
        self.bans: Any = None
        self.account_rates: Any = None  # net.limits.AccountRates when user_max_rate is set
        self.refuse_user = userlist_filter(cfg)  # read now, before any chroot
        self.limits: SessionLimits | None = None  # pooled mode: shared by the worker processes
        self._names: dict[tuple[int, bool], str] = {}
        self._next_id = itertools.count(1)

    def preload_names(self, names: dict[tuple[int, bool], str]) -> None:
        """Names read before a chroot hid /etc/passwd and /etc/group."""
        self._names.update(names)

    def session_id(self) -> str:
        return f"{os.getpid()}.{next(self._next_id)}"

    def name_of(self, ident: int, user: bool) -> str:
        key = (ident, user)
        name = self._names.get(key)
        if name is None:
            name = str(ident)
            try:
                if not self.cfg.text_userdb_names:  # vsftpd shows numeric ids by default
                    raise KeyError(ident)
                name = pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
            except (KeyError, OverflowError):
                pass
            if len(self._names) < 65536:
                self._names[key] = name
        return name


class ControlConnection:
    """Drives one Session over an asyncio stream pair."""

    __slots__ = ("ctx", "cfg", "reader", "writer", "local_ip", "remote_ip", "session", "data", "jail",
                 "start_account", "detached", "transfer_task", "transfer_progress", "closing", "events",
                 "sid", "end_reason", "login_deadline", "tls_ctx")

    def __init__(self, ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, account: Any = None, pending: bytes = b"", tls_state: str = "",
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
        self.session = Session(self.cfg, local_ip=self.local_ip, remote_ip=self.remote_ip,
                               banner=ctx.banner, names=ctx.name_of, refuse_user=ctx.refuse_user)
        self.data = data.DataChannel(self.cfg, local_ip=self.local_ip, remote_ip=self.remote_ip,
                                     broker=ctx.broker)
        self.jail: Jail | None = None
        self.start_account = account
        self.detached = False  # the TLS helper keeps the transport after handover
        if tls_state:
            flags = set(tls_state.split(","))
            self.session.tls = "tls" in flags
            self.session.pbsz = "pbsz" in flags
            self.session.prot_private = "prot" in flags
        if pending:
            reader.feed_data(pending)
        self.transfer_task: asyncio.Task[None] | None = None
        self.transfer_progress = [0]
        self.closing = False
        self.events = ctx.events
        self.sid = ctx.session_id()
        self.end_reason = "client closed"
        self.login_deadline = asyncio.get_event_loop().time() + float(self.cfg.login_timeout or 60)
        # this connection's own SSLContext: its data connections must resume its session
        self.tls_ctx: ssl.SSLContext | None = None

    @property
    def user(self) -> str:
        account = self.session.account
        return account.name if account is not None else (self.session.pending_user or "")

    # ------------------------------------------------------------ main loop

    async def run(self) -> None:
        sslobj = self.writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls_ctx = sslobj.context  # implicit TLS (tls.Contexts made it for this connection)
            tls.control_done(self.tls_ctx)
            self.session.tls_started()  # protected from the first byte
        if self.start_account is None:
            self.events.connect(self.sid, self.remote_ip)
        try:
            if self.start_account is None:
                await self._emit(self.session.greeting())
            else:
                self.jail = Jail(self.start_account.root)
                await self._emit(self.session.complete(
                    Authenticate(self.start_account.name, ""), self.start_account))
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
            line = await self._read_line()
            if line is None:
                return
            if line is _TOO_LONG:
                # answered as soon as the line passes the limit; its rest is then
                # read and dropped up to the newline, within the idle timeout
                await self._emit(self.session.feed(_TOO_LONG))
                if self.closing:
                    return
                try:
                    async with asyncio.timeout(self.session.idle_timeout or None):
                        if await self._read_bounded_line(discard=True) is None:
                            return
                except asyncio.TimeoutError:
                    self.end_reason = "idle timeout"
                    await self._write_safely(b"421 Timeout.\r\n")
                    return
                continue
            line = line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            if self.transfer_task is not None and not self.transfer_task.done():
                if not self.session.runs_during_transfer(line):
                    await asyncio.wait({self.transfer_task})
            self.events.command(self.sid, self.remote_ip, self.user, line)
            await self._emit(self.session.feed(line))

    async def _read_line(self) -> bytes | None:
        timeout = None
        if self.transfer_task is None or self.transfer_task.done():
            timeout = self.session.idle_timeout or None
            if not self.session.logged_in:
                # login_timeout counts from the connection, whatever is sent meanwhile
                left = self.login_deadline - asyncio.get_running_loop().time()
                timeout = max(0.0, min(timeout or left, left))
        try:
            async with asyncio.timeout(timeout):  # no extra task per line, unlike wait_for
                return await self._read_bounded_line()
        except asyncio.TimeoutError:
            self.end_reason = "idle timeout" if self.session.logged_in else "login timeout"
            await self._write_safely(b"421 Timeout.\r\n")
            return None

    async def _read_bounded_line(self, discard: bool = False) -> bytes | None:
        """A line up to the reader's limit, or _TOO_LONG as soon as one passes it
        (so the client has its 500 at once, not when the line ends).  With
        `discard`, read and drop the rest of such a line as it arrives (never
        buffered whole); b"" once its newline came.  None: the client left."""
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                return None if discard or not e.partial else e.partial
            except asyncio.LimitOverrunError as e:
                if not discard:
                    return _TOO_LONG
                await self.reader.readexactly(e.consumed)
                continue
            return b"" if discard else line

    async def _write_safely(self, data_: bytes) -> None:
        try:
            self.writer.write(data_)
            await asyncio.wait_for(self.writer.drain(), 5)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    async def _emit(self, events: list[Any]) -> None:
        """Send replies; perform actions and emit what they lead to, in order."""
        for ev in events:
            if isinstance(ev, Reply):
                self._send(ev)
                if ev.close:
                    self.end_reason = f"closed by server ({ev.code})"
                    self.closing = True
                    await self._drain()
                    return
                continue
            follow = await self._perform(ev)
            if follow:
                await self._emit(follow)
            if self.closing:
                return
        await self._drain()

    async def _start_tls(self) -> None:
        """AUTH TLS: the server side of the handshake on the control connection.

        StreamWriter.start_tls guesses the side from how the stream was made,
        which is wrong for the isolated worker's adopted socket; so the loop's
        start_tls is called with server_side=True and the stream is re-pointed,
        as StreamWriter.start_tls itself does.
        """
        await self._drain()
        # Bytes that came after "AUTH TLS" and before the handshake travelled in
        # clear: run as commands inside the protected session they would be a
        # man-in-the-middle's injection (CVE-2011-0411).  No client may send
        # them (RFC 4217 waits for 234), so they end the session; discarding
        # them would carry on a session whose clear part was tampered with.
        # Reading stops first, with no await in between, so nothing slips in.
        self.writer.transport.pause_reading()
        if self.reader._buffer:  # noqa: SLF001 - asyncio has no public accessor
            raise ConnectionError("bytes pipelined after AUTH TLS, before the handshake")
        assert self.ctx.tls is not None
        self.tls_ctx = self.ctx.tls.new()
        loop = asyncio.get_running_loop()
        protocol = self.writer.transport.get_protocol()
        left = self.login_deadline - loop.time() if not self.session.logged_in else tls.HANDSHAKE_MAX
        deadline = max(0.1, min(tls.handshake_deadline(self.cfg), left))
        async with asyncio.timeout(deadline):  # in this task: no other reader runs meanwhile
            transport = await loop.start_tls(self.writer.transport, protocol, self.tls_ctx, server_side=True,
                                             ssl_handshake_timeout=deadline)
        self.writer._transport = transport  # noqa: SLF001 - see the docstring
        protocol._replace_writer(self.writer)  # noqa: SLF001
        tls.control_done(self.tls_ctx)

    def pending_bytes(self) -> bytes:
        """Take what the client sent that we have not read yet (handed over after login)."""
        buf = self.reader._buffer  # asyncio has no public accessor for this
        data_ = bytes(buf)
        buf.clear()
        return data_

    async def _drain(self) -> None:
        """Wait until the client has taken our replies, but not forever: one that
        never reads would hold its session (and its max_clients slot) for good."""
        try:
            async with asyncio.timeout(float(self.session.idle_timeout or 300)):
                await self.writer.drain()
        except TimeoutError:
            self.end_reason = "client stopped reading"
            self.writer.transport.abort()  # what it has not taken is dropped with the connection
            raise

    def _send(self, reply: Reply) -> None:
        data_ = reply.encode()
        self.writer.write(data_)
        self.events.reply(self.sid, self.remote_ip, self.user, data_)

    # ------------------------------------------------------------ actions

    async def _perform(self, action: Action) -> list[Any]:
        s = self.session
        if isinstance(action, Transfer):
            await self._drain()
            self.transfer_progress = [0]
            self.transfer_task = asyncio.create_task(self._transfer(action))
            return []
        if isinstance(action, AbortTransfer):
            task = self.transfer_task
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            return []
        if isinstance(action, Authenticate):
            outcome = await self._authenticate(action)
            if self.ctx.handover is not None and outcome is not None and not isinstance(outcome, OSError):
                # the post-login process answers 230 and reads on from here
                await self.ctx.handover(self, outcome)
                self.end_reason = "logged in: handed over"
                self.closing = True
                return []
            return s.complete(action, outcome)
        if isinstance(action, StartTls):
            try:
                await self._start_tls()
            except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, tls.TlsSetupError) as e:
                self.end_reason = f"TLS handshake failed ({e.__class__.__name__})"
                self.closing = True
                self.writer.transport.abort()  # nothing more may be said in clear
                return []
            s.tls_started()
            return []
        if isinstance(action, ResetSession):
            self._close_jail()
            self.data.close()
            return []
        if isinstance(action, ClosePassive):
            self.data.close()
            return []
        if isinstance(action, OpenPassive):
            try:
                outcome: Any = self.data.open_passive()
            except OSError as e:
                outcome = e
            return s.complete(action, outcome)
        jail = self.jail
        assert jail is not None, "file actions come only after login"
        try:
            outcome = await self._file_action(jail, action)
        except OSError as e:
            outcome = e
        if isinstance(action, FsChange):
            self.events.fs_change(self.sid, self.remote_ip, self.user, action.verb or action.op,
                                  action.path, action.target, not isinstance(outcome, OSError))
        return s.complete(action, outcome)

    async def _file_action(self, jail: Jail, action: Action) -> Any:
        if isinstance(action, ChangeDir):
            st = jail.stat(action.path)
            if not stat_mod.S_ISDIR(st.st_mode):
                raise NotADirectoryError(20, "Not a directory")
            fd = jail.open(action.path, os.O_RDONLY | os.O_DIRECTORY)  # checks search permission
            os.close(fd)
            if action.message_file:
                return files.read_message(jail, paths.resolve(action.path, action.message_file))
            return None
        if isinstance(action, StatPath):
            return jail.stat(action.path)
        if isinstance(action, FsChange):
            return files.fs_change(jail, action)
        if isinstance(action, ControlListing):
            entries = await asyncio.to_thread(files.entries, jail, action.path, action.verb == "MLST")
            return entries, time.time()
        if isinstance(action, ComputeHash):
            return await asyncio.to_thread(files.hash_file, jail, action.path, action.algorithm)
        raise AssertionError(f"unknown action {action!r}")

    async def _authenticate(self, action: Authenticate) -> Any:
        req = LoginRequest(action.user, action.password, self.remote_ip)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            account = await loop.run_in_executor(_password_checks(), self.ctx.authenticator.authenticate, req)
        except LoginRefused as e:
            self.events.login(self.sid, self.remote_ip, action.user, None, False, e.reason)
            if self.ctx.bans is not None and self.ctx.bans.failed(self.remote_ip):
                self.events.ban(self.remote_ip, self.ctx.bans.ban_seconds)
            # Answer at a fixed time after PASS, whatever the check cost: an
            # unknown user and a cheap bcrypt hash must look alike.
            delay = float(self.cfg.delay_failed_login or 0)
            await asyncio.sleep(max(0.0, started + delay - loop.time()))
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

    # ------------------------------------------------------------ transfers

    async def _transfer(self, action: Transfer) -> None:
        """Prepare, connect, 150, move the bytes, then the final reply (and log it)."""
        progress = self.transfer_progress
        opened: dict[str, Any] = {}
        started = time.time()
        try:
            done = await self._move(action, progress, opened)
        except asyncio.CancelledError:
            done = TransferDone("aborted", progress[0])
        except OSError:  # the control connection failed under us (or would not drain)
            done = TransferDone("connection_lost", progress[0])
        finally:
            if opened.get("conn") is not None:  # a failed transfer: no close_notify
                opened["conn"].abort()
            if opened.get("sock") is not None:
                opened["sock"].close()
            if opened.get("fd") is not None:
                os.close(opened["fd"])
        if opened.get("moving") and isinstance(action, (SendFile, ReceiveFile)):
            self._log_transfer(action, done, started, opened.get("name", ""))
        try:
            await self._emit(self.session.complete(action, done))
        except OSError:
            self.closing = True
            self.writer.transport.abort()  # the main loop sees the end and cleans up

    async def _move(self, action: Transfer, progress: list[int], opened: dict[str, Any]) -> TransferDone:
        s = self.session
        assert self.jail is not None
        size: int | None = None
        payload = b""
        try:
            if isinstance(action, SendFile):
                opened["fd"], size = files.open_download(self.jail, action)
            elif isinstance(action, ReceiveFile):
                opened["fd"], opened["name"], opened["partial"] = files.open_upload(
                    self.jail, action, atomic=bool(self.cfg.atomic_uploads))
            else:
                payload = await asyncio.to_thread(self._render_listing, self.jail, action)
        except OSError as e:
            return TransferDone("local_error", error=e)
        try:
            sock = opened["sock"] = await self.data.connect(s.data_kind, s.port_target)
        except data.DataRefused:
            return TransferDone("no_data_connection")
        if isinstance(action, ReceiveFile) and not (action.append or action.offset or action.unique):
            # only now, with the data connection up, may an old file be emptied:
            # a STOR answered 425 leaves it as it was
            os.ftruncate(opened["fd"], 0)
        start = action
        if isinstance(action, ReceiveFile) and action.unique:
            start = ReceiveFile(paths.resolve(paths.parent(action.path), opened["name"]), unique=True)
        self._send(s.transfer_started(start, size))
        if isinstance(start, (SendFile, ReceiveFile)):
            self.events.transfer_start(self.sid, self.remote_ip, self.user, start.path,
                                       "o" if isinstance(start, SendFile) else "i")
        await self._drain()
        stall = float(self.cfg.data_connection_timeout or 0)
        link = self.ctx.tls_link if action.tls else None
        upload = isinstance(action, ReceiveFile)
        if link is not None:  # isolated: the TLS helper does TLS, we see plaintext
            try:
                sock = opened["sock"] = await asyncio.to_thread(link.wrap, sock, upload)
            except Exception as e:  # TlsRefused, or the helper is gone
                opened["sock"] = None
                return TransferDone("tls_refused", detail=str(e) or e.__class__.__name__)
            conn: Any = data.PlainConn(sock)
        elif action.tls:  # the handshake follows the 150, as clients expect (and vsftpd does)
            assert self.tls_ctx is not None
            try:
                conn = await tls.accept_data(sock, self.tls_ctx, float(self.cfg.accept_timeout or 60),
                                             strict_eof=bool(self.cfg.strict_ssl_read_eof))
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                return TransferDone("tls_refused", detail=f"handshake failed ({e.__class__.__name__})")
            opened["sock"] = None
            if self.cfg.require_ssl_reuse and not conn.reused:
                await conn.close()  # no data was promised: a clean TLS end, the reply says why
                return TransferDone("tls_refused", detail=tls.REUSE_REQUIRED)
        else:
            conn = data.PlainConn(sock)
        opened["sock"], opened["conn"] = None, conn
        opened["moving"] = True
        throttle = self._throttle()
        fd = opened.get("fd")
        try:
            if isinstance(action, SendFile):
                await data.send_file(conn, fd, action.offset, action.ascii, progress, stall, throttle)
            elif isinstance(action, ReceiveFile):
                await data.receive_file(conn, fd, action.ascii, progress, stall, throttle)
            else:
                progress[0] = await data.send_bytes(conn, payload)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            return TransferDone("connection_lost", progress[0])
        except OSError as e:  # the local file failed (disk full, quota)
            return TransferDone("local_error", progress[0], error=e)
        if link is not None and not upload:  # whole: the helper may send close_notify
            try:
                await asyncio.to_thread(link.sent)
            except Exception:  # the helper is gone
                return TransferDone("connection_lost", progress[0])
        # close_notify (TLS): the client knows the data is whole; strict_ssl_write_shutdown
        # wants the client's close_notify back on a download
        confirm = 0.0 if upload or not action.tls else self._confirm_seconds()
        if not await opened.pop("conn").close(confirm=confirm):
            return TransferDone("connection_lost", progress[0])
        if link is not None:  # how the helper saw the TLS stream end decides
            ended = await asyncio.to_thread(link.ended, self._confirm_seconds() + 30)
            if ended is not None:
                return TransferDone("connection_lost", progress[0])
        if opened.get("partial"):  # atomic_uploads: the name appears only now, complete
            # A client that died closed both connections; the end of the data is
            # then no proof of a complete file.  Give the control EOF a moment to
            # arrive (atomic uploads only: it costs this much per upload).
            await asyncio.sleep(ATOMIC_GRACE)
            if self.reader.at_eof():
                return TransferDone("connection_lost", progress[0])
            try:
                if not action.may_overwrite and files.exists(self.jail, action.path):
                    raise FileExistsError(17, "File exists")
                self.jail.rename(opened["partial"], action.path)
            except OSError as e:
                return TransferDone("local_error", progress[0], error=e)
        if isinstance(action, ReceiveFile) and self._chown_uploads():
            try:
                await asyncio.to_thread(self.ctx.broker.chown_upload, opened["fd"])
            except OSError as e:
                return TransferDone("local_error", progress[0], error=e)
        return TransferDone("ok", progress[0], name=opened.get("name", ""))

    def _confirm_seconds(self) -> float:
        """strict_ssl_write_shutdown: how long a download waits for the client's close_notify."""
        if not self.cfg.strict_ssl_write_shutdown:
            return 0.0
        return float(self.cfg.data_connection_timeout or 60)

    def _throttle(self) -> data.Throttle | None:
        """This session's rate limits, or None (the zero-copy path) when there are none."""
        s = self.session
        rate = int((self.cfg.anon_max_rate if s.is_anonymous() else self.cfg.local_max_rate) or 0)
        shared = self.ctx.account_rates.reserve_for(s.account.name) if self.ctx.account_rates else None
        return data.Throttle(rate, shared) if rate or shared else None

    def _chown_uploads(self) -> bool:
        """vsftpd's chown_uploads: anonymous uploads are given to chown_username by the monitor."""
        return bool(self.cfg.chown_uploads) and self.ctx.broker is not None and self.session.is_anonymous()

    def _log_transfer(self, action: SendFile | ReceiveFile, done: TransferDone, started: float, name: str) -> None:
        account = self.session.account
        path = action.path
        if isinstance(action, ReceiveFile) and action.unique and name:
            path = paths.resolve(paths.parent(action.path), name)
        self.events.transfer(TransferRecord(
            session=self.sid, remote_ip=self.remote_ip, user=self.user,
            user_class=account.user_class.value if account is not None else "",
            anon_password=getattr(account, "anon_password", ""), path=path,
            direction="o" if isinstance(action, SendFile) else "i", ascii=action.ascii,
            size=done.size, seconds=time.time() - started, complete=done.status == "ok",
            started_at=started))

    def _render_listing(self, jail: Jail, action: SendListing) -> bytes:
        st = jail.stat(action.path)
        given = action.given
        # NLST prints names as the client spelled the directory (vsftpd):
        # "NLST sub" -> "sub/a.txt", "NLST /sub/*.txt" -> "/sub/a.txt", "NLST" -> "a.txt"
        prefix = ""
        show_hidden = action.show_hidden
        if stat_mod.S_ISDIR(st.st_mode):
            entries = jail.listdir(action.path)
            entries.sort(key=lambda e: e.name)
            if action.pattern:
                prefix = given[:len(given) - len(action.pattern)]
            elif given not in ("", "."):
                prefix = given if given.endswith("/") else given + "/"
        elif action.kind == "MLSD" or action.pattern or paths.names_directory(given):
            raise NotADirectoryError(20, "Not a directory")
        else:
            entries = [Entry.from_stat(paths.basename(action.path), jail.lstat(action.path))]
            if action.kind == "NLST":  # one file: its name exactly as given
                entries = [entries[0]._replace(name=given or entries[0].name)]
            show_hidden = True  # named outright: shown even if it is a dot file
        lines = self.session.render_lines(action.kind, entries, time.time(), show_hidden,
                                          pattern=action.pattern, prefix=prefix)
        if not lines:
            return b""
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

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
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass


_PASSWORD_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _password_checks() -> concurrent.futures.ThreadPoolExecutor:
    """One thread per process checks passwords: slow hashes stay off the event
    loop, and their 16 MiB scrypt buffer is reused instead of multiplied."""
    global _PASSWORD_POOL
    if _PASSWORD_POOL is None:
        _PASSWORD_POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="password")
    return _PASSWORD_POOL


# Stands for an over-long line; longer than any limit, so parse_line refuses it.
_TOO_LONG = b"X" * (1 << 16)


ATOMIC_GRACE = 0.05  # seconds to wait for a dying client's control EOF
