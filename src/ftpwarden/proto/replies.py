"""Reply codes, the one reply formatter, and the errno -> reply table."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Code", "Reply", "format_reply", "reply_for_oserror"]


class Code(IntEnum):
    RESTART_MARKER = 110
    DATA_ALREADY_OPEN = 125
    FILE_STATUS_OK = 150
    OK = 200
    NOT_IMPLEMENTED_SUPERFLUOUS = 202
    SYSTEM_STATUS = 211
    DIRECTORY_STATUS = 212
    FILE_STATUS = 213
    HELP = 214
    SYSTEM_TYPE = 215
    READY = 220
    CLOSING = 221
    DATA_CLOSING = 226
    PASSIVE = 227
    LONG_PASSIVE = 228
    EXTENDED_PASSIVE = 229
    LOGGED_IN = 230
    SECURITY_OK = 234
    FILE_ACTION_OK = 250
    PATH_CREATED = 257
    NEED_PASSWORD = 331
    NEED_ACCOUNT = 332
    PENDING = 350
    UNAVAILABLE = 421
    CANT_OPEN_DATA = 425
    TRANSFER_ABORTED = 426
    FILE_BUSY = 450
    LOCAL_ERROR = 451
    INSUFFICIENT_STORAGE = 452
    SYNTAX_ERROR = 500
    ARGUMENT_ERROR = 501
    NOT_IMPLEMENTED = 502
    BAD_SEQUENCE = 503
    PARAMETER_NOT_IMPLEMENTED = 504
    NOT_LOGGED_IN = 530
    NEED_ACCOUNT_TO_STORE = 532
    POLICY_REFUSED = 534
    FILE_UNAVAILABLE = 550
    PAGE_TYPE_UNKNOWN = 551
    EXCEEDED_STORAGE = 552
    BAD_FILE_NAME = 553
    INVALID_RESTART = 554  # RFC 1123 4.1.3.4: "invalid REST parameter"


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply; `lines` after the first make it multi-line (RFC 959 4.2)."""

    code: int
    text: str
    lines: tuple[str, ...] = ()
    close: bool = False  # close the control connection after sending

    def encode(self) -> bytes:
        return format_reply(self.code, self.text, self.lines)


def _clean(text: str) -> str:
    # A reply line must not contain CR/LF: they would forge another reply.
    return text.replace("\r", " ").replace("\n", " ")


def format_reply(code: int, text: str, lines: tuple[str, ...] = ()) -> bytes:
    """Format a reply. Multi-line: `code-first`, body lines, `code last`.

    `lines` are the body; `text` is the first line.  A body line that itself
    starts with three digits is indented by one space so clients do not take
    it for the end (RFC 959 4.2).  A multi-line reply ends with `code End`.
    """
    if not lines:
        return f"{code} {_clean(text)}\r\n".encode("utf-8", "surrogateescape")
    out = [f"{code}-{_clean(text)}"]
    for line in lines:
        line = _clean(line)
        if line[:3].isdigit() or not line.startswith(" "):
            line = " " + line
        out.append(line)
    out.append(f"{code} End")
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


_ERRNO_REPLIES: dict[int, tuple[int, str]] = {
    errno.ENOENT: (Code.FILE_UNAVAILABLE, "No such file or directory."),
    errno.ENOTDIR: (Code.FILE_UNAVAILABLE, "Not a directory."),
    errno.EISDIR: (Code.FILE_UNAVAILABLE, "Is a directory."),
    errno.EACCES: (Code.FILE_UNAVAILABLE, "Permission denied."),
    errno.EPERM: (Code.FILE_UNAVAILABLE, "Permission denied."),
    errno.EROFS: (Code.FILE_UNAVAILABLE, "Read-only file system."),
    errno.EEXIST: (Code.FILE_UNAVAILABLE, "File exists."),
    errno.ENOTEMPTY: (Code.FILE_UNAVAILABLE, "Directory not empty."),
    errno.ELOOP: (Code.FILE_UNAVAILABLE, "Too many levels of symbolic links."),
    errno.EXDEV: (Code.FILE_UNAVAILABLE, "Path leaves the root."),
    errno.ENAMETOOLONG: (Code.BAD_FILE_NAME, "File name too long."),
    errno.EINVAL: (Code.BAD_FILE_NAME, "Invalid file name."),
    errno.EBUSY: (Code.FILE_BUSY, "Resource busy."),
    errno.EAGAIN: (Code.FILE_BUSY, "Resource temporarily unavailable."),
    errno.ENOSPC: (Code.INSUFFICIENT_STORAGE, "No space left on device."),
    errno.EDQUOT: (Code.EXCEEDED_STORAGE, "Disk quota exceeded."),
    errno.EFBIG: (Code.EXCEEDED_STORAGE, "File too large."),
    errno.EMFILE: (Code.LOCAL_ERROR, "Too many open files."),
    errno.ENFILE: (Code.LOCAL_ERROR, "Too many open files."),
    errno.EIO: (Code.LOCAL_ERROR, "Input/output error."),
    errno.E2BIG: (Code.FILE_UNAVAILABLE, "Too many names match; narrow the pattern."),
}


def reply_for_oserror(exc: OSError, verb: str | None = None) -> Reply:
    """The single errno table: every OSError becomes a reply here."""
    code, text = _ERRNO_REPLIES.get(exc.errno or 0, (Code.FILE_UNAVAILABLE, "Operation failed."))
    prefix = f"{verb}: " if verb else ""
    return Reply(code, prefix + text)
