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
import os
import stat as stat_mod
from collections.abc import Callable, Iterable
from typing import TypeGuard

from . import addr, listing, paths
from .actions import (
    Action,
    Authenticate,
    ChangeDir,
    ComputeHash,
    ControlListing,
    FsChange,
    OpenPassive,
    Outcome,
    ReceiveFile,
    RestartBeyondEnd,
    SendFile,
    SendListing,
    ShowQuota,
    StatPath,
    Transfer,
    TransferAction,
    TransferDone,
)
from .commands import COMMANDS, HTTP_VERBS, Arg, Command, Perm, Spec, parse_line
from .errors import FtpError, RemoteProtocolError
from .framing import TooLong, strip_telnet
from .options import SessionOptions
from .paths import matches_any, name_matches, name_patterns
from .principal import Principal, UserClass
from .replies import Code, Reply, reply_for_oserror
from .sequence import KEEPS_RENAME, TAKES_REST
from .verbs import ANONYMOUS_NAMES, HANDLERS, HASH_ALGORITHMS, VerbHandlers

__all__ = ["Session", "Event", "HASH_ALGORITHMS", "ANONYMOUS_NAMES"]

Event = Reply | Action
MAX_ERRORS = 20  # unknown/bad commands in a row before we hang up (vsftpd does 10 pre-login)


