"""The FTP session state machine: bytes in, replies and actions out.  No I/O.

`Session.feed(line)` takes one control line (CRLF removed) and returns a list of
events: `Reply` objects to send and `Action` objects to perform.  The I/O layer
performs an action and hands its outcome to `Session.complete`, which returns
more events.  Every verb passes `_gate` (login, argument, path, permission) once;
what each verb then does is in `verbs.py`.
"""

from __future__ import annotations

import dataclasses
import errno
import stat as stat_mod
from typing import Any, Callable, Iterable

from . import addr, listing, paths
from .actions import (
    Action, Authenticate, ChangeDir, ComputeHash, ControlListing, FsChange, OpenPassive, ReceiveFile,
    RestartBeyondEnd, SendFile, SendListing, StatPath, Transfer, TransferDone,
)
from .commands import COMMANDS, HTTP_VERBS, Arg, Command, Perm, Spec, parse_line
from .errors import FtpError, RemoteProtocolError
from .paths import matches_any, name_patterns
from .replies import Code, Reply, reply_for_oserror
from .verbs import ANONYMOUS_NAMES, HASH_ALGORITHMS, VerbHandlers

__all__ = ["Session", "Event", "HASH_ALGORITHMS", "ANONYMOUS_NAMES"]

Event = Reply | Action
MAX_ERRORS = 20  # unknown/bad commands in a row before we hang up (vsftpd does 10 pre-login)
# The verbs that take the REST marker (and so end it), whatever their outcome.
# Every other command leaves it alone, as in vsftpd and pyftpdlib: clients send
# REST before or after PASV/PORT/TYPE, so only the transfer may consume it.
_TAKES_REST = frozenset({"RETR", "STOR", "APPE", "STOU"})


