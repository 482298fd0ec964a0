"""The verb handlers of `Session`: what each command means once it passed the gate.

A mixin: `Session` (proto/session.py) owns the state, the one gate and the
outcomes; the methods here read and change that state and return replies and
actions.  `_verb` handles VERB (aliases in session._HANDLER).
"""

from __future__ import annotations

from typing import Any

from . import addr, listing, paths
from .actions import (
    Action,
    AbortTransfer, Authenticate, ChangeDir, ClosePassive, ComputeHash, ControlListing, FsChange,
    OpenPassive, ReceiveFile, ResetSession, SendFile, SendListing, StartTls, StatPath,
)
from .commands import COMMANDS, Arg, Perm, Spec
from .errors import FtpError, RemoteProtocolError
from .replies import Code, Reply

__all__ = ["VerbHandlers", "HASH_ALGORITHMS", "ANONYMOUS_NAMES", "SITE_COMMANDS"]

Event = Reply | Action

HASH_ALGORITHMS = ("SHA-256", "SHA-1", "MD5", "CRC32")
ANONYMOUS_NAMES = frozenset({"ftp", "anonymous"})

SITE_COMMANDS: dict[str, Spec] = {
    "CHMOD": Spec(arg=Arg.REQUIRED, perm=Perm.CHMOD, doc="SITE CHMOD <mode> <path>"),
    "UMASK": Spec(arg=Arg.OPTIONAL, doc="SITE UMASK [mask]"),
    "IDLE": Spec(arg=Arg.OPTIONAL, doc="SITE IDLE [seconds]"),
    "HELP": Spec(login=False, arg=Arg.OPTIONAL, doc="SITE HELP"),
}


