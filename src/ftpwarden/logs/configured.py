"""The EventLog the configuration asks for: which event goes to which sink.

vsftpd's rules (logging.c), kept so that a vsftpd.conf logs as it did:

- nothing is written to files unless xferlog_enable or dual_log_enable;
- xferlog_std_format=NO (the default): vsftpd's own format to vsftpd_log_file;
  YES: wu-ftpd xferlog lines (transfers only) to xferlog_file; dual_log_enable: both;
- syslog_enable: the vsftpd-format lines go to syslog instead of vsftpd_log_file;
- log_ftp_protocol adds every command and reply to the vsftpd-format lines;
- wc_logs_enable=NO (the default): non-ASCII characters become '?' per byte in the
  xferlog and vsftpd-format lines, as vsftpd writes them; YES keeps printable UTF-8;
- no_log_lock=NO (the default): each line is written under a lock (sinks.FileSink).

`serve -v` (ours) copies the vsftpd-format lines to stderr, whatever the rest.

json_log_file (ours) receives every event as one JSON object, whatever the rest.
Log times are local, as in vsftpd (use_localtime is about listings and MDTM).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .events import EventLog, TransferRecord
from .protolog import command_text, reply_texts, transfer_tail, vsftpd_line, vsftpd_message
from .sinks import LOG_INFO, LOG_WARNING, FileSink, JsonLinesSink, StderrSink, SyslogSink
from .xferlog import narrow, xferlog_line

__all__ = ["ConfiguredEventLog", "LogFileError", "TeeEventLog", "build_event_log", "check_log_file",
           "log_files"]

log = logging.getLogger("ftpwarden.logs")

# fs_change verbs -> vsftpd's names for them
_FS_KIND = {"MKD": "MKDIR", "RMD": "RMDIR", "DELE": "DELETE", "RNTO": "RENAME", "SITE CHMOD": "CHMOD"}


class LogFileError(Exception):
    """A log file could not be opened at start-up."""

    def __init__(self, option: str, path: str, reason: str) -> None:
        super().__init__(f"{option}: cannot open {path}: {reason}")


def _never_raises(method: Callable[..., None]) -> Callable[..., None]:
    """A failing log call is our bug, but must not end the session that made it."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("logging %s failed", method.__name__)

    return wrapper


