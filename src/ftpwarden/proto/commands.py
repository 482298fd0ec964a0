"""Control lines -> Command, and THE command table every verb passes through.

The dispatcher in `session.py` checks, for every verb and in this order: login,
argument kind, path, permission.  A verb missing from `COMMANDS` is 502.  A
row is the whole rule for its command: SITE subcommands are rows of their own
("SITE CHMOD"), a row may name the spec that applies once an argument is given
(STAT path), and the argument kinds say where the path is (MFMT, SITE CHMOD).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import RemoteProtocolError
from .framing import strip_telnet

__all__ = ["Arg", "Perm", "Spec", "Command", "COMMANDS", "VERBS", "HTTP_VERBS", "MAX_LINE", "parse_line"]

MAX_LINE = 4096  # vsftpd's VSFTP_MAX_COMMAND_LINE; longer lines are refused


class Arg(enum.Enum):
    NONE = "none"          # no argument allowed
    OPTIONAL = "optional"  # free text, may be empty
    REQUIRED = "required"  # free text, must be present
    PATH = "path"          # a path, must be present
    PATH_OPTIONAL = "path?"  # a path or nothing (defaults to the cwd)
    LIST_PATH = "ls"       # ls flags ("-la"), then an optional path (LIST, NLST, STAT)
    MODE_PATH = "mode path"  # an octal mode, then a path (SITE CHMOD)
    TIME_PATH = "time path"  # a YYYYMMDDHHMMSS time, then a path (MFMT)


class Perm(enum.Enum):
    """What a grant must contain for a verb to run (see policy/users.py)."""

    DOWNLOAD = "download"
    LIST = "list"
    UPLOAD = "upload"        # create a new file
    OVERWRITE = "overwrite"  # replace, append to, or resume an existing file
    MKDIR = "mkdir"
    DELETE = "delete"
    RENAME = "rename"
    CHMOD = "chmod"
    SET_MTIME = "set_mtime"


@dataclass(frozen=True, slots=True)
class Spec:
    login: bool = True
    arg: Arg = Arg.NONE
    perm: Perm | None = None
    during_transfer: bool = False  # answered while a transfer runs (ABOR, STAT, QUIT)
    file_only: bool = False  # names a file: "name/" is refused (the kernel would say ENOTDIR)
    default_arg: str = ""    # the argument when none is given (STOU: the name to make unique)
    with_arg: Spec | None = None  # the rule once an argument is given (STAT path lists it)
    doc: str = ""

    @property
    def path_after_word(self) -> bool:
        """The path is the argument's second word (the first is a mode or a time)."""
        return self.arg in (Arg.MODE_PATH, Arg.TIME_PATH)


_L = Spec  # short alias for the table below

