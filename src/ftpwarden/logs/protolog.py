"""vsftpd-format log lines (vsftpd_log_file, syslog, log_ftp_protocol).

    Fri Nov 27 02:26:16 2026 [pid 1234] [alice] OK LOGIN: Client "127.0.0.1"

`kind` is what follows the user: "CONNECT", "OK LOGIN", "FAIL UPLOAD",
"FTP command", ...  Syslog gets the same text without date and pid (the
syslog header carries them).  Pure functions: the caller passes the clock.
"""

from __future__ import annotations

from ..proto.commands import parse_line
from ..proto.errors import RemoteProtocolError
from .xferlog import log_date, printable

__all__ = ["vsftpd_line", "vsftpd_message", "transfer_tail", "command_text", "reply_texts",
           "MASKED_PASS"]

MASKED_PASS = "PASS <password>"  # what vsftpd writes for any PASS command


def vsftpd_message(user: str, kind: str, remote_ip: str, detail: str = "", *, tail: str = "") -> str:
    """`[user] KIND: Client "ip", "detail"` + tail; no user part before USER."""
    who = f"[{printable(user)}] " if user else ""
    text = f'{who}{kind}: Client "{printable(remote_ip)}"'
    if detail:
        text += f', "{printable(detail)}"'
    return text + tail


def vsftpd_line(now: float, pid: int, user: str, kind: str, remote_ip: str, detail: str = "",
                *, tail: str = "", localtime: bool = True) -> str:
    """A line of vsftpd_log_file (without the newline)."""
    return f"{log_date(now, localtime=localtime)} [pid {pid}] " + vsftpd_message(
        user, kind, remote_ip, detail, tail=tail)


def transfer_tail(size: int, seconds: float) -> str:
    """`, 12 bytes, 3.40Kbyte/sec` (vsftpd leaves out the bytes when there are none)."""
    rate = size / (seconds if seconds > 0 else 0.1) / 1024
    return (f", {size} bytes" if size else "") + f", {rate:.2f}Kbyte/sec"


def command_text(line: bytes) -> str:
    """A control line as logged: any PASS command becomes `PASS <password>`.

    The verb is found by the session's own parser, so no spelling the session
    takes for PASS (lower case, Telnet IAC bytes, leading blanks) slips through;
    a line it cannot parse is masked whole if its letters spell pass anywhere.
    """
    try:
        verb = parse_line(line).verb
    except RemoteProtocolError:
        letters = bytes(c for c in line.lower() if 0x61 <= c <= 0x7A)
        verb = "PASS" if b"pass" in letters else ""
    if verb == "PASS":
        return MASKED_PASS
    return printable(line.decode("utf-8", "replace"))


def reply_texts(data: bytes) -> list[str]:
    """The lines of an encoded reply, as logged (one log line each)."""
    text = data.decode("utf-8", "replace")
    return [printable(line) for line in text.split("\r\n") if line]