def _iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class ConfiguredEventLog(EventLog):
    """Formats each event once per sink that wants it."""

    def __init__(self, *, xferlog: FileSink | None = None, vsftpd_log: FileSink | None = None,
                 syslog: SyslogSink | None = None, json: JsonLinesSink | None = None,
                 stderr: StderrSink | None = None, protocol: bool = False, localtime: bool = True,
                 wide: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.xferlog = xferlog
        self.vsftpd_log = vsftpd_log
        self.syslog = syslog
        self.json = json
        self.stderr = stderr  # serve -v: the vsftpd-format lines, also on stderr
        self.protocol = protocol and (vsftpd_log is not None or syslog is not None or stderr is not None)
        self.localtime = localtime
        self.wide = wide  # wc_logs_enable
        self.clock = clock

    def _text(self, line: str) -> str:
        return line if self.wide else narrow(line)

    # ------------------------------------------------------------ writers

    def _vsftpd(self, now: float, user: str, kind: str, remote_ip: str, detail: str = "",
                tail: str = "", severe: bool = False) -> None:
        if not self.wide:  # byte-wise, as vsftpd: before `printable` sees a character
            user, detail = narrow(user), narrow(detail)
        if self.vsftpd_log is not None or self.stderr is not None:
            line = self._text(vsftpd_line(now, os.getpid(), user, kind, remote_ip, detail,
                                          tail=tail, localtime=self.localtime))
            for sink in (self.vsftpd_log, self.stderr):
                if sink is not None:
                    sink.write(line)
        if self.syslog is not None:
            self.syslog.send(self._text(vsftpd_message(user, kind, remote_ip, detail, tail=tail)),
                             severity=LOG_WARNING if severe else LOG_INFO, now=now)

    def _json(self, now: float, event: str, session: str, remote_ip: str, user: str, **fields: Any) -> None:
        if self.json is not None:
            self.json.emit({"time": _iso(now), "event": event, "session": session,
                            "client": remote_ip, "user": user, **fields})

    # ------------------------------------------------------------ events

    @_never_raises
    def connect(self, session: str, remote_ip: str) -> None:
        now = self.clock()
        self._vsftpd(now, "", "CONNECT", remote_ip)
        self._json(now, "connect", session, remote_ip, "")

    @_never_raises
    def login(self, session: str, remote_ip: str, user: str, user_class: str | None,
              ok: bool, reason: str = "") -> None:
        now = self.clock()
        # A failed login is a warning in syslog (vsftpd), and what fail2ban counts.
        self._vsftpd(now, user, "OK LOGIN" if ok else "FAIL LOGIN", remote_ip, severe=not ok)
        extra = {} if ok else {"reason": reason}
        self._json(now, "login", session, remote_ip, user, ok=ok, user_class=user_class, **extra)

    @_never_raises
    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        if not self.protocol and self.json is None:
            return
        now = self.clock()
        text = command_text(line)  # PASS masked, here and only here
        if self.protocol:
            self._vsftpd(now, user, "FTP command", remote_ip, text)
        self._json(now, "command", session, remote_ip, user, command=text)

    @_never_raises
    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        if not self.protocol:
            return
        now = self.clock()
        for text in reply_texts(data):
            self._vsftpd(now, user, "FTP response", remote_ip, text)

    @_never_raises
    def transfer_start(self, session: str, remote_ip: str, user: str, path: str, direction: str,
                       size: int | None = None) -> None:
        """After the 150 reply (JSON only: the other formats log a transfer when it ends).
        Not called by net/control.py yet."""
        self._json(self.clock(), "transfer_start", session, remote_ip, user, path=path,
                   direction="upload" if direction == "i" else "download")

    @_never_raises
    def transfer(self, record: TransferRecord) -> None:
        now = self.clock()
        if self.xferlog is not None:
            shown = record if self.wide else dataclasses.replace(
                record, path=narrow(record.path), user=narrow(record.user),
                anon_password=narrow(record.anon_password))
            self.xferlog.write(self._text(xferlog_line(shown, now, localtime=self.localtime)))
        kind = ("OK " if record.complete else "FAIL ") + ("UPLOAD" if record.direction == "i" else "DOWNLOAD")
        self._vsftpd(now, record.user, kind, record.remote_ip, record.path,
                     tail=transfer_tail(record.size, record.seconds))
        self._json(now, "transfer_end", record.session, record.remote_ip, record.user,
                   user_class=record.user_class,
                   direction="upload" if record.direction == "i" else "download",
                   path=record.path, bytes=record.size, complete=record.complete,
                   ascii=record.ascii, started=_iso(record.started_at),
                   duration_ms=round(record.seconds * 1000),
                   rate=round(record.size / record.seconds) if record.seconds > 0 else None)

    @_never_raises
    def fs_change(self, session: str, remote_ip: str, user: str, op: str, path: str,
                  target: str, ok: bool) -> None:
        now = self.clock()
        kind = _FS_KIND.get(op, op.upper())
        detail = f"{path} {target}" if target else path  # RENAME: "from to", as vsftpd
        self._vsftpd(now, user, ("OK " if ok else "FAIL ") + kind, remote_ip, detail)
        extra = {"target": target} if target else {}
        self._json(now, "fs_change", session, remote_ip, user, op=op, path=path, ok=ok, **extra)

    @_never_raises
    def disconnect(self, session: str, remote_ip: str, user: str, reason: str) -> None:
        self._json(self.clock(), "disconnect", session, remote_ip, user, reason=reason)

    @_never_raises
    def debug(self, session: str, remote_ip: str, user: str, text: str) -> None:
        now = self.clock()
        self._vsftpd(now, user, "DEBUG", remote_ip, text)
        self._json(now, "debug", session, remote_ip, user, text=text)

    @_never_raises
    def userlist_refused(self, session: str, remote_ip: str, user: str, text: str) -> None:
        now = self.clock()
        self._vsftpd(now, user, "FAIL LOGIN", remote_ip, text, severe=True)  # vsftpd: a failed login's line
        self._json(now, "login", session, remote_ip, user, ok=False, user_class=None, reason=text)

    @_never_raises
    def connect_refused(self, session: str, remote_ip: str, text: str) -> None:
        now = self.clock()
        self._vsftpd(now, "", "CONNECT", remote_ip, text)
        self._json(now, "connect_refused", session, remote_ip, "", reason=text)

    @_never_raises
    def ban(self, remote_ip: str, seconds: int) -> None:
        now = self.clock()
        # a warning in syslog, as a failed login is
        self._vsftpd(now, "", "BAN", remote_ip, tail=f", {int(seconds)} seconds", severe=True)
        self._json(now, "ban", "", remote_ip, "", seconds=int(seconds))

    def _sinks(self) -> list[Any]:
        return [s for s in (self.xferlog, self.vsftpd_log, self.syslog, self.json) if s is not None]

    @_never_raises
    def reopen(self) -> None:
        for sink in self._sinks():
            sink.reopen()

    def close(self) -> None:
        for sink in self._sinks():
            sink.close()


class TeeEventLog(EventLog):
    """The log sinks, then the operations sink (ops.sink.OpsSink): each event to both."""

    def __init__(self, logs: EventLog, ops: EventLog) -> None:
        self.logs = logs
        self.ops = ops

    def connect(self, session: str, remote_ip: str) -> None:
        self.logs.connect(session, remote_ip)
        self.ops.connect(session, remote_ip)

    def login(self, session: str, remote_ip: str, user: str, user_class: str | None,
              ok: bool, reason: str = "") -> None:
        self.logs.login(session, remote_ip, user, user_class, ok, reason)
        self.ops.login(session, remote_ip, user, user_class, ok, reason)

    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        self.logs.command(session, remote_ip, user, line)
        self.ops.command(session, remote_ip, user, line)

    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        self.logs.reply(session, remote_ip, user, data)
        self.ops.reply(session, remote_ip, user, data)

    def transfer_start(self, session: str, remote_ip: str, user: str, path: str, direction: str,
                       size: int | None = None) -> None:
        self.logs.transfer_start(session, remote_ip, user, path, direction)
        self.ops.transfer_start(session, remote_ip, user, path, direction, size)

    def progress(self, session: str, moved: int) -> None:
        self.ops.progress(session, moved)

    def tls_handshake(self, session: str, remote_ip: str, ok: bool) -> None:
        self.ops.tls_handshake(session, remote_ip, ok)

    def transfer(self, record: TransferRecord) -> None:
        self.logs.transfer(record)
        self.ops.transfer(record)

    def fs_change(self, session: str, remote_ip: str, user: str, op: str, path: str,
                  target: str, ok: bool) -> None:
        self.logs.fs_change(session, remote_ip, user, op, path, target, ok)

    def disconnect(self, session: str, remote_ip: str, user: str, reason: str) -> None:
        self.logs.disconnect(session, remote_ip, user, reason)
        self.ops.disconnect(session, remote_ip, user, reason)

    def debug(self, session: str, remote_ip: str, user: str, text: str) -> None:
        self.logs.debug(session, remote_ip, user, text)

    def userlist_refused(self, session: str, remote_ip: str, user: str, text: str) -> None:
        self.logs.userlist_refused(session, remote_ip, user, text)
        self.ops.login(session, remote_ip, user, None, False, text)

    def connect_refused(self, session: str, remote_ip: str, text: str) -> None:
        self.logs.connect_refused(session, remote_ip, text)

    def ban(self, remote_ip: str, seconds: int) -> None:
        self.logs.ban(remote_ip, seconds)
        self.ops.ban(remote_ip, seconds)

    def reopen(self) -> None:
        self.logs.reopen()

    def close(self) -> None:
        self.logs.close()


def _file(option: str, path: str | None, make: Callable[..., Any] = FileSink, *, lock: bool = False) -> Any:
    if not path:
        raise LogFileError(option, "(unset)", "no path given")
    try:
        return make(path, lock=lock)
    except OSError as e:
        raise LogFileError(option, path, e.strerror or str(e)) from None


def _wanted(cfg: Any) -> tuple[bool, bool]:
    """(xferlog file wanted, vsftpd-format file wanted), by vsftpd's rules."""
    files_on = cfg.xferlog_enable or cfg.dual_log_enable
    want_xferlog = files_on and (cfg.dual_log_enable or cfg.xferlog_std_format)
    want_vsftpd = files_on and (cfg.dual_log_enable or not cfg.xferlog_std_format) and not cfg.syslog_enable
    return bool(want_xferlog), bool(want_vsftpd)


def log_files(cfg: Any) -> list[tuple[str, str | None]]:
    """(option, path) of every log file `cfg` would open, for start-up checks."""
    want_xferlog, want_vsftpd = _wanted(cfg)
    files = [("xferlog_file", cfg.xferlog_file)] if want_xferlog else []
    files += [("vsftpd_log_file", cfg.vsftpd_log_file)] if want_vsftpd else []
    files += [("json_log_file", cfg.json_log_file)] if cfg.json_log_file else []
    return files


def check_log_file(option: str, path: str | None) -> str | None:
    """Why `path` could not be opened for appending (LogFileError's text), or None.

    Creates nothing: an existing file is opened without O_CREAT, a missing
    one needs a directory we may write.
    """
    if not path:
        return str(LogFileError(option, "(unset)", "no path given"))
    if path == "-":
        return None
    try:
        if os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK))
            return None
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(2, os.strerror(2))
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, os.strerror(13))
    except OSError as e:
        return str(LogFileError(option, path, e.strerror or str(e)))
    return None