class VerbHandlers:
    """Handlers for every row of the command table; mixed into Session."""

    __slots__ = ()
    # provided by Session
    cfg: Any
    account: Any

    # ------------------------------------------------------------------ access control

    def _user(self, arg: str, _p: str | None) -> list[Event]:
        if self.logged_in:
            return [Reply(Code.NOT_LOGGED_IN, "Can't change to another user.")]
        name = arg.strip()
        if self.refuse_user is not None and self.refuse_user(name):
            return [Reply(Code.NOT_LOGGED_IN, "Permission denied.")]
        anonymous = name.lower() in ANONYMOUS_NAMES
        if anonymous and not getattr(self.cfg, "anonymous_enable", True):
            return [Reply(Code.NOT_LOGGED_IN, "This FTP server does not allow anonymous logins.")]
        refusal = self._tls_login_refusal(anonymous)
        if refusal:
            return [Reply(Code.NOT_LOGGED_IN, refusal)]
        self.pending_user = name
        if anonymous and getattr(self.cfg, "no_anon_password", False):
            return [Authenticate(name, "")]
        if anonymous:
            return [Reply(Code.NEED_PASSWORD, "Please specify the password (your e-mail address).")]
        return [Reply(Code.NEED_PASSWORD, "Please specify the password.")]

    def _tls_login_refusal(self, anonymous: bool) -> str | None:
        """vsftpd's force_*_logins_ssl and allow_anon_ssl, checked at USER."""
        cfg = self.cfg
        if not getattr(cfg, "ssl_enable", False):
            return None
        if anonymous:
            if self.tls and not cfg.allow_anon_ssl:
                return "Anonymous sessions may not use encryption."
            if not self.tls and cfg.force_anon_logins_ssl:
                return "Anonymous sessions must use encryption."
        elif not self.tls and cfg.force_local_logins_ssl:
            return "Non-anonymous sessions must use encryption."
        return None

    def _pass(self, arg: str, _p: str | None) -> list[Event]:
        if self.logged_in:
            return [Reply(Code.LOGGED_IN, "Already logged in.")]
        if self.pending_user is None:
            return [Reply(Code.BAD_SEQUENCE, "Login with USER first.")]
        return [Authenticate(self.pending_user, arg)]

    def _acct(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "ACCT not needed.")]

    def _rein(self, arg: str, _p: str | None) -> list[Event]:
        if self.transferring is not None:
            return [Reply(Code.BAD_SEQUENCE, "Transfer in progress.")]
        self._reset()
        return [ResetSession(), Reply(Code.READY, "Service ready for new user.")]

    def _quit(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.CLOSING, "Goodbye.", close=True)]

    def _smnt(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "SMNT not needed: one file system.")]

    # ------------------------------------------------------------------ FTPS (RFC 2228, 4217)

    def _auth(self, arg: str, _p: str | None) -> list[Event]:
        if not getattr(self.cfg, "ssl_enable", False):
            return [Reply(Code.NOT_IMPLEMENTED, "TLS is not enabled on this server.")]
        if arg.strip().upper() not in ("TLS", "SSL", "TLS-C", "TLS-P"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Unknown AUTH type; use AUTH TLS.")]
        if self.tls:
            return [Reply(Code.BAD_SEQUENCE, "Already using TLS.")]
        if self.logged_in or self.pending_user is not None:
            return [Reply(Code.BAD_SEQUENCE, "AUTH must come before USER.")]
        return [Reply(Code.SECURITY_OK, "Proceed with negotiation."), StartTls()]

    def tls_started(self) -> None:
        """The control connection is now TLS (after AUTH TLS, or implicit TLS)."""
        self.tls = True

    def _pbsz(self, arg: str, _p: str | None) -> list[Event]:
        if not self.tls:
            return [Reply(Code.BAD_SEQUENCE, "PBSZ needs a TLS control connection (AUTH TLS first).")]
        if not arg.strip().isdigit():
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "PBSZ needs a number.")
        self.pbsz = True
        return [Reply(Code.OK, "PBSZ=0")]

    def _prot(self, arg: str, _p: str | None) -> list[Event]:
        if not self.tls:
            return [Reply(Code.BAD_SEQUENCE, "PROT needs a TLS control connection (AUTH TLS first).")]
        if not self.pbsz:
            return [Reply(Code.BAD_SEQUENCE, "PBSZ must come before PROT.")]
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

    def _ccc(self, arg: str, _p: str | None) -> list[Event]:
        # Clearing the control channel would let anyone on the path rewrite
        # commands; it is refused (RFC 2228 534), as vsftpd does.
        if not self.tls:
            return [Reply(533, "The control connection is not protected.")]
        return [Reply(Code.POLICY_REFUSED, "CCC refused by policy: the control channel stays protected.")]

    # ------------------------------------------------------------------ navigation

    def _cwd(self, arg: str, vpath: str | None) -> list[Event]:
        msg = getattr(self.cfg, "message_file", ".message") if getattr(self.cfg, "dirmessage_enable", False) else None
        return [ChangeDir(vpath or "/", msg)]

    def _cdup(self, arg: str, _p: str | None) -> list[Event]:
        return [ChangeDir(paths.parent(self.cwd), None, verb="CDUP")]

    def _pwd(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.PATH_CREATED, f"{paths.quote_pwd(self.cwd)} is the current directory")]

    # ------------------------------------------------------------------ parameters

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

    def _stru(self, arg: str, _p: str | None) -> list[Event]:
        if arg.upper() == "F":
            return [Reply(Code.OK, "Structure set to F.")]
        if arg.upper() in ("R", "P"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Bad STRU command.")]
        return [Reply(Code.ARGUMENT_ERROR, "Bad STRU command.")]

    def _mode(self, arg: str, _p: str | None) -> list[Event]:
        if arg.upper() == "S":
            return [Reply(Code.OK, "Mode set to S.")]
        if arg.upper() in ("B", "C", "Z"):
            return [Reply(Code.PARAMETER_NOT_IMPLEMENTED, "Bad MODE command.")]
        return [Reply(Code.ARGUMENT_ERROR, "Bad MODE command.")]

    def _allo(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.NOT_IMPLEMENTED_SUPERFLUOUS, "ALLO command ignored.")]

    def _rest(self, arg: str, _p: str | None) -> list[Event]:
        if not arg.isdigit() or len(arg) > 19:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "REST needs a non-negative integer.")
        self.rest = int(arg)
        return [Reply(Code.PENDING, f"Restart position accepted ({self.rest}).")]

    # ------------------------------------------------------------------ data channel

    def _ipv6_control(self) -> bool:
        return addr.ipv4_of(self.local_ip) is None

    def _pasv(self, arg: str, _p: str | None) -> list[Event]:
        if not getattr(self.cfg, "pasv_enable", True):
            return [Reply(Code.FILE_UNAVAILABLE, "PASV is disabled.")]
        if self.epsv_all:
            return [Reply(Code.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV.")]
        if self._ipv6_control():
            return [Reply(Code.CANT_OPEN_DATA, "PASV is IPv4 only; use EPSV on IPv6.")]
        return [OpenPassive(extended=False)]

    def _epsv(self, arg: str, _p: str | None) -> list[Event]:
        if not getattr(self.cfg, "pasv_enable", True):
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

    def _port(self, arg: str, _p: str | None) -> list[Event]:
        host, port = addr.parse_port(arg)
        return self._active(host, port, "PORT")

    def _eprt(self, arg: str, _p: str | None) -> list[Event]:
        _af, host, port = addr.parse_eprt(arg)
        return self._active(host, port, "EPRT")

    def _active(self, host: str, port: int, verb: str) -> list[Event]:
        if not getattr(self.cfg, "port_enable", True):
            return [Reply(Code.FILE_UNAVAILABLE, f"{verb} is disabled.")]
        if self.epsv_all:
            return [Reply(Code.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV.")]
        if not getattr(self.cfg, "port_promiscuous", False):
            if port < 1024 or not addr.same_host(host, self.remote_ip):
                return [Reply(Code.SYNTAX_ERROR, f"Illegal {verb} command.")]
        self.data_kind, self.port_target = "port", (host, port)
        return [ClosePassive(), Reply(Code.OK, f"{verb} command successful. Consider using EPSV.")]

    # ------------------------------------------------------------------ transfers

    def _retr(self, arg: str, vpath: str | None) -> list[Event]:
        offset, self.rest = self.rest, 0
        ascii_ = self.ascii and bool(getattr(self.cfg, "ascii_download_enable", False))
        anon = self._is_anonymous()
        return self._start_transfer(SendFile(
            vpath or "/", offset=offset, ascii=ascii_,
            world_readable_only=anon and bool(getattr(self.cfg, "anon_world_readable_only", True))))

    def _store(self, vpath: str, *, append: bool = False, unique: bool = False) -> list[Event]:
        offset, self.rest = self.rest, 0
        if append or unique:
            # APPE always appends and STOU always makes a new file: a marker
            # means nothing to them and is dropped (vsftpd ignores it for APPE)
            offset = 0
        overwrite = self.may(Perm.OVERWRITE)
        if (append or offset) and not overwrite:
            raise FtpError(Code.FILE_UNAVAILABLE, "Permission denied.")
        ascii_ = self.ascii and bool(getattr(self.cfg, "ascii_upload_enable", False))
        mode = int(getattr(self.cfg, "file_open_mode", 0o666))
        return self._start_transfer(ReceiveFile(
            vpath, offset=offset, append=append, ascii=ascii_, may_overwrite=overwrite,
            unique=unique, umask=self.umask, file_mode=mode))

    def _stor(self, arg: str, vpath: str | None) -> list[Event]:
        return self._store(vpath or "/")

    def _appe(self, arg: str, vpath: str | None) -> list[Event]:
        return self._store(vpath or "/", append=True)

    def _stou(self, arg: str, _p: str | None) -> list[Event]:
        # the name to make unique is the argument, or "STOU"; it passes the gate's path step
        base = self._gate("STOU", Spec(arg=Arg.PATH, file_only=True, perm=Perm.UPLOAD), arg or "STOU")
        return self._store(base or "/", unique=True)

    def _list(self, arg: str, vpath: str | None) -> list[Event]:
        return self._listing("LIST", arg, vpath)

    def _nlst(self, arg: str, vpath: str | None) -> list[Event]:
        return self._listing("NLST", arg, vpath)

    def _mlsd(self, arg: str, vpath: str | None) -> list[Event]:
        return self._start_transfer(SendListing("MLSD", vpath or self.cwd, show_hidden=True))

    def _listing(self, kind: str, arg: str, vpath: str | None) -> list[Event]:
        flags, given = listing.parse_list_args(arg)  # the gate resolved `given` into vpath
        show_hidden = "a" in flags or "A" in flags
        pattern = ""
        glob = paths.split_glob(given)
        if glob is not None:  # "sub/*.txt": list sub, keep the names matching "*.txt"
            head, pattern = glob
            vpath = paths.resolve(self.cwd, head) if head else self.cwd
        return self._start_transfer(SendListing(kind, vpath or self.cwd, show_hidden=show_hidden,
                                                given=given, pattern=pattern))

    def _abor(self, arg: str, _p: str | None) -> list[Event]:
        # With a transfer running, the I/O layer cancels it, sends its 426 and then
        # this 226 (RFC 959 4.1.3).  Without one, a plain 225.
        if self.transferring is not None:
            return [AbortTransfer(), Reply(Code.DATA_CLOSING, "ABOR successful.")]
        self.data_kind = None
        return [ClosePassive(), Reply(225, "No transfer to ABOR.")]

    # ------------------------------------------------------------------ file operations

    def _dele(self, arg: str, vpath: str | None) -> list[Event]:
        return [FsChange("unlink", vpath or "/", verb="DELE")]

    def _rmd(self, arg: str, vpath: str | None) -> list[Event]:
        return [FsChange("rmdir", vpath or "/", verb="RMD")]

    def _mkd(self, arg: str, vpath: str | None) -> list[Event]:
        mode = 0o777 & ~self.umask
        return [FsChange("mkdir", vpath or "/", mode=mode, verb="MKD")]

    def _rnfr(self, arg: str, vpath: str | None) -> list[Event]:
        return [StatPath("RNFR", vpath or "/", dir_only=paths.names_directory(arg))]

    def _rnto(self, arg: str, vpath: str | None) -> list[Event]:
        src, self.rename_from = self.rename_from, None
        if src is None:
            return [Reply(Code.BAD_SEQUENCE, "RNFR required first.")]
        # "RNTO x/" renames a directory only (rename(2) says ENOTDIR for a file)
        return [FsChange("rename", src, target=vpath or "/", verb="RNTO", dir_only=paths.names_directory(arg))]

    def _size(self, arg: str, vpath: str | None) -> list[Event]:
        return [StatPath("SIZE", vpath or "/")]

    def _mdtm(self, arg: str, vpath: str | None) -> list[Event]:
        # vsftpd's mdtm_write: "MDTM YYYYMMDDHHMMSS path" sets the time.
        stamp, _, rest = arg.partition(" ")
        if rest and len(stamp) >= 14 and stamp[:14].isdigit() and getattr(self.cfg, "mdtm_write", True):
            return self._set_mtime(stamp, rest)
        return [StatPath("MDTM", vpath or "/")]

    def _mfmt(self, arg: str, _p: str | None) -> list[Event]:
        stamp, _, rest = arg.partition(" ")
        if not rest:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "MFMT needs a time and a path.")
        return self._set_mtime(stamp, rest)

    def _set_mtime(self, stamp: str, arg: str) -> list[Event]:
        vpath = self._gate("MFMT", Spec(arg=Arg.PATH, perm=Perm.SET_MTIME), arg)
        try:
            mtime = listing.parse_mfmt_time(stamp)
        except ValueError:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad time value.") from None
        return [FsChange("utime", vpath or "/", mtime=mtime, verb="MFMT", dir_only=paths.names_directory(arg))]

    def _hash(self, arg: str, vpath: str | None) -> list[Event]:
        if not getattr(self.cfg, "hash_enable", True):
            raise RemoteProtocolError(Code.SYNTAX_ERROR, "Unknown command.")
        return [ComputeHash(vpath or "/", self.hash_algorithm)]

    def _mlst(self, arg: str, vpath: str | None) -> list[Event]:
        return [ControlListing("MLST", vpath or self.cwd)]

    # ------------------------------------------------------------------ information

    def _syst(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.SYSTEM_TYPE, "UNIX Type: L8")]

    def _noop(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.OK, "NOOP ok.")]

    def features(self) -> tuple[str, ...]:
        feats = ["EPRT", "EPSV", "MDTM", "MFMT", "PASV", "REST STREAM", "SIZE", "TVFS"]
        if getattr(self.cfg, "ssl_enable", False):
            feats += ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT"]
        if getattr(self.cfg, "mlsd_enable", True):
            facts = "".join(f + ("*;" if f in self.mlst_facts else ";") for f in listing.SUPPORTED_FACTS)
            feats.append("MLST " + facts)
        if getattr(self.cfg, "utf8_enable", True):
            feats.append("UTF8")
        if getattr(self.cfg, "hash_enable", True):
            feats.append("HASH " + ";".join(a + ("*" if a == self.hash_algorithm else "") for a in HASH_ALGORITHMS))
        return tuple(sorted(feats))

    def _feat(self, arg: str, _p: str | None) -> list[Event]:
        return [Reply(Code.SYSTEM_STATUS, "Features:", self.features())]

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

    def _help(self, arg: str, _p: str | None) -> list[Event]:
        verb = arg.strip().upper()
        if verb:
            spec = COMMANDS.get(verb)
            if spec is None:
                return [Reply(Code.ARGUMENT_ERROR, f"Unknown command {verb}.")]
            return [Reply(Code.HELP, f"Syntax: {spec.doc}")]
        verbs = sorted(COMMANDS)
        rows = tuple(" ".join(f"{v:<5}" for v in verbs[i:i + 10]) for i in range(0, len(verbs), 10))
        return [Reply(Code.HELP, "The following commands are recognized.", rows)]

    def _stat(self, arg: str, _p: str | None) -> list[Event]:
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
        vpath = self._gate("STAT", Spec(login=True, arg=Arg.LIST_PATH, perm=Perm.LIST), arg)
        return [ControlListing("STAT", vpath or self.cwd)]

    # ------------------------------------------------------------------ SITE

    def _site(self, arg: str, _p: str | None) -> list[Event]:
        sub, _, rest = arg.strip().partition(" ")
        sub = sub.upper()
        spec = SITE_COMMANDS.get(sub)
        if spec is None:
            return [Reply(Code.SYNTAX_ERROR, "Unknown SITE command.")]
        self._gate("SITE " + sub, spec, rest.strip())
        return getattr(self, "_site_" + sub.lower())(rest.strip())

    def _site_help(self, arg: str) -> list[Event]:
        return [Reply(Code.HELP, " ".join(sorted(SITE_COMMANDS)))]

    def _site_chmod(self, arg: str) -> list[Event]:
        mode_s, _, target = arg.partition(" ")
        try:
            mode = int(mode_s, 8)
        except ValueError:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad mode.") from None
        if not target or mode < 0 or mode > 0o7777:
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "SITE CHMOD needs <mode> <path>.")
        vpath = self._gate("SITE CHMOD", Spec(arg=Arg.PATH, perm=Perm.CHMOD), target)
        # setuid/setgid bits are never granted from the network
        return [FsChange("chmod", vpath or "/", mode=mode & 0o1777, verb="SITE CHMOD",
                         dir_only=paths.names_directory(target))]

    def _site_umask(self, arg: str) -> list[Event]:
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

    def _site_idle(self, arg: str) -> list[Event]:
        if not arg:
            return [Reply(Code.OK, f"Current idle time is {self.idle_timeout}")]
        if not arg.isdigit():
            raise RemoteProtocolError(Code.ARGUMENT_ERROR, "Bad SITE IDLE value.")
        # a client may shorten its timeout, never lengthen it past the operator's
        limit = int(getattr(self.cfg, "idle_session_timeout", 300) or 7200)
        self.idle_timeout = max(30, min(int(arg), limit))
        return [Reply(Code.OK, f"SITE IDLE set to {self.idle_timeout}")]

