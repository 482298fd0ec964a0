"""Logging in isolated mode: workers hold no log descriptor, their monitor writes.

A worker (pre-login / TLS helper as nopriv_user, post-login as the login user)
could otherwise truncate or rewrite root's log files through an inherited fd.
So a worker's EventLog (`ForwardingEventLog`) turns each event into a typed
message on the monitor channel, and the monitor (`LogRelay`) writes it through
the configured sinks.  What a worker sends is untrusted: a closed set of kinds
(messages 30-39), bounded fields, and the session's identity (client address,
session id, after login the user, class and anonymous e-mail) filled in by the
monitor.  The sinks make every field printable, as they do for client bytes.

The worker never waits on this for long: a full channel (the monitor busy with
a connect) drops the line after a short wait, as a full disk does.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..logs.configured import ConfiguredEventLog, TeeEventLog
from ..logs.events import EventLog, TransferRecord
from ..logs.xferlog import printable
from ..policy.auth.local import USERLIST_TEXT
from ..policy.hostsaccess import DENIED_TEXT as HOSTS_DENIED_TEXT
from .messages import (
    ChannelError,
    LogCommand,
    LogConnect,
    LogDebug,
    LogDisconnect,
    LogFsChange,
    LogHostsDenied,
    LogNotice,
    LogProgress,
    LogReply,
    LogTlsHandshake,
    LogTransfer,
    LogTransferStart,
    LogUserlist,
    Message,
    encode,
)

__all__ = ["ForwardingEventLog", "ForwardingLogHandler", "LogRelay", "LOG_EVENTS", "forward_logs", "quiet_stdio"]

LOG_EVENTS = (LogConnect, LogCommand, LogReply, LogTransferStart, LogTransfer, LogFsChange, LogDisconnect,
              LogNotice, LogDebug, LogUserlist, LogHostsDenied, LogProgress, LogTlsHandshake)


# Bounds on what a worker may send (characters for str, bytes for bytes).
USER_MAX = 256      # the monitor refuses names over 128 bytes anyway
LINE_MAX = 8192     # control_line_max defaults to 4096
REPLY_CHUNK = 16384  # a long reply (STAT, HELP) goes in pieces of whole lines
PATH_MAX = 8192
REASON_MAX = 512
NOTICE_MAX = 4096
NOTICE_LINES = 40   # of a traceback, at most
SEND_WAIT = 1.0     # seconds a worker waits for room in the channel before it drops a line

# What net/control.py reports as an fs_change op: the verb, else the action's op
FS_OPS = frozenset({"MKD", "RMD", "DELE", "RNTO", "MFMT", "SITE CHMOD",
                    "mkdir", "rmdir", "unlink", "rename", "chmod", "utime"})

log = logging.getLogger("ftpwarden.worker")
_Text = TypeVar("_Text", str, bytes)


# ------------------------------------------------------------------ worker side

def _quiet(method: Callable[..., None]) -> Callable[..., None]:
    """An event that cannot be encoded (a lone surrogate, a NaN time) is dropped, never raised."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            pass

    return wrapper