def build_event_log(cfg: Any, *, verbose: bool = False, ops: EventLog | None = None) -> EventLog:
    """The sinks `cfg` asks for, opened now; the no-op EventLog when none.

    `verbose` (serve -v) also writes the vsftpd-format lines to stderr.
    `ops` (ops.sink.OpsSink, metrics_listen/control_socket): also receives every event.
    Raises LogFileError when a log file cannot be opened.
    """
    logs = _build_logs(cfg, verbose)
    return logs if ops is None else TeeEventLog(logs, ops)


def _build_logs(cfg: Any, verbose: bool) -> EventLog:
    want_xferlog, want_vsftpd = _wanted(cfg)
    if not (want_xferlog or want_vsftpd or cfg.syslog_enable or cfg.json_log_file or verbose):
        return EventLog()
    syslog = None
    if cfg.syslog_enable:
        syslog = SyslogSink(cfg.syslog_socket or "/dev/log")
        if not syslog.connected:
            log.warning("syslog_enable: nothing listens on %s yet; messages are dropped until it does",
                        syslog.path)
    lock = not cfg.no_log_lock
    return ConfiguredEventLog(
        xferlog=_file("xferlog_file", cfg.xferlog_file, lock=lock) if want_xferlog else None,
        vsftpd_log=_file("vsftpd_log_file", cfg.vsftpd_log_file, lock=lock) if want_vsftpd else None,
        syslog=syslog,
        json=_file("json_log_file", cfg.json_log_file, JsonLinesSink, lock=lock) if cfg.json_log_file else None,
        stderr=StderrSink() if verbose else None,
        protocol=bool(cfg.log_ftp_protocol),
        wide=bool(cfg.wc_logs_enable),
    )