COMMANDS: dict[str, Spec] = {
    # access control (RFC 959 4.1.1)
    "USER": _L(login=False, arg=Arg.REQUIRED, doc="USER <name>"),
    "PASS": _L(login=False, arg=Arg.OPTIONAL, doc="PASS <password>"),
    "ACCT": _L(login=False, arg=Arg.REQUIRED, doc="ACCT <account>"),
    "CWD": _L(arg=Arg.PATH, doc="CWD <dir>"),
    "XCWD": _L(arg=Arg.PATH, doc="XCWD <dir>"),
    "CDUP": _L(doc="CDUP"),
    "XCUP": _L(doc="XCUP"),
    "SMNT": _L(arg=Arg.REQUIRED, doc="SMNT <path>"),
    "REIN": _L(login=False, doc="REIN"),
    "QUIT": _L(login=False, during_transfer=True, doc="QUIT"),
    # transfer parameters (4.1.2)
    "PORT": _L(arg=Arg.REQUIRED, doc="PORT h1,h2,h3,h4,p1,p2"),
    "EPRT": _L(arg=Arg.REQUIRED, doc="EPRT |proto|addr|port|"),
    "PASV": _L(doc="PASV"),
    "EPSV": _L(arg=Arg.OPTIONAL, doc="EPSV [1|2|ALL]"),
    "TYPE": _L(arg=Arg.REQUIRED, doc="TYPE A|I|L 8"),
    "STRU": _L(arg=Arg.REQUIRED, doc="STRU F"),
    "MODE": _L(arg=Arg.REQUIRED, doc="MODE S"),
    # service commands (4.1.3)
    "RETR": _L(arg=Arg.PATH, file_only=True, perm=Perm.DOWNLOAD, doc="RETR <file>"),
    "STOR": _L(arg=Arg.PATH, file_only=True, perm=Perm.UPLOAD, doc="STOR <file>"),
    "STOU": _L(arg=Arg.PATH, file_only=True, perm=Perm.UPLOAD, default_arg="STOU", doc="STOU [name]"),
    "APPE": _L(arg=Arg.PATH, file_only=True, perm=Perm.UPLOAD, doc="APPE <file>"),
    "ALLO": _L(arg=Arg.OPTIONAL, doc="ALLO <size>"),
    "REST": _L(arg=Arg.REQUIRED, doc="REST <offset>"),
    "RNFR": _L(arg=Arg.PATH, perm=Perm.RENAME, doc="RNFR <path>"),
    "RNTO": _L(arg=Arg.PATH, perm=Perm.RENAME, doc="RNTO <path>"),
    "ABOR": _L(during_transfer=True, doc="ABOR"),
    "DELE": _L(arg=Arg.PATH, file_only=True, perm=Perm.DELETE, doc="DELE <file>"),
    "RMD": _L(arg=Arg.PATH, perm=Perm.DELETE, doc="RMD <dir>"),
    "XRMD": _L(arg=Arg.PATH, perm=Perm.DELETE, doc="XRMD <dir>"),
    "MKD": _L(arg=Arg.PATH, perm=Perm.MKDIR, doc="MKD <dir>"),
    "XMKD": _L(arg=Arg.PATH, perm=Perm.MKDIR, doc="XMKD <dir>"),
    "PWD": _L(doc="PWD"),
    "XPWD": _L(doc="XPWD"),
    "LIST": _L(arg=Arg.LIST_PATH, perm=Perm.LIST, doc="LIST [-a] [path]"),
    "NLST": _L(arg=Arg.LIST_PATH, perm=Perm.LIST, doc="NLST [path]"),
    "SITE": _L(arg=Arg.REQUIRED, doc="SITE CHMOD|UMASK|IDLE|QUOTA|HELP"),  # an unknown subcommand
    "SITE CHMOD": _L(arg=Arg.MODE_PATH, perm=Perm.CHMOD, doc="SITE CHMOD <mode> <path>"),
    "SITE UMASK": _L(arg=Arg.OPTIONAL, doc="SITE UMASK [mask]"),
    "SITE IDLE": _L(arg=Arg.OPTIONAL, doc="SITE IDLE [seconds]"),
    "SITE QUOTA": _L(arg=Arg.NONE, doc="SITE QUOTA"),
    "SITE HELP": _L(arg=Arg.OPTIONAL, doc="SITE HELP"),
    "SYST": _L(login=False, doc="SYST"),
    "STAT": _L(login=False, arg=Arg.OPTIONAL, during_transfer=True, doc="STAT [path]",
               with_arg=_L(arg=Arg.LIST_PATH, perm=Perm.LIST, during_transfer=True)),
    "HELP": _L(login=False, arg=Arg.OPTIONAL, doc="HELP [command]"),
    "NOOP": _L(login=False, doc="NOOP"),
    # RFC 2389
    "FEAT": _L(login=False, doc="FEAT"),
    "OPTS": _L(login=False, arg=Arg.REQUIRED, doc="OPTS UTF8 ON | OPTS HASH <alg> | OPTS MLST <facts>"),
    # RFC 2228 / 4217 (FTPS)
    "AUTH": _L(login=False, arg=Arg.REQUIRED, doc="AUTH TLS"),
    "PBSZ": _L(login=False, arg=Arg.REQUIRED, doc="PBSZ 0"),
    "PROT": _L(login=False, arg=Arg.REQUIRED, doc="PROT P|C"),
    "CCC": _L(login=False, doc="CCC"),
    # RFC 3659
    "SIZE": _L(arg=Arg.PATH, file_only=True, perm=Perm.DOWNLOAD, doc="SIZE <file>"),
    "MDTM": _L(arg=Arg.PATH, file_only=True, doc="MDTM <file>"),  # MDTM <time> <file>: the MFMT row
    "MLST": _L(arg=Arg.PATH_OPTIONAL, perm=Perm.LIST, doc="MLST [path]"),
    "MLSD": _L(arg=Arg.PATH_OPTIONAL, perm=Perm.LIST, doc="MLSD [dir]"),
    # draft-somers-ftp-mfxx
    "MFMT": _L(arg=Arg.TIME_PATH, perm=Perm.SET_MTIME, doc="MFMT <YYYYMMDDHHMMSS> <file>"),
    # draft-bryan-ftpext-hash
    "HASH": _L(arg=Arg.PATH, file_only=True, perm=Perm.DOWNLOAD, doc="HASH <file>"),
}

# HTTP verbs on the control port end the session (as vsftpd does): a browser or
# a cross-protocol attack is not an FTP client.
# The verbs a client may send (HELP lists them); the other rows are subcommands.
VERBS = tuple(sorted(v for v in COMMANDS if " " not in v))

HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "CONNECT", "PUT", "DELETE", "TRACE", "PATCH"})


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    arg: str   # decoded argument, "" when absent

    def __str__(self) -> str:
        return f"{self.verb} {self.arg}".rstrip()


def _decode(raw: bytes) -> str:
    # RFC 2640: paths are UTF-8.  Bytes that are not valid UTF-8 are kept as
    # surrogates so a legacy-encoded file name still round-trips to the disk.
    return raw.decode("utf-8", "surrogateescape")


def parse_line(line: bytes) -> Command:
    """One control line (without CRLF) -> Command.

    Telnet IAC sequences (RFC 854) are removed first; NUL and bare CR are refused.
    """
    if len(line) > MAX_LINE:
        raise RemoteProtocolError(500, "Command line too long.")
    line = strip_telnet(line)
    if b"\x00" in line:
        raise RemoteProtocolError(501, "NUL byte in command.")
    if b"\r" in line:
        raise RemoteProtocolError(501, "Bare CR in command.")
    text = _decode(line)
    verb, _, arg = text.partition(" ")
    verb = verb.strip().upper()
    if not verb:
        raise RemoteProtocolError(500, "Empty command.")
    if not verb.isascii() or not verb.isalnum() or len(verb) > 8:
        raise RemoteProtocolError(500, "Unknown command.")
    return Command(verb, arg)