class ForwardingEventLog(EventLog):
    """A worker's EventLog: each event is one datagram to the monitor.  Never raises."""

    def __init__(self, sock: socket.socket, *, commands: bool = True, replies: bool = True,
                 starts: bool = True, transfers: bool = True) -> None:
        self._sock = sock
        # what the monitor's sinks write (ConfiguredEventLog): the rest is not sent,
        # which spares a datagram per command, reply and transfer on the hot path
        self._commands, self._replies, self._starts = commands, replies, starts
        self._transfers = transfers

    def post(self, msg: Message) -> None:
        try:
            data = encode(msg)
        except (ChannelError, TypeError, ValueError):
            return
        for attempt in range(2):
            try:
                self._sock.send(data, socket.MSG_DONTWAIT)  # one datagram: threads never interleave
                return
            except BlockingIOError:
                if attempt:
                    return
                try:  # poll, not select(): an identity worker's descriptors pass 1024
                    poller = select.poll()
                    poller.register(self._sock, select.POLLOUT)
                    poller.poll(SEND_WAIT * 1000)
                except (OSError, ValueError):
                    return
            except OSError:  # the monitor is gone, or no longer reads (the TLS helper after handover)
                return

    @_quiet
    def connect(self, session: str, remote_ip: str) -> None:
        self.post(LogConnect())

    def login(self, session: str, remote_ip: str, user: str, user_class: str | None,
              ok: bool, reason: str = "") -> None:
        """Not sent: the monitor logs the login it decided."""

    @_quiet
    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        if self._commands:
            self.post(LogCommand(user[:USER_MAX], line[:LINE_MAX]))

    @_quiet
    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        if not self._replies:
            return
        for piece in _pieces(data):
            self.post(LogReply(user[:USER_MAX], piece))

    @_quiet
    def transfer_start(self, session: str, remote_ip: str, user: str, path: str, direction: str,
                       size: int | None = None) -> None:
        if self._starts:
            self.post(LogTransferStart(path[:PATH_MAX], direction == "i", -1 if size is None else max(0, size)))

    @_quiet
    def progress(self, session: str, moved: int) -> None:
        self.post(LogProgress(max(0, moved)))

    @_quiet
    def tls_handshake(self, session: str, remote_ip: str, ok: bool) -> None:
        self.post(LogTlsHandshake(ok))

    @_quiet
    def transfer(self, record: TransferRecord) -> None:
        if self._transfers:
            self.post(LogTransfer(record.path[:PATH_MAX], record.direction == "i", record.ascii,
                                  max(0, record.size), max(0, round(record.seconds * 1e6)), record.complete,
                                  max(0, round(record.started_at * 1e6))))

    @_quiet
    def fs_change(self, session: str, remote_ip: str, user: str, op: str, path: str,
                  target: str, ok: bool) -> None:
        self.post(LogFsChange(op, path[:PATH_MAX], target[:PATH_MAX], ok))

    @_quiet
    def disconnect(self, session: str, remote_ip: str, user: str, reason: str) -> None:
        self.post(LogDisconnect(user[:USER_MAX], reason[:REASON_MAX]))

    @_quiet
    def debug(self, session: str, remote_ip: str, user: str, text: str) -> None:
        self.post(LogDebug(user[:USER_MAX], text[:NOTICE_MAX]))

    @_quiet
    def userlist_refused(self, session: str, remote_ip: str, user: str, text: str) -> None:
        self.post(LogUserlist(user[:USER_MAX], text == USERLIST_TEXT[True]))

    @_quiet
    def connect_refused(self, session: str, remote_ip: str, text: str) -> None:
        self.post(LogHostsDenied(text[:REASON_MAX]))

    def ban(self, remote_ip: str, seconds: int) -> None:
        """Not sent: bans are counted and logged by the monitor."""


def _pieces(data: bytes) -> list[bytes]:
    """`data` cut after CRLFs into pieces of at most REPLY_CHUNK bytes (a longer line is cut)."""
    out = []
    while len(data) > REPLY_CHUNK:
        cut = data.rfind(b"\r\n", 0, REPLY_CHUNK - 1)
        cut = cut + 2 if cut > 0 else REPLY_CHUNK
        out.append(data[:cut])
        data = data[cut:]
    return [*out, data] if data else out


class ForwardingLogHandler(logging.Handler):
    """A worker's Python logging (warnings, tracebacks) to the monitor, which has a stderr."""

    def __init__(self, events: ForwardingEventLog) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            return
        self.events.post(LogNotice(record.levelno, text[-NOTICE_MAX:]))


def quiet_stdio() -> None:
    """A worker's fd 1 and 2 become /dev/null: they may be the server's log file
    (stderr redirected, `xferlog_file=-`), which the worker could truncate."""
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)


def wanted_events(events: Any) -> dict[str, bool]:
    """Which of the frequent events the sinks write (ConfiguredEventLog: the same as the
    monitor's); ForwardingEventLog's keywords.  Another kind: all of them."""
    if isinstance(events, ForwardingEventLog):  # the post-login process, forked from the pre-login one
        return {"commands": events._commands, "replies": events._replies, "starts": events._starts,
                "transfers": events._transfers}
    if isinstance(events, TeeEventLog):  # ops (metrics_listen, control_socket): the sessions' every event
        return {}
    if type(events) is EventLog:  # no log configured: the monitor writes none of them
        return {"commands": False, "replies": False, "starts": False, "transfers": False}
    if not isinstance(events, ConfiguredEventLog):
        return {}
    json = events.json is not None
    return {"commands": events.protocol or json, "replies": events.protocol, "starts": json}


def forward_logs(site: Any, sock: socket.socket) -> None:
    """In a freshly forked worker, before its jail: close every inherited log sink
    and log through the monitor from now on."""
    wants = wanted_events(site.events)
    if site.events is not None:
        site.events.close()  # this process's copies only: the monitor's stay open
    events = ForwardingEventLog(sock, **wants)
    site.events = events
    root = logging.getLogger()
    handler = ForwardingLogHandler(events)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    quiet_stdio()


# ------------------------------------------------------------------ monitor side

