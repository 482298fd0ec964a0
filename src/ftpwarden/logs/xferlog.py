"""One transfer -> one line of the wu-ftpd xferlog (xferlog(5)), as vsftpd writes it.

    current-time  transfer-time remote-host file-size filename transfer-type
    special-action-flag direction access-mode username service-name
    authentication-method authenticated-user-id completion-status

Pure functions: the caller passes the clock.  `log_date` and `printable` are
shared with the vsftpd-format lines (`protolog.py`).
"""

from __future__ import annotations

import time

from .events import TransferRecord

__all__ = ["xferlog_line", "log_date", "printable", "narrow"]

# Fixed English names: strftime's %a/%b would follow the process locale.
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_ACCESS = {"anonymous": "a", "guest": "g", "real": "r"}


def log_date(now: float, *, localtime: bool = True) -> str:
    """ctime-like `Fri Nov  7 02:26:16 2026`: the day is space-padded, as in vsftpd."""
    t = time.localtime(now) if localtime else time.gmtime(now)
    return (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}")


def printable(text: str) -> str:
    """Replace what a log reader must not see raw (CR, LF, ESC, ...) by '?', as vsftpd
    does: a client-chosen name can then never start a forged line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def narrow(text: str) -> str:
    """wc_logs_enable=NO, vsftpd's default: a '?' for each byte of a non-ASCII character,
    as vsftpd's byte-wise check (C isprint) gives; wc_logs_enable=YES keeps printable
    UTF-8 characters (`printable` has already replaced the rest)."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else "?" * (1 if 0xD800 <= ord(c) <= 0xDFFF else len(c.encode()))
                   for c in text)


def _field(text: str) -> str:
    """One space-separated field: never empty, never containing a space."""
    return printable(text).replace(" ", "_") or "*"


def xferlog_line(rec: TransferRecord, now: float, *, localtime: bool) -> str:
    """The xferlog line for `rec`, logged at `now` (epoch seconds)."""
    access = _ACCESS.get(rec.user_class, "r")
    # wu-ftpd and vsftpd log an anonymous user by the e-mail given as password.
    who = rec.anon_password if access == "a" else rec.user
    return " ".join((
        log_date(now, localtime=localtime),
        str(max(1, round(rec.seconds))),  # whole seconds, at least 1 (vsftpd)
        _field(rec.remote_ip),
        str(rec.size),
        _field(rec.path),
        "a" if rec.ascii else "b",
        "_",                               # special action: none (no on-the-fly tar/gzip)
        "i" if rec.direction == "i" else "o",
        access,
        _field(who),
        "ftp", "0", "*",                   # service, authentication method (none), auth user id
        "c" if rec.complete else "i",
    ))
