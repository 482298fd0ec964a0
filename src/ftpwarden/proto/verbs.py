"""The verb handlers of `Session`: what each command means once it passed the gate.

A mixin: `Session` (proto/session.py) owns the state, the one gate and the
outcomes; the methods here read and change that state and return replies and
actions.  Each handler is registered for its rows of the command table with
`@handles`; `HANDLERS` maps every row to exactly one of them.  A handler is
called as `handler(session, arg, vpath)` once the row passed the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from . import addr, listing, paths
from .actions import (
    AbortTransfer,
    Action,
    Authenticate,
    ChangeDir,
    ClosePassive,
    ComputeHash,
    ControlListing,
    FsChange,
    OpenPassive,
    ReceiveFile,
    ResetSession,
    SendFile,
    SendListing,
    ShowQuota,
    StartTls,
    StatPath,
    TlsState,
    Transfer,
    TransferAction,
)
from .commands import COMMANDS, VERBS, Perm
from .errors import FtpError, RemoteProtocolError
from .options import SessionOptions
from .principal import Principal
from .replies import Code, Reply
from .sequence import out_of_sequence

__all__ = ["VerbHandlers", "HANDLERS", "Handler", "handles", "HASH_ALGORITHMS", "ANONYMOUS_NAMES", "tls_login_refusal"]

Event = Reply | Action

HASH_ALGORITHMS = ("SHA-256", "SHA-1", "MD5", "CRC32")
ANONYMOUS_NAMES = frozenset({"ftp", "anonymous"})
# SITE IDLE's ceiling when idle_session_timeout is 0 (no timeout): a client
# may not make its session immortal (the behaviour before options were typed).
_IDLE_CAP = 7200

Handler = Callable[["VerbHandlers", str, "str | None"], list[Event]]
HANDLERS: dict[str, Handler] = {}
"""Row of the command table -> its one handler (filled by @handles)."""


def handles(*rows: str) -> Callable[[Handler], Handler]:
    """Register the decorated method as the handler of `rows` (keys of COMMANDS)."""
    def register(handler: Handler) -> Handler:
        for row in rows:
            if row not in COMMANDS:
                raise LookupError(f"{row} is not a row of the command table")
            if row in HANDLERS:
                raise LookupError(f"{row} has a handler already: {HANDLERS[row].__name__}")
            HANDLERS[row] = handler
        return handler
    return register


class VerbHandlers:
    """Handlers for every row of the command table; mixed into Session."""

    # The session state the handlers read and change, declared here so mypy
    # checks them; Session (which adds its own) sets them in __init__/_reset.
    __slots__ = ("options", "refuse_user", "local_ip", "remote_ip", "idle_timeout", "tls", "account",
                 "pending_user", "cwd", "ascii", "rest", "rename_from", "data_kind", "port_target", "epsv_all",
                 "hash_algorithm", "mlst_facts", "umask", "transferring", "pbsz", "prot_private")
    options: SessionOptions
    refuse_user: Callable[[str], bool] | None
    local_ip: str
    remote_ip: str
    idle_timeout: int
    tls: bool
    account: Principal | None
    pending_user: str | None
    cwd: str
    ascii: bool
    rest: int
    rename_from: str | None
    data_kind: str | None
    port_target: tuple[str, int] | None
    epsv_all: bool
    hash_algorithm: str
    mlst_facts: frozenset[str]
    umask: int
    transferring: Transfer | None
    pbsz: bool
    prot_private: bool

    if TYPE_CHECKING:  # Session's methods the handlers call
        @property
        def logged_in(self) -> bool: ...
        def _reset(self) -> None: ...
        def may(self, perm: Perm) -> bool: ...
        def _is_anonymous(self) -> bool: ...
        def _start_transfer(self, action: TransferAction) -> list[Event]: ...

    # ------------------------------------------------------------------ access control

    @handles("USER")
    def _user(self, arg: str, _p: str | None) -> list[Event]:
        if self.logged_in:
            return [Reply(Code.NOT_LOGGED_IN, "Can't change to another user.")]
        name = arg.strip()
        if self.refuse_user is not None and self.refuse_user(name):
            return [Reply(Code.NOT_LOGGED_IN, "Permission denied.")]
        anonymous = name.lower() in ANONYMOUS_NAMES
        if anonymous and not self.options.anonymous_enable:
            return [Reply(Code.NOT_LOGGED_IN, "This FTP server does not allow anonymous logins.")]
        refusal = self._tls_login_refusal(anonymous)
        if refusal:
            return [Reply(Code.NOT_LOGGED_IN, refusal)]
        self.pending_user = name
        if anonymous and self.options.no_anon_password:
            return [Authenticate(name, "", failure_delay=float(self.options.delay_failed_login))]
        if anonymous:
            return [Reply(Code.NEED_PASSWORD, "Please specify the password (your e-mail address).")]
        return [Reply(Code.NEED_PASSWORD, "Please specify the password.")]

    def _tls_login_refusal(self, anonymous: bool) -> str | None:
        return tls_login_refusal(self.options, anonymous=anonymous, protected=self.tls)

    @handles("PASS")
    def _pass(self, arg: str, _p: str | None) -> list[Event]:
        if self.logged_in:
            return [Reply(Code.LOGGED_IN, "Already logged in.")]
        if (refused := out_of_sequence(self, "PASS")) is not None:
            return [refused]
        assert self.pending_user is not None  # the USER -> PASS rule held
        delay = float(self.options.delay_failed_login)
        return [Authenticate(self.pending_user, arg, failure_delay=delay)]

    @handles("ACCT")
    def _acct(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "ACCT not needed.")]

    @handles("REIN")
    def _rein(self, arg: str, _p: str | None) -> list[Event]:
        if self.transferring is not None:
            return [Reply(Code.BAD_SEQUENCE, "Transfer in progress.")]
        self._reset()
        return [ResetSession(), Reply(Code.READY, "Service ready for new user.")]

    @handles("QUIT")
    def _quit(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.CLOSING, "Goodbye.", close=True)]

    @handles("SMNT")
    def _smnt(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "SMNT not needed: one file system.")]

    # ------------------------------------------------------------------ FTPS (RFC 2228, 4217)

    @handles("AUTH")
    def _auth(self, arg: str, _p: str | None) -> list[Event]:
        if not self.options.ssl_enable:
            return [Reply(Code.NOT_IMPLEMENTED, "TLS is not enabled on this server.")]
        if arg.strip().upper() not in ("TLS", "SSL", "TLS-C", "TLS-P"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Unknown AUTH type; use AUTH TLS.")]
        if (refused := out_of_sequence(self, "AUTH")) is not None:
            return [refused]
        return [Reply(Code.SECURITY_OK, "Proceed with negotiation."), StartTls()]

    def tls_started(self) -> None:
        """The control connection is now TLS (after AUTH TLS, or implicit TLS)."""
        self.tls = True

    def tls_state(self) -> TlsState:
        """This session's TLS state, to hand to the process that reads on after login."""
        return TlsState(self.tls, self.pbsz, self.prot_private)

    def resume_tls(self, state: TlsState) -> None:
        """Take over the TLS state the pre-login process negotiated."""
        self.tls, self.pbsz, self.prot_private = state.protected, state.pbsz, state.prot_private

    @handles("PBSZ")
    def _pbsz(self, arg: str, _p: str | None) -> list[Event]:
        if (refused := out_of_sequence(self, "PBSZ")) is not None:
            return [refused]
        if not arg.strip().isdigit():
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "PBSZ needs a number.")
        self.pbsz = True
        return [Reply(Code.OK, "PBSZ=0")]

    @handles("PROT")
    def _prot(self, arg: str, _p: str | None) -> list[Event]:
        if (refused := out_of_sequence(self, "PROT")) is not None:
            return [refused]
        level = arg.strip().upper()
        if level == "P":
            self.prot_private = True
            return [Reply(Code.OK, "PROT now Private.")]
        if level == "C":
            self.prot_private = False
            return [Reply(Code.OK, "PROT now Clear.")]
        if level in ("S", "E"):
            return [Reply(536, "PROT level not supported; use P or C.")]
        return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Unknown PROT level.")]

    @handles("CCC")
    def _ccc(self, arg: str, _p: str | None) -> list[Event]:
        # Clearing the control channel would let anyone on the path rewrite
        # commands; it is refused (RFC 2228 534), as vsftpd does.
        if not self.tls:
            return [Reply(533, "The control connection is not protected.")]
        return [Reply(Code.POLICY_REFUSED, "CCC refused by policy: the control channel stays protected.")]

    # ------------------------------------------------------------------ navigation

    @handles("CWD", "XCWD")
    def _cwd(self, arg: str, vpath: str | None) -> list[Event]:
        msg = self.options.message_file if self.options.dirmessage_enable else None
        return [ChangeDir(vpath or "/", msg)]

    @handles("CDUP", "XCUP")
    def _cdup(self, arg: str, _p: str | None) -> list[Event]:
        return [ChangeDir(paths.parent(self.cwd), None, verb="CDUP")]

    @handles("PWD", "XPWD")
    def _pwd(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.PATH_CREATED, f"{paths.quote_pwd(self.cwd)} is the current directory")]

    # ------------------------------------------------------------------ parameters

    @handles("TYPE")
    def _type(self, arg: str, _p: str | None) -> list[Event]:
        t = arg.upper().split()
        if t in (["A"], ["A", "N"]):
            self.ascii = True
            return [Reply(Code.OK, "Switching to ASCII mode.")]
        if t in (["I"], ["L", "8"], ["L8"]):
            self.ascii = False
            return [Reply(Code.OK, "Switching to Binary mode.")]
        if t and t[0] in ("A", "E", "L"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Type not implemented for that parameter.")]
        return [Reply(Code.ARGUMENT_ERROR, "Unrecognised TYPE command.")]

    @handles("STRU")
    def _stru(self, arg: str, _p: str | None) -> list[Event]:
        if arg.upper() == "F":
            return [Reply(Code.OK, "Structure set to F.")]
        if arg.upper() in ("R", "P"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Bad STRU command.")]
        return [Reply(Code.ARGUMENT_ERROR, "Bad STRU command.")]

    @handles("MODE")
    def _mode(self, arg: str, _p: str | None) -> list[Event]:
        if arg.upper() == "S":
            return [Reply(Code.OK, "Mode set to S.")]
        if arg.upper() in ("B", "C", "Z"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Bad MODE command.")]
        return [Reply(Code.ARGUMENT_ERROR, "Bad MODE command.")]

    @handles("ALLO")
    def _allo(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "ALLO command ignored.")]

    @handles("REST")
    def _rest(self, arg: str, _p: str | None) -> list[Event]:
        if not arg.isdigit() or len(arg) > 19:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "REST needs a non-negative integer.")
        self.rest = int(arg)
        return [Reply(Code.PENDING, f"Restart position accepted ({self.rest}).")]

    # ------------------------------------------------------------------ data channel

    def _ipv6_control(self) -> bool:
        return addr.ipv4_of(self.local_ip) is None

    @handles("PASV")
    def _pasv(self, arg: str, _p: str | None) -> list[Event]:
        if not self.options.pasv_enable:
            return [Reply(Code.FILE_UNAVAILABLE, "PASV is disabled.")]
        if (refused := out_of_sequence(self, "PASV")) is not None:
            return [refused]
        if self._ipv6_control():
            return [Reply(Code.CANT_OPEN_DATA, "PASV is IPv4 only; use EPSV on IPv6.")]
        return [OpenPassive(extended=False)]

    @handles("EPSV")
    def _epsv(self, arg: str, _p: str | None) -> list[Event]:
        if not self.options.pasv_enable:
            return [Reply(Code.FILE_UNAVAILABLE, "EPSV is disabled.")]
        a = arg.strip().upper()
        if a == "ALL":
            self.epsv_all = True
            return [Reply(Code.OK, "EPSV ALL ok.")]
        if a:
            want = "2" if self._ipv6_control() else "1"
            if a not in ("1", "2"):
                raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad network protocol.")
            if a != want:
                return [Reply(522, f"Network protocol not supported, use ({want})")]
        return [OpenPassive(extended=True)]

    @handles("PORT")
    def _port(self, arg: str, _p: str | None) -> list[Event]:
        host, port = addr.parse_port(arg)
        return self._active(host, port, "PORT")

    @handles("EPRT")
    def _eprt(self, arg: str, _p: str | None) -> list[Event]:
        _af, host, port = addr.parse_eprt(arg)
        return self._active(host, port, "EPRT")

    def _active(self, host: str, port: int, verb: str) -> list[Event]:
        if not self.options.port_enable:
            return [Reply(Code.FILE_UNAVAILABLE, f"{verb} is disabled.")]
        if (refused := out_of_sequence(self, verb)) is not None:
            return [refused]
        if not addr.port_allowed(host, port, self.remote_ip, promiscuous=self.options.port_promiscuous):
            return [Reply(Code.SYNTAX_ERROR, f"Illegal {verb} command.")]
        self.data_kind, self.port_target = "port", (host, port)
        return [ClosePassive(), Reply(Code.OK, f"{verb} command successful. Consider using EPSV.")]

    # ------------------------------------------------------------------ transfers

    @handles("RETR")
    def _retr(self, arg: str, vpath: str | None) -> list[Event]:
        offset, self.rest = self.rest, 0
        ascii_ = self.ascii and self.options.ascii_download_enable
        anon = self._is_anonymous()
        return self._start_transfer(SendFile(
            vpath or "/", offset=offset, ascii=ascii_,
            world_readable_only=anon and self.options.anon_world_readable_only))

    def _store(self, vpath: str, *, append: bool = False, unique: bool = False) -> list[Event]:
        offset, self.rest = self.rest, 0
        if append or unique:
            # APPE always appends and STOU always makes a new file: a marker
            # means nothing to them and is dropped (vsftpd ignores it for APPE)
            offset = 0
        overwrite = self.may(Perm.OVERWRITE)
        if (append or offset) and not overwrite:
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
        ascii_ = self.ascii and self.options.ascii_upload_enable
        mode = self.options.file_open_mode
        return self._start_transfer(ReceiveFile(
            vpath, offset=offset, append=append, ascii=ascii_, may_overwrite=overwrite,
            unique=unique, umask=self.umask, file_mode=mode))

    @handles("STOR")
    def _stor(self, arg: str, vpath: str | None) -> list[Event]:
        return self._store(vpath or "/")

    @handles("APPE")
    def _appe(self, arg: str, vpath: str | None) -> list[Event]:
        return self._store(vpath or "/", append=True)

    @handles("STOU")
    def _stou(self, arg: str, vpath: str | None) -> list[Event]:
        # the name to make unique is the argument, or "STOU" (the row's default_arg)
        return self._store(vpath or "/", unique=True)

    @handles("LIST")
    def _list(self, arg: str, vpath: str | None) -> list[Event]:
        return self._listing("LIST", arg, vpath)

    @handles("NLST")
    def _nlst(self, arg: str, vpath: str | None) -> list[Event]:
        return self._listing("NLST", arg, vpath)

    @handles("MLSD")
    def _mlsd(self, arg: str, vpath: str | None) -> list[Event]:
        return self._start_transfer(SendListing("MLSD", vpath or self.cwd, show_hidden=True))

    def _listing(self, kind: Literal["LIST", "NLST"], arg: str, vpath: str | None) -> list[Event]:
        flags, given = listing.parse_list_args(arg)  # the gate resolved `given` into vpath
        show_hidden = "a" in flags or "A" in flags
        pattern = ""
        glob = paths.split_glob(given)
        if glob is not None:  # "sub/*.txt": list sub, keep the names matching "*.txt"
            head, pattern = glob
            vpath = paths.resolve(self.cwd, head) if head else self.cwd
        # -R walks the tree only where ls_recurse_enable allows it (vsftpd ignores it otherwise);
        # a glob lists one directory's matches, never a tree
        recursive = "R" in flags and self.options.ls_recurse_enable and not pattern
        return self._start_transfer(SendListing(kind, vpath or self.cwd, show_hidden=show_hidden,
                                                given=given, pattern=pattern, recursive=recursive))

    @handles("ABOR")
    def _abor(self, arg: str, _p: str | None) -> list[Event]:
        # With a transfer running, the I/O layer cancels it, sends its 426 and then
        # this 226 (RFC 959 4.1.3).  Without one, a plain 225.
        if self.transferring is not None:
            return [AbortTransfer(), Reply(Code.DATA_CLOSING, "ABOR successful.")]
        self.data_kind = None
        return [ClosePassive(), Reply(225, "No transfer to ABOR.")]

    # ------------------------------------------------------------------ file operations

    @handles("DELE")
    def _dele(self, arg: str, vpath: str | None) -> list[Event]:
        return [FsChange("unlink", vpath or "/", verb="DELE")]

    @handles("RMD", "XRMD")
    def _rmd(self, arg: str, vpath: str | None) -> list[Event]:
        return [FsChange("rmdir", vpath or "/", verb="RMD")]

    @handles("MKD", "XMKD")
    def _mkd(self, arg: str, vpath: str | None) -> list[Event]:
        mode = 0o777 & ~self.umask
        return [FsChange("mkdir", vpath or "/", mode=mode, verb="MKD")]

    @handles("RNFR")
    def _rnfr(self, arg: str, vpath: str | None) -> list[Event]:
        return [StatPath("RNFR", vpath or "/", dir_only=paths.names_directory(arg))]

    @handles("RNTO")
    def _rnto(self, arg: str, vpath: str | None) -> list[Event]:
        refused = out_of_sequence(self, "RNTO")
        src, self.rename_from = self.rename_from, None
        if refused is not None:
            return [refused]
        assert src is not None  # the RNFR -> RNTO rule held
        # "RNTO x/" renames a directory only (rename(2) says ENOTDIR for a file)
        return [FsChange("rename", src, target=vpath or "/", verb="RNTO", dir_only=paths.names_directory(arg))]

    @handles("SIZE")
    def _size(self, arg: str, vpath: str | None) -> list[Event]:
        return [StatPath("SIZE", vpath or "/")]

    @handles("MDTM")
    def _mdtm(self, arg: str, vpath: str | None) -> list[Event]:
        # "MDTM YYYYMMDDHHMMSS path" (vsftpd's mdtm_write) is checked and run as MFMT
        return [StatPath("MDTM", vpath or "/")]

    @handles("MFMT")
    def _mfmt(self, arg: str, vpath: str | None) -> list[Event]:
        stamp, _, target = arg.partition(" ")
        if not target:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "MFMT needs a time and a path.")
        try:
            mtime = listing.parse_mfmt_time(stamp)
        except ValueError:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad time value.") from None
        return [FsChange("utime", vpath or "/", mtime=mtime, verb="MFMT", dir_only=paths.names_directory(target))]

    @handles("HASH")
    def _hash(self, arg: str, vpath: str | None) -> list[Event]:
        if not self.options.hash_enable:
            raise RemoteProtocolError(Code.SYNTAX_ERROR, "Unknown command.")
        return [ComputeHash(vpath or "/", self.hash_algorithm)]

    @handles("MLST")
    def _mlst(self, arg: str, vpath: str | None) -> list[Event]:
        return [ControlListing("MLST", vpath or self.cwd)]

    # ------------------------------------------------------------------ information

    @handles("SYST")
    def _syst(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.SYSTEM_TYPE, "UNIX Type: L8")]

    @handles("NOOP")
    def _noop(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.OK, "NOOP ok.")]

    def features(self) -> tuple[str, ...]:
        feats = ["EPRT", "EPSV", "MDTM", "MFMT", "PASV", "REST STREAM", "SIZE", "TVFS"]
        if self.options.ssl_enable:
            feats += ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT"]
        if self.options.mlsd_enable:
            facts = "".join(f + ("*;" if f in self.mlst_facts else ";") for f in listing.SUPPORTED_FACTS)
            feats.append("MLST " + facts)
        if self.options.utf8_enable or self.options.utf8_filesystem:  # Debian's utf8_filesystem: the same FEAT line
            feats.append("UTF8")
        if self.options.hash_enable:
            feats.append("HASH " + ";".join(a + ("*" if a == self.hash_algorithm else "") for a in HASH_ALGORITHMS))
        return tuple(sorted(feats))

    @handles("FEAT")
    def _feat(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.SYSTEM_STATUS, "Features:", self.features())]

    @handles("OPTS")
    def _opts(self, arg: str, _p: str | None) -> list[Event]:
        name, _, value = arg.strip().partition(" ")
        name, value = name.upper(), value.strip()
        if name == "UTF8" and value.upper() in ("ON", "OFF", ""):
            return [Reply(Code.OK, "Always in UTF8 mode.")]
        if name == "HASH":
            if not value:
                return [Reply(Code.OK, self.hash_algorithm)]
            if value.upper() not in HASH_ALGORITHMS:
                return [Reply(Code.ARGUMENT_ERROR, "Unknown algorithm; current one kept.")]
            self.hash_algorithm = value.upper()
            return [Reply(Code.OK, self.hash_algorithm)]
        if name == "MLST":
            wanted = [f for f in value.split(";") if f]
            known = {f.lower(): f for f in listing.SUPPORTED_FACTS}
            self.mlst_facts = frozenset(known[f.lower()] for f in wanted if f.lower() in known)
            shown = "".join(f + ";" for f in listing.SUPPORTED_FACTS if f in self.mlst_facts)
            return [Reply(Code.OK, f"MLST OPTS {shown}")]
        return [Reply(Code.ARGUMENT_ERROR, "Option not understood.")]

    @handles("HELP")
    def _help(self, arg: str, _p: str | None) -> list[Event]:
        verb = arg.strip().upper()
        if verb:
            spec = COMMANDS.get(verb)
            if spec is None:
                return [Reply(Code.ARGUMENT_ERROR, f"Unknown command {verb}.")]
            return [Reply(Code.HELP, f"Syntax: {spec.doc}")]
        verbs = VERBS
        rows = tuple(" ".join(f"{v:<5}" for v in verbs[i:i + 10]) for i in range(0, len(verbs), 10))
        return [Reply(Code.HELP, "The following commands are recognized.", rows)]

    @handles("STAT")
    def _stat(self, arg: str, vpath: str | None) -> list[Event]:
        if not arg:
            who = self.account.name if self.account else "(not logged in)"
            lines = [
                f"Connected to {self.remote_ip}",
                f"Logged in as {who}",
                f"TYPE: {'ASCII' if self.ascii else 'BINARY'}",
                f"Session timeout in seconds is {self.idle_timeout}",
            ]
            if self.transferring is not None:
                lines.append(f"Transfer in progress: {type(self.transferring).__name__}")
            else:
                lines.append("No data connection")
            return [Reply(Code.SYSTEM_STATUS, "FTP server status:", tuple(lines))]
        if self.transferring is not None:
            return [Reply(Code.BAD_SEQUENCE, "STAT path not allowed during a transfer.")]
        # the row's with_arg spec (login, LIST_PATH, LIST) checked the path
        return [ControlListing("STAT", vpath or self.cwd)]

    # ------------------------------------------------------------------ SITE

    @handles("SITE")
    def _site(self, arg: str, _p: str | None) -> list[Event]:
        # the known subcommands are rows of their own ("SITE CHMOD")
        return [Reply(Code.SYNTAX_ERROR, "Unknown SITE command.")]

    @handles("SITE HELP")
    def _site_help(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.HELP, " ".join(sorted(r.split(" ", 1)[1] for r in COMMANDS if r.startswith("SITE "))))]

    @handles("SITE CHMOD")
    def _site_chmod(self, arg: str, vpath: str | None) -> list[Event]:
        mode_s, _, target = arg.partition(" ")
        try:
            mode = int(mode_s, 8)
        except ValueError:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad mode.") from None
        if not target or mode < 0 or mode > 0o7777:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "SITE CHMOD needs <mode> <path>.")
        # setuid/setgid bits are never granted from the network
        return [FsChange("chmod", vpath or "/", mode=mode & 0o1777, verb="SITE CHMOD",
                         dir_only=paths.names_directory(target))]

    @handles("SITE UMASK")
    def _site_umask(self, arg: str, _p: str | None) -> list[Event]:
        if not arg:
            return [Reply(Code.OK, f"Your current UMASK is {self.umask:04o}")]
        try:
            value = int(arg, 8)
        except ValueError:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad UMASK value.") from None
        if not 0 <= value <= 0o777:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad UMASK value.")
        self.umask = value
        return [Reply(Code.OK, f"UMASK set to {value:04o}")]

    @handles("SITE IDLE")
    def _site_idle(self, arg: str, _p: str | None) -> list[Event]:
        if not arg:
            return [Reply(Code.OK, f"Current idle time is {self.idle_timeout}")]
        if not arg.isdigit():
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad SITE IDLE value.")
        # a client may shorten its timeout, never lengthen it past the operator's
        limit = self.options.idle_session_timeout or _IDLE_CAP
        self.idle_timeout = max(30, min(int(arg), limit))
        return [Reply(Code.OK, f"SITE IDLE set to {self.idle_timeout}")]

    @handles("SITE QUOTA")
    def _site_quota(self, arg: str, _p: str | None) -> list[Event]:
        return [ShowQuota()]  # the I/O layer knows the usage (ops/quota.py)



def tls_login_refusal(o: SessionOptions, *, anonymous: bool, protected: bool) -> str | None:
    """vsftpd's force_*_logins_ssl and allow_anon_ssl: why this login may not
    go on (the reply text), or None.  Checked at USER, and again by the
    isolated-mode monitor at login."""
    if not o.ssl_enable:
        return None
    if anonymous:
        if protected and not o.allow_anon_ssl:
            return "Anonymous sessions may not use encryption."
        if not protected and o.force_anon_logins_ssl:
            return "Anonymous sessions must use encryption."
    elif not protected and o.force_local_logins_ssl:
        return "Non-anonymous sessions must use encryption."
    return None