class LogRelay:
    """The monitor's end: check a worker's log event, complete it, write it."""

    def __init__(self, events: Any, remote_ip: str, session: str) -> None:
        self.events: EventLog = events if events is not None else EventLog()
        self.remote_ip = remote_ip
        self.session = session
        self.account: Any = None  # set at login: from then on the user is the monitor's
        self.connected = False

    def logged_in(self, account: Any) -> None:
        self.account = account

    def login(self, user: str, account: Any, reason: str = "refused by the monitor") -> None:
        """The monitor's own decision: `account` None is a refusal (`reason`: the log's why)."""
        if account is None:
            self.events.login(self.session, self.remote_ip, user[:USER_MAX], None, False, reason)
        else:
            self.events.login(self.session, self.remote_ip, account.name, account.user_class.value, True)

    def _user(self, claimed: str) -> str:
        if self.account is not None:
            return str(self.account.name)
        return _bounded(claimed, USER_MAX, "user")  # before login: what the client typed at USER

    def _after_login(self, what: str) -> Any:
        if self.account is None:
            raise ChannelError(f"{what} before login")
        return self.account

    def handle(self, msg: Message) -> None:
        """One event from the worker; ChannelError (the session ends) when it is malformed or out of phase."""
        s, ip = self.session, self.remote_ip
        match msg:
            case LogConnect():
                if self.connected or self.account is not None:
                    raise ChannelError("a second CONNECT")
                self.connected = True
                self.events.connect(s, ip)
            case LogCommand(user=user, line=line):
                self.events.command(s, ip, self._user(user), _bounded(line, LINE_MAX, "command"))
            case LogReply(user=user, data=data):
                self.events.reply(s, ip, self._user(user), _bounded(data, REPLY_CHUNK, "reply"))
            case LogTransferStart(path=path, upload=upload, size=size):
                account = self._after_login("a transfer")
                self.events.transfer_start(s, ip, account.name, _bounded(path, PATH_MAX, "path"),
                                           "i" if upload else "o", size if size >= 0 else None)
            case LogTransfer():
                self.events.transfer(self._record(msg))
            case LogTlsHandshake(ok=ok):
                self.events.tls_handshake(s, ip, ok)
            case LogProgress(moved=moved):
                self._after_login("a transfer's progress")
                if moved < 0:
                    raise ChannelError("a negative progress")
                self.events.progress(s, moved)
            case LogFsChange(op=op, path=path, target=target, ok=ok):
                account = self._after_login("a file change")
                if op not in FS_OPS:
                    raise ChannelError("unknown file change")
                self.events.fs_change(s, ip, account.name, op, _bounded(path, PATH_MAX, "path"),
                                      _bounded(target, PATH_MAX, "path"), ok)
            case LogDisconnect(user=user, reason=reason):
                self.events.disconnect(s, ip, self._user(user), _bounded(reason, REASON_MAX, "reason"))
            case LogUserlist(user=user, deny_list=deny_list):
                if self.connected and self.account is None:  # only before login, after the greeting
                    self.events.userlist_refused(s, ip, _bounded(user, USER_MAX, "user"), USERLIST_TEXT[deny_list])
            case LogHostsDenied(where=where):
                if self.connected or self.account is not None:
                    raise ChannelError("a tcp_wrappers denial after the greeting")
                log.warning("session %s (%s): refused by %s", s, ip, printable(_bounded(where, REASON_MAX, "where")))
                self.events.connect_refused(s, ip, HOSTS_DENIED_TEXT)
            case LogDebug(user=user, text=text):
                self.events.debug(s, ip, self._user(user), _bounded(text, NOTICE_MAX, "debug line"))
            case LogNotice(level=level, text=text):
                level = min(max(level, logging.DEBUG), logging.ERROR)  # a worker never speaks CRITICAL
                for row in _bounded(text, NOTICE_MAX, "notice").splitlines()[:NOTICE_LINES]:
                    log.log(level, "session %s (%s): %s", s, ip, printable(row))
            case _:
                raise ChannelError(f"{type(msg).__name__} is not a log event")

    def _record(self, msg: LogTransfer) -> TransferRecord:
        account = self._after_login("a transfer")
        if msg.size < 0 or msg.micros < 0 or not 0 <= msg.started_us <= (time.time() + 86400) * 1e6:
            raise ChannelError("a transfer record out of range")
        return TransferRecord(
            session=self.session, remote_ip=self.remote_ip, user=account.name,
            user_class=account.user_class.value, anon_password=getattr(account, "anon_password", "") or "",
            path=_bounded(msg.path, PATH_MAX, "path"), direction="i" if msg.upload else "o",
            ascii=msg.ascii, size=msg.size, seconds=msg.micros / 1e6, complete=msg.complete,
            started_at=msg.started_us / 1e6)


def _bounded(value: _Text, limit: int, what: str) -> _Text:
    if len(value) > limit:
        raise ChannelError(f"{what} too long")
    return value