class Session(VerbHandlers):
    """State of one control connection.  `cfg` is read by attribute only."""

    # slots: a pooled server holds thousands of these
    __slots__ = ("cfg", "name_of", "refuse_user", "local_ip", "remote_ip", "banner", "_deny", "_hide",
                 "_allowed", "_denied", "idle_timeout", "tls", "account", "pending_user", "login_fails",
                 "cwd", "ascii", "rest", "rename_from", "data_kind", "port_target", "epsv_all",
                 "hash_algorithm", "mlst_facts", "umask", "transferring", "errors", "pbsz",
                 "prot_private")

    def __init__(self, cfg: Any, *, local_ip: str, remote_ip: str, banner: str | None = None,
                 names: Callable[[int, bool], str] | None = None,
                 refuse_user: Callable[[str], bool] | None = None) -> None:
        self.cfg = cfg
        self.refuse_user = refuse_user  # vsftpd's userlist: refused at USER, before a password
        self.name_of = names  # uid/gid -> name for listings (True: user, False: group)
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.banner = banner
        self._deny = name_patterns(getattr(cfg, "deny_file", None))
        self._hide = name_patterns(getattr(cfg, "hide_file", None))
        self._allowed = self._verb_set(getattr(cfg, "cmds_allowed", None))
        self._denied = self._verb_set(getattr(cfg, "cmds_denied", None))
        self.idle_timeout = int(getattr(cfg, "idle_session_timeout", 300) or 0)
        self.tls = False  # the control connection is protected; REIN keeps it so
        self._reset()

    @staticmethod
    def _verb_set(value: str | None) -> frozenset[str] | None:
        return frozenset(v.strip().upper() for v in value.split(",") if v.strip()) if value else None

    def _reset(self) -> None:
        self.account: Any = None
        self.pending_user: str | None = None
        self.login_fails = 0
        self.cwd = "/"
        self.ascii = False
        self.rest = 0
        self.rename_from: str | None = None
        self.data_kind: str | None = None       # None, "pasv" or "port"
        self.port_target: tuple[str, int] | None = None
        self.epsv_all = False
        self.hash_algorithm = "SHA-256"
        self.mlst_facts = listing.DEFAULT_FACTS
        self.umask = 0o077
        self.transferring: Transfer | None = None
        self.errors = 0
        self.pbsz = False
        self.prot_private = False

    # ------------------------------------------------------------------ entry points

    @property
    def logged_in(self) -> bool:
        return self.account is not None

    def greeting(self) -> list[Event]:
        # banner_file replaces ftpd_banner (vsftpd: the file wins when both are set)
        if self.banner and self.banner.strip("\n"):
            lines = tuple(self.banner.rstrip("\n").split("\n"))
            return [Reply(Code.READY, lines[0], lines[1:])]
        return [Reply(Code.READY, getattr(self.cfg, "ftpd_banner", None) or "(ftpwarden)")]

    def runs_during_transfer(self, line: bytes) -> bool:
        """May this line be handled while a transfer runs (ABOR, STAT, QUIT)?"""
        verb = line.split(b" ", 1)[0].strip().upper().lstrip(b"\xff\xf4\xf2")
        spec = COMMANDS.get(verb.decode("ascii", "replace"))
        return spec is not None and spec.during_transfer

    def feed(self, line: bytes) -> list[Event]:
        """One control line, CRLF removed."""
        try:
            cmd = parse_line(line)
        except RemoteProtocolError as e:
            return self._error(Reply(e.code, e.text, close=e.close))
        if cmd.verb in HTTP_VERBS:
                return [Reply(Code.SYNTAX_ERROR, "HTTP protocol commands not allowed.", close=True)]
        try:
            events = self._dispatch(cmd)
        except RemoteProtocolError as e:
            return self._error(Reply(e.code, e.text, close=e.close))
        except FtpError as e:
            return [Reply(e.code, e.text)]
        self.errors = 0
        return events

    def _error(self, reply: Reply) -> list[Event]:
        self.errors += 1
        if self.errors >= MAX_ERRORS:
                return [Reply(Code.SYNTAX_ERROR, "Too many errors.", close=True)]
        return [reply]

    # ------------------------------------------------------------------ the one gate

    def _gate(self, verb: str, spec: Spec, arg: str) -> str | None:
        """Check login, argument, path and permission; return the path (if any)."""
        if spec.login and not self.logged_in:
            raise FtpError(Code.NOT_LOGGED_IN, "Please login with USER and PASS.")
        if self.logged_in and not self._verb_allowed(verb):
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
        if spec.arg in (Arg.REQUIRED, Arg.PATH) and not arg:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, f"{verb} needs an argument.")
        vpath = None
        if spec.arg is Arg.LIST_PATH:
            _flags, arg = listing.parse_list_args(arg)
        if spec.arg in (Arg.PATH, Arg.PATH_OPTIONAL, Arg.LIST_PATH):
            vpath = paths.resolve(self.cwd, arg) if arg else self.cwd
            if self._deny and matches_any(self._deny, vpath):
                raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
            if spec.file_only and paths.names_directory(arg):
                # resolve() dropped the slash; the kernel would refuse "file/" (ENOTDIR)
                raise FtpError(Code.FILE_UNAVAILABLE, f"{verb} needs a file name; \"{arg}\" names a directory.")
        if spec.perm is not None and not self.may(spec.perm):
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
        return vpath

    def _verb_allowed(self, verb: str) -> bool:
        if self._denied is not None and verb in self._denied:
            return False
        return self._allowed is None or verb in self._allowed

    def may(self, perm: Perm) -> bool:
        return self.account is not None and perm in self.account.grants

    def _dispatch(self, cmd: Command) -> list[Event]:
        spec = COMMANDS.get(cmd.verb)
        if spec is None:
            raise RemoteProtocolError(Code.SYNTAX_ERROR, "Unknown command.")
        try:
            vpath = self._gate(cmd.verb, spec, cmd.arg)
            handler: Callable[[str, str | None], list[Event]] = getattr(self, "_" + _HANDLER.get(cmd.verb, cmd.verb).lower())
            if cmd.verb != "RNTO" and cmd.verb != "RNFR":
                self.rename_from = None
            return handler(cmd.arg, vpath)
        finally:
            if cmd.verb in _TAKES_REST:
                self.rest = 0  # used (or refused) once; never left for a later transfer

    # ------------------------------------------------------------------ outcomes

    def complete(self, action: Action, outcome: Any) -> list[Event]:
        """The I/O layer performed `action`; turn its outcome into replies."""
        if isinstance(action, Transfer):
            return self._transfer_done(action, outcome)
        handler = getattr(self, "_done_" + type(action).__name__.lower())
        try:
            return handler(action, outcome)
        except FtpError as e:
            return [Reply(e.code, e.text)]

    def _done_authenticate(self, action: Authenticate, account: Any) -> list[Event]:
        if isinstance(account, OSError):  # the user's root cannot be opened
                return [Reply(Code.UNAVAILABLE, "Cannot change to the home directory.", close=True)]
        if account is None:
            self.login_fails += 1
            self.pending_user = None
            if self.login_fails >= max(1, int(getattr(self.cfg, "max_login_fails", 3) or 3)):
                        return [Reply(Code.NOT_LOGGED_IN, "Login incorrect.", close=True)]
            return [Reply(Code.NOT_LOGGED_IN, "Login incorrect.")]
        self.account = account
        self.pending_user = None
        self.umask = account.umask
        self.cwd = getattr(account, "start_dir", "/") or "/"
        return [Reply(Code.LOGGED_IN, "Login successful.")]

    def _done_changedir(self, action: ChangeDir, outcome: Any) -> list[Event]:
        if isinstance(outcome, OSError):
            return [Reply(Code.FILE_UNAVAILABLE, "Failed to change directory.")]
        self.cwd = action.path
        code = Code.OK if action.verb == "CDUP" else Code.FILE_ACTION_OK
        if outcome:
            lines = tuple(outcome.rstrip("\n").split("\n"))
            return [Reply(code, lines[0], lines[1:] + ("Directory successfully changed.",))]
        return [Reply(code, "Directory successfully changed.")]

    def _done_fschange(self, action: FsChange, outcome: Any) -> list[Event]:
        if isinstance(outcome, OSError):
            return [reply_for_oserror(outcome, action.verb)]
        if action.op == "mkdir":
            return [Reply(Code.PATH_CREATED, f"{paths.quote_pwd(action.path)} created.")]
        if action.op == "chmod":
            return [Reply(Code.OK, "SITE CHMOD command ok.")]
        if action.op == "utime":
            return [Reply(Code.FILE_STATUS, f"Modify={listing.mdtm(action.mtime)}; {action.path}")]
        if action.op == "rename":
            return [Reply(Code.FILE_ACTION_OK, "Rename successful.")]
        if action.op == "rmdir":
            return [Reply(Code.FILE_ACTION_OK, "Remove directory operation successful.")]
        return [Reply(Code.FILE_ACTION_OK, "Delete operation successful.")]

    def _done_statpath(self, action: StatPath, st: Any) -> list[Event]:
        if not isinstance(st, OSError) and action.dir_only and not stat_mod.S_ISDIR(st.st_mode):
            st = NotADirectoryError(errno.ENOTDIR, "Not a directory")  # "file/", as the kernel says
        if isinstance(st, OSError):
            if action.verb == "RNFR":
                return [Reply(Code.FILE_UNAVAILABLE, "RNFR command failed.")]
            return [Reply(Code.FILE_UNAVAILABLE, "Could not get file size." if action.verb == "SIZE"
                          else "Could not get file modification time.")]
        if action.verb == "RNFR":
            self.rename_from = action.path
            return [Reply(Code.PENDING, "Ready for RNTO.")]
        if action.verb == "SIZE":
            if not stat_mod.S_ISREG(st.st_mode):
                return [Reply(Code.FILE_UNAVAILABLE, "Could not get file size.")]
            return [Reply(Code.FILE_STATUS, str(st.st_size))]
        if action.verb == "MDTM":
            if not stat_mod.S_ISREG(st.st_mode):
                return [Reply(Code.FILE_UNAVAILABLE, "Could not get file modification time.")]
            return [Reply(Code.FILE_STATUS, listing.mdtm(st.st_mtime))]
        raise AssertionError(action.verb)

    def _done_controllisting(self, action: ControlListing, outcome: Any) -> list[Event]:
        """Outcome: (entries, now) or OSError."""
        if isinstance(outcome, OSError):
            if action.verb == "MLST":
                return [Reply(Code.FILE_UNAVAILABLE, "Could not get file status.")]
            return [Reply(Code.FILE_UNAVAILABLE, "No such file or directory.")]
        entries, now = outcome
        if action.verb == "MLST":
            (entry,) = entries
            line = self._mlsx_line(entry, name=action.path)
            return [Reply(Code.FILE_ACTION_OK, "Start of list for " + action.path, (" " + line,))]
        return [Reply(Code.FILE_STATUS, "Status follows:", tuple(self.render_lines("LIST", entries, now, show_hidden=True)))]

    def _done_openpassive(self, action: OpenPassive, outcome: Any) -> list[Event]:
        if isinstance(outcome, OSError):
            return [Reply(Code.CANT_OPEN_DATA, "Cannot open passive connection.")]
        host, port = outcome
        self.data_kind, self.port_target = "pasv", None
        if action.extended:
            return [Reply(Code.EXTENDED_PASSIVE, addr.format_epsv(port))]
        return [Reply(Code.PASSIVE, addr.format_pasv(host, port))]

    def _done_computehash(self, action: ComputeHash, outcome: Any) -> list[Event]:
        if isinstance(outcome, OSError):
            return [reply_for_oserror(outcome, "HASH")]
        digest, size = outcome
        end = max(size - 1, 0)
        return [Reply(Code.FILE_STATUS, f"{action.algorithm} 0-{end} {digest} {paths.basename(action.path) or '/'}")]

    # ------------------------------------------------------------------ transfers

    def transfer_started(self, action: Transfer, size: int | None = None) -> Reply:
        """The file or listing is ready and the data connection is open: the 150."""
        if isinstance(action, SendListing):
            return Reply(Code.FILE_STATUS_OK, "Here comes the directory listing.")
        mode = "ASCII" if getattr(action, "ascii", False) else "BINARY"
        if isinstance(action, SendFile):
            extra = f" ({size} bytes)" if size is not None else ""
            return Reply(Code.FILE_STATUS_OK, f"Opening {mode} mode data connection for {paths.basename(action.path)}{extra}.")
        if isinstance(action, ReceiveFile) and action.unique:
            return Reply(Code.FILE_STATUS_OK, f"FILE: {paths.basename(action.path)}")
        return Reply(Code.FILE_STATUS_OK, "Ok to send data.")

    def _transfer_done(self, action: Transfer, done: TransferDone) -> list[Event]:
        self.transferring = None
        self.data_kind = None  # a data channel serves one transfer
        if done.status == "ok":
            if isinstance(action, SendListing):
                return [Reply(Code.DATA_CLOSING, "Directory send OK.")]
            if isinstance(action, ReceiveFile) and action.unique:
                return [Reply(Code.DATA_CLOSING, f"Transfer complete; unique name {done.name}.")]
            return [Reply(Code.DATA_CLOSING, "Transfer complete.")]
        if done.status == "no_data_connection":
            return [Reply(Code.CANT_OPEN_DATA, "Failed to establish connection.")]
        if done.status == "tls_refused":
            return [Reply(522, f"TLS on the data connection failed: {done.detail}.")]
        if done.status == "aborted":
            return [Reply(Code.TRANSFER_ABORTED, "Transfer aborted.")]
        if done.status == "connection_lost":
            return [Reply(Code.TRANSFER_ABORTED, "Connection closed; transfer aborted.")]
        if isinstance(done.error, RestartBeyondEnd):
            # RFC 1123 4.1.3.4 (as pyftpdlib); vsftpd sends 0 bytes and a 226,
            # which tells a resuming client nothing
            e = done.error
            return [Reply(Code.INVALID_RESTART,
                          f"Restart position {e.offset} is past the end of the file ({e.size} bytes).")]
        if done.error is not None:
            if isinstance(action, SendListing) and action.kind == "MLSD" and done.error.errno == errno.ENOTDIR:
                return [Reply(Code.ARGUMENT_ERROR, "MLSD needs a directory; use MLST for a file.")]  # RFC 3659 7.2
            reply = reply_for_oserror(done.error)
            if isinstance(action, SendListing) and reply.code == Code.FILE_UNAVAILABLE:
                return [reply]
            if reply.code == Code.FILE_UNAVAILABLE and isinstance(action, ReceiveFile) and not action.may_overwrite:
                return [Reply(Code.BAD_FILE_NAME, "Could not create file.")]
            return [reply]
        return [Reply(Code.LOCAL_ERROR, "Local error in processing.")]

    def _start_transfer(self, action: Transfer) -> list[Event]:
        if self.data_kind is None:
            raise FtpError(Code.CANT_OPEN_DATA, "Use PORT or PASV first.")
        if not self.prot_private and self._data_tls_forced():
            raise FtpError(522, "Data connections must be encrypted: send PBSZ 0 and PROT P.")
        if self.prot_private:
            action = dataclasses.replace(action, tls=True)  # type: ignore[type-var]
        self.transferring = action
        return [action]

    def _data_tls_forced(self) -> bool:
        cfg = self.cfg
        if not getattr(cfg, "ssl_enable", False):
            return False
        return bool(cfg.force_anon_data_ssl if self._is_anonymous() else cfg.force_local_data_ssl)

    def render_lines(self, kind: str, entries: Iterable[listing.Entry], now: float,
                     show_hidden: bool = False, *, pattern: str = "", prefix: str = "") -> list[str]:
        """Listing lines (no CRLF); pure, safe to call from a worker thread.

        `pattern`: only names matching this glob (a pattern starting with "."
        shows dot files, as in vsftpd); more than paths.GLOB_MAX matches is an
        error (E2BIG).  `prefix`: NLST prints it before each name (the directory
        as the client wrote it)."""
        show_hidden = show_hidden or bool(getattr(self.cfg, "force_dot_files", False))
        if pattern:
            show_hidden = show_hidden or pattern.startswith(".")
            entries = [e for e in entries if paths.glob_match(e.name, pattern)]
            if len(entries) > paths.GLOB_MAX:
                raise OSError(errno.E2BIG, f"more than {paths.GLOB_MAX} names match {pattern!r}")
        hide_ids = bool(getattr(self.cfg, "hide_ids", False))
        localtime = bool(getattr(self.cfg, "use_localtime", False))
        names = self.name_of
        out = []
        for e in entries:
            if not listing.visible(e.name, show_hidden=show_hidden):
                continue
            if self._hide and matches_any(self._hide, e.name):
                continue
            if kind == "NLST":
                out.append(prefix + e.name)
            elif kind == "MLSD":
                out.append(self._mlsx_line(e, name=e.name))
            else:
                owner = group = "ftp"
                if not hide_ids:
                    owner = names(e.uid, True) if names else str(e.uid)
                    group = names(e.gid, False) if names else str(e.gid)
                out.append(listing.ls_line(e, now, owner=owner, group=group, localtime=localtime))
        return out

    def _mlsx_line(self, e: listing.Entry, *, name: str) -> str:
        is_dir = stat_mod.S_ISDIR(e.mode)
        perm = listing.perm_fact(
            is_dir, can_read=self.may(Perm.DOWNLOAD), can_write=self.may(Perm.UPLOAD),
            can_delete=self.may(Perm.DELETE), can_rename=self.may(Perm.RENAME),
            can_mkdir=self.may(Perm.MKDIR), can_list=self.may(Perm.LIST))
        hide = bool(getattr(self.cfg, "hide_ids", False))
        names = self.name_of
        owner = "ftp" if hide else (names(e.uid, True) if names else str(e.uid))
        group = "ftp" if hide else (names(e.gid, False) if names else str(e.gid))
        if name != e.name:
            e = e._replace(name=name)
        return listing.mlsx_facts(e, perm=perm, owner=owner, group=group, facts=self.mlst_facts)

    # ------------------------------------------------------------------ helpers

    def is_anonymous(self) -> bool:
        return self._is_anonymous()

    def _is_anonymous(self) -> bool:
        cls = getattr(self.account, "user_class", None)
        return getattr(cls, "value", cls) == "anonymous"



_HANDLER = {"XCWD": "CWD", "XCUP": "CDUP", "XMKD": "MKD", "XRMD": "RMD", "XPWD": "PWD"}