class Session(VerbHandlers):
    """State of one control connection under `options` (policy.options builds them)."""

    # slots: a pooled server holds thousands of these (the handlers' state is declared in VerbHandlers)
    __slots__ = ("name_of", "banner", "_deny", "_hide", "_download", "_upload", "_allowed", "_denied", "login_fails",
                 "errors")

    def __init__(self, options: SessionOptions, *, local_ip: str, remote_ip: str, banner: str | None = None,
                 names: Callable[[int, bool], str] | None = None,
                 refuse_user: Callable[[str], bool] | None = None) -> None:
        self.options = options
        self.refuse_user = refuse_user  # vsftpd's userlist: refused at USER, before a password
        self.name_of = names  # uid/gid -> name for listings (True: user, False: group)
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.banner = banner
        self._deny = name_patterns(options.deny_file)
        self._hide = name_patterns(options.hide_file)
        self._download = name_patterns(options.download_file)  # empty: every name may be downloaded
        self._upload = name_patterns(options.upload_file)
        self._allowed = self._verb_set(options.cmds_allowed)
        self._denied = self._verb_set(options.cmds_denied)
        self.idle_timeout = options.idle_session_timeout
        self.tls = False  # the control connection is protected; REIN keeps it so
        self._reset()

    @staticmethod
    def _verb_set(value: str | None) -> frozenset[str] | None:
        return frozenset(v.strip().upper() for v in value.split(",") if v.strip()) if value else None

    def _reset(self) -> None:
        self.account = None
        self.pending_user = None
        self.login_fails = 0
        self.cwd = "/"
        self.ascii = False
        self.rest = 0
        self.rename_from = None
        self.data_kind = None       # None, "pasv" or "port"
        self.port_target = None
        self.epsv_all = False
        self.hash_algorithm = "SHA-256"
        self.mlst_facts = listing.DEFAULT_FACTS
        self.umask = 0o077
        self.transferring = None
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
        return [Reply(Code.READY, self.options.ftpd_banner or "(ftpwarden)")]

    def runs_during_transfer(self, line: bytes) -> bool:
        """May this line be handled while a transfer runs (ABOR, STAT, QUIT)?"""
        verb = strip_telnet(line).split(b" ", 1)[0].strip().upper()  # Telnet IP/DM come before ABOR
        spec = COMMANDS.get(verb.decode("ascii", "replace"))
        return spec is not None and spec.during_transfer

    def feed(self, line: bytes | TooLong) -> list[Event]:
        """One control line, CRLF removed (or framing.TOO_LONG: a line past the cap)."""
        try:
            if isinstance(line, TooLong):
                raise RemoteProtocolError(Code.SYNTAX_ERROR, "Command line too long.")
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
        """Check login, argument, path and permission; return the path (if any).
        `verb` names the row (and is what cmds_allowed/cmds_denied list)."""
        if spec.login and not self.logged_in:
            raise FtpError(Code.NOT_LOGGED_IN, "Please login with USER and PASS.")
        if self.logged_in and not self._verb_allowed(verb):
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
        if spec.arg in (Arg.REQUIRED, Arg.PATH, Arg.MODE_PATH, Arg.TIME_PATH) and not arg:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, f"{verb} needs an argument.")
        vpath = None
        if spec.arg is Arg.LIST_PATH:
            _flags, arg = listing.parse_list_args(arg)
        if spec.path_after_word:
            arg = arg.partition(" ")[2]  # the handler checks the first word (and a missing path)
        if spec.arg in (Arg.PATH, Arg.PATH_OPTIONAL, Arg.LIST_PATH) or (spec.path_after_word and arg):
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

    def _row(self, cmd: Command) -> tuple[str, str]:
        """The table row `cmd` is checked against, and that row's argument."""
        if cmd.verb == "SITE":
            sub, _, rest = cmd.arg.strip().partition(" ")
            row = "SITE " + sub.upper()
            return (row, rest.strip()) if row in COMMANDS else (cmd.verb, cmd.arg)
        if cmd.verb == "MDTM" and self.options.mdtm_write and _time_then_path(cmd.arg):
            return "MFMT", cmd.arg  # vsftpd's mdtm_write: "MDTM time path" sets the time
        return cmd.verb, cmd.arg

    def _dispatch(self, cmd: Command) -> list[Event]:
        if cmd.verb not in COMMANDS:
            raise RemoteProtocolError(Code.SYNTAX_ERROR, "Unknown command.")
        row, arg = self._row(cmd)
        spec = COMMANDS[row]
        if spec.with_arg is not None and arg:
            spec = spec.with_arg
        try:
            if row != cmd.verb and self.logged_in and not self._verb_allowed(cmd.verb):
                raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
            vpath = self._gate(row, spec, arg or spec.default_arg)
            if cmd.verb not in KEEPS_RENAME:
                self.rename_from = None
            return HANDLERS[row](self, arg, vpath)
        finally:
            if cmd.verb in TAKES_REST:
                self.rest = 0  # used (or refused) once; never left for a later transfer

    # ------------------------------------------------------------------ outcomes

    def complete(self, action: Action, outcome: Outcome) -> list[Event]:
        """The I/O layer performed `action`; turn its outcome into replies."""
        if isinstance(action, Transfer):
            if not isinstance(outcome, TransferDone):
                raise TypeError(f"a transfer ends with TransferDone, not {outcome!r}")
            return self._transfer_done(action, outcome)
        try:
            return self._outcome(action, outcome)
        except FtpError as e:
            return [Reply(e.code, e.text)]

    def _outcome(self, action: Action, outcome: Outcome) -> list[Event]:
        """THE registry of outcome handlers: each action ends with the outcome
        actions.py names; any other pair is a bug of the I/O layer."""
        match action:
            case Authenticate() if outcome is None or isinstance(outcome, (Principal, OSError)):
                return self._done_authenticate(action, outcome)
            case ChangeDir() if outcome is None or isinstance(outcome, (str, OSError)):
                return self._done_changedir(action, outcome)
            case FsChange() if outcome is None or isinstance(outcome, OSError):
                return self._done_fschange(action, outcome)
            case StatPath() if isinstance(outcome, (os.stat_result, OSError)):
                return self._done_statpath(action, outcome)
            case ControlListing() if _is_listing(outcome):
                return self._done_controllisting(action, outcome)
            case OpenPassive() if _is_name_and_number(outcome):
                return self._done_openpassive(action, outcome)
            case ComputeHash() if _is_name_and_number(outcome):
                return self._done_computehash(action, outcome)
            case ShowQuota() if isinstance(outcome, OSError) or _is_lines(outcome):
                return self._done_showquota(outcome)
        raise TypeError(f"{type(action).__name__} does not end with {outcome!r}")

    def _done_authenticate(self, action: Authenticate, account: Principal | OSError | None) -> list[Event]:
        if isinstance(account, OSError):  # the user's root cannot be opened
                return [Reply(Code.UNAVAILABLE, "Cannot change to the home directory.", close=True)]
        if account is None:
            self.login_fails += 1
            self.pending_user = None
            if self.login_fails >= self.options.max_login_fails:
                        return [Reply(Code.NOT_LOGGED_IN, "Login incorrect.", close=True)]
            return [Reply(Code.NOT_LOGGED_IN, "Login incorrect.")]
        self.account = account
        self.pending_user = None
        self.umask = account.umask
        self.cwd = account.start_dir or "/"
        return [Reply(Code.LOGGED_IN, "Login successful.")]

    def _done_changedir(self, action: ChangeDir, outcome: str | OSError | None) -> list[Event]:
        if isinstance(outcome, OSError):
            return [Reply(Code.FILE_UNAVAILABLE, "Failed to change directory.")]
        self.cwd = action.path
        code = Code.OK if action.verb == "CDUP" else Code.FILE_ACTION_OK
        if outcome:
            lines = tuple(outcome.rstrip("\n").split("\n"))
            return [Reply(code, lines[0], lines[1:] + ("Directory successfully changed.",))]
        return [Reply(code, "Directory successfully changed.")]

    def _done_fschange(self, action: FsChange, outcome: OSError | None) -> list[Event]:
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

    def _done_statpath(self, action: StatPath, st: os.stat_result | OSError) -> list[Event]:
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

    def _done_controllisting(self, action: ControlListing,
                             outcome: tuple[list[listing.Entry], float] | OSError) -> list[Event]:
        if isinstance(outcome, OSError):
            if action.verb == "MLST":
                return [Reply(Code.FILE_UNAVAILABLE, "Could not get file status.")]
            return [Reply(Code.FILE_UNAVAILABLE, "No such file or directory.")]
        entries, now = outcome
        if action.verb == "MLST":
            (entry,) = entries
            line = self._mlsx_line(entry, name=action.path)
            return [Reply(Code.FILE_ACTION_OK, "Start of list for " + action.path, (" " + line,))]
        lines = tuple(self.render_lines("LIST", entries, now, show_hidden=True))
        return [Reply(Code.FILE_STATUS, "Status follows:", lines)]

    def _done_openpassive(self, action: OpenPassive, outcome: tuple[str, int] | OSError) -> list[Event]:
        if isinstance(outcome, OSError):
            return [Reply(Code.CANT_OPEN_DATA, "Cannot open passive connection.")]
        host, port = outcome
        self.data_kind, self.port_target = "pasv", None
        if action.extended:
            return [Reply(Code.EXTENDED_PASSIVE, addr.format_epsv(port))]
        return [Reply(Code.PASSIVE, addr.format_pasv(host, port))]

    def _done_computehash(self, action: ComputeHash, outcome: tuple[str, int] | OSError) -> list[Event]:
        if isinstance(outcome, OSError):
            return [reply_for_oserror(outcome, "HASH")]
        digest, size = outcome
        end = max(size - 1, 0)
        return [Reply(Code.FILE_STATUS, f"{action.algorithm} 0-{end} {digest} {paths.basename(action.path) or '/'}")]

    def _done_showquota(self, outcome: tuple[str, ...] | OSError) -> list[Event]:
        if isinstance(outcome, OSError):
            return [Reply(Code.LOCAL_ERROR, "Quota usage unavailable.")]
        if not outcome:
            return [Reply(Code.OK, "No quota for this user.")]
        return [Reply(Code.OK, outcome[0], tuple(outcome[1:]) + ("End.",))]

    # ------------------------------------------------------------------ transfers

    def transfer_started(self, action: Transfer, size: int | None = None) -> Reply:
        """The file or listing is ready and the data connection is open: the 150."""
        if isinstance(action, SendListing):
            return Reply(Code.FILE_STATUS_OK, "Here comes the directory listing.")
        mode = "ASCII" if isinstance(action, (SendFile, ReceiveFile)) and action.ascii else "BINARY"
        if isinstance(action, SendFile):
            extra = f" ({size} bytes)" if size is not None else ""
            name = paths.basename(action.path)
            return Reply(Code.FILE_STATUS_OK, f"Opening {mode} mode data connection for {name}{extra}.")
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
        if done.status == "truncated":  # the listing's bytes went out, up to a clear last line
            return [Reply(Code.LOCAL_ERROR, f"Listing truncated: {done.detail}.")]
        if done.status == "refused":
            return [Reply(Code.FILE_UNAVAILABLE, f"Upload refused by the server's check{done.detail}.")]
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

    def _start_transfer(self, action: TransferAction) -> list[Event]:
        if self.data_kind is None:
            raise FtpError(Code.CANT_OPEN_DATA, "Use PORT or PASV first.")
        if not self.prot_private and self._data_tls_forced():
            raise FtpError(522, "Data connections must be encrypted: send PBSZ 0 and PROT P.")
        self._check_name_allowed(action)
        action = self._transfer_decisions(action)
        self.transferring = action
        return [action]

    def _check_name_allowed(self, action: TransferAction) -> None:
        """download_file / upload_file (Debian's vsftpd): only names matching may move.
        The gate checked deny_file first, so a denied name stays denied (deny wins).
        The name checked is the file's own (its last component): an allow-list that
        matched a directory component would open every file below it."""
        patterns = self._download if isinstance(action, SendFile) else \
            self._upload if isinstance(action, ReceiveFile) else ()
        if patterns and not name_matches(patterns, action.path):
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")

    def _transfer_decisions(self, action: TransferAction) -> TransferAction:
        """What the I/O layer only carries out: protection, rate, upload handling, listing rule."""
        o = self.options
        anon = self._is_anonymous()
        rate = o.anon_max_rate if anon else o.local_max_rate
        protected = self.prot_private or action.protected
        reuse = self.prot_private and o.require_ssl_reuse
        if isinstance(action, ReceiveFile):
            return dataclasses.replace(action, rate=rate, protected=protected, reuse_required=reuse,
                                       atomic=o.atomic_uploads, chown=anon and o.chown_uploads,
                                       lock=o.lock_upload_files, delete_on_failure=o.delete_failed_uploads,
                                       random_suffix=action.unique and o.better_stou)
        if isinstance(action, SendFile):
            return dataclasses.replace(action, rate=rate, protected=protected, reuse_required=reuse,
                                       lock=o.lock_upload_files)
        if isinstance(action, SendListing):  # RFC 3659 7.2: MLSD lists a directory, never a file
            dir_only = action.kind == "MLSD" or bool(action.pattern) or paths.names_directory(action.given)
            return dataclasses.replace(action, rate=rate, protected=protected, reuse_required=reuse, dir_only=dir_only)
        return dataclasses.replace(action, rate=rate, protected=protected, reuse_required=reuse)

    def _data_tls_forced(self) -> bool:
        o = self.options
        if not o.ssl_enable:
            return False
        return o.force_anon_data_ssl if self._is_anonymous() else o.force_local_data_ssl

    def render_lines(self, kind: str, entries: Iterable[listing.Entry], now: float,
                     show_hidden: bool = False, *, pattern: str = "", prefix: str = "") -> list[str]:
        """Listing lines (no CRLF); pure, safe to call from a worker thread.

        `pattern`: only names matching this glob (a pattern starting with "."
        shows dot files, as in vsftpd); more than paths.GLOB_MAX matches is an
        error (E2BIG).  `prefix`: NLST prints it before each name (the directory
        as the client wrote it)."""
        show_hidden = show_hidden or self.options.force_dot_files
        if pattern:
            show_hidden = show_hidden or pattern.startswith(".")
            entries = [e for e in entries if paths.glob_match(e.name, pattern)]
            if len(entries) > paths.GLOB_MAX:
                raise OSError(errno.E2BIG, f"more than {paths.GLOB_MAX} names match {pattern!r}")
        hide = self._hide
        shown = [e for e in entries
                 if e.name not in (".", "..") and (show_hidden or not e.name.startswith("."))
                 and not (hide and matches_any(hide, e.name))]  # listing.visible, inlined
        if kind == "NLST":
            return [prefix + e.name for e in shown]
        owner, group = self._id_names()
        if kind == "MLSD":
            perm_file, perm_dir = self._perm_facts()
            return listing.mlsx_lines(shown, perm_file=perm_file, perm_dir=perm_dir,
                                      owner=owner, group=group, facts=self.mlst_facts)
        return listing.ls_lines(shown, now, owner=owner, group=group, localtime=self.options.use_localtime)

    def subdirectories(self, vpath: str, entries: Iterable[listing.Entry], show_hidden: bool) -> list[listing.Entry]:
        """ls -R (ls_recurse_enable): the entries of directory `vpath` a recursive
        listing goes into.  Directories by their lstat, so a symlink is never
        followed (no loop through one, nothing outside through one); only those
        the listing shows (dot files with -a or force_dot_files, never hide_file's);
        never deny_file's (their contents could not be listed by name either)."""
        show_hidden = show_hidden or self.options.force_dot_files
        hide, deny = self._hide, self._deny
        return [e for e in entries
                if stat_mod.S_ISDIR(e.mode) and e.name not in (".", "..")
                and (show_hidden or not e.name.startswith("."))
                and not (hide and matches_any(hide, e.name))
                and not (deny and matches_any(deny, paths.resolve(vpath, e.name)))]

    def _id_names(self) -> tuple[Callable[[int], str], Callable[[int], str]]:
        """uid -> owner and gid -> group as listings show them."""
        if self.options.hide_ids:
            return (lambda _: "ftp"), (lambda _: "ftp")
        names = self.name_of
        if names is None:
            return str, str
        return (lambda uid: names(uid, True)), (lambda gid: names(gid, False))

    def _perm_facts(self) -> tuple[str, str]:
        """MLSx perm= letters of a file and of a directory for this account."""
        may = self.may
        grants = dict(can_read=may(Perm.DOWNLOAD), can_write=may(Perm.UPLOAD),
                      can_delete=may(Perm.DELETE), can_rename=may(Perm.RENAME),
                      can_mkdir=may(Perm.MKDIR), can_list=may(Perm.LIST))
        return listing.perm_fact(False, **grants), listing.perm_fact(True, **grants)

    def _mlsx_line(self, e: listing.Entry, *, name: str) -> str:
        is_dir = stat_mod.S_ISDIR(e.mode)
        perm = listing.perm_fact(
            is_dir, can_read=self.may(Perm.DOWNLOAD), can_write=self.may(Perm.UPLOAD),
            can_delete=self.may(Perm.DELETE), can_rename=self.may(Perm.RENAME),
            can_mkdir=self.may(Perm.MKDIR), can_list=self.may(Perm.LIST))
        hide = self.options.hide_ids
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
        return self.account is not None and self.account.user_class is UserClass.ANONYMOUS



def _is_lines(outcome: Outcome) -> TypeGuard[tuple[str, ...]]:
    return isinstance(outcome, tuple) and all(isinstance(x, str) for x in outcome)


def _is_listing(outcome: Outcome) -> TypeGuard[tuple[list[listing.Entry], float] | OSError]:
    """(entries, now) or OSError: ControlListing's outcome."""
    return isinstance(outcome, OSError) or (
        type(outcome) is tuple and len(outcome) == 2 and isinstance(outcome[0], list)
        and isinstance(outcome[1], float))


def _is_name_and_number(outcome: Outcome) -> TypeGuard[tuple[str, int] | OSError]:
    """(host, port) of OpenPassive, (digest, size) of ComputeHash, or OSError."""
    return isinstance(outcome, OSError) or (
        type(outcome) is tuple and len(outcome) == 2 and isinstance(outcome[0], str)
        and isinstance(outcome[1], int))


def _time_then_path(arg: str) -> bool:
    """"YYYYMMDDHHMMSS path" (MDTM that sets the time)."""
    stamp, _, rest = arg.partition(" ")
    return bool(rest) and len(stamp) >= 14 and stamp[:14].isdigit()
