"""What a session reports to the logs: one object, one method per event.

`net/control.py` calls these; the implementation decides which sinks
(xferlog, vsftpd log, protocol log, syslog, JSON lines) receive each event.
Every method must be cheap and must never raise into the session.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TransferRecord", "EventLog"]


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One finished (or interrupted) transfer, past tense."""

    session: str          # session id ("pid.n")
    remote_ip: str
    user: str             # login name (anonymous: "ftp"/"anonymous")
    user_class: str       # "real", "guest" or "anonymous"
    anon_password: str    # what an anonymous user gave as password (their e-mail), else ""
    path: str             # virtual path inside the user's root
    direction: str        # "o" download, "i" upload
    ascii: bool
    size: int             # bytes actually moved
    seconds: float        # transfer time
    complete: bool        # False: aborted or failed midway
    started_at: float     # epoch seconds


class EventLog:
    """The default: log nothing.  Replaced by the configured sinks."""

    def connect(self, session: str, remote_ip: str) -> None:
        pass

    def login(self, session: str, remote_ip: str, user: str, user_class: str | None,
              ok: bool, reason: str = "") -> None:
        pass

    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        """A raw control line (the implementation masks the PASS argument)."""

    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        """The encoded reply bytes as sent."""

    def transfer_start(self, session: str, remote_ip: str, user: str, path: str, direction: str,
                       size: int | None = None) -> None:
        """A download ("o") or upload ("i") got its data connection and 150 reply; `size`:
        the bytes a download will send, when known (the status page's progress bar)."""

    def tls_handshake(self, session: str, remote_ip: str, ok: bool) -> None:
        """A TLS handshake on the control connection (AUTH TLS, implicit TLS) ended: `ok` or failed."""

    def progress(self, session: str, moved: int) -> None:
        """A running transfer has moved `moved` bytes (sent at most once a second, only
        when the operations features are on: metrics_listen or control_socket)."""

    def transfer(self, record: TransferRecord) -> None:
        pass

    def fs_change(self, session: str, remote_ip: str, user: str, op: str, path: str,
                  target: str, ok: bool) -> None:
        """MKDIR, RMDIR, DELETE, RENAME, CHMOD, MFMT; `target` for renames."""

    def disconnect(self, session: str, remote_ip: str, user: str, reason: str) -> None:
        pass

    def debug(self, session: str, remote_ip: str, user: str, text: str) -> None:
        """A diagnostic line (vsftpd's DEBUG: SNI refusals, debug_ssl's TLS details)."""

    def userlist_refused(self, session: str, remote_ip: str, user: str, text: str) -> None:
        """userlist_log: `user` refused at USER by the user list; `text` is vsftpd's wording."""

    def connect_refused(self, session: str, remote_ip: str, text: str) -> None:
        """A connection refused before its greeting (tcp_wrappers); `text` is vsftpd's wording."""

    def ban(self, remote_ip: str, seconds: int) -> None:
        """Too many failed logins: `remote_ip` is refused for `seconds` (net/bans.py)."""

    def reopen(self) -> None:
        """Reopen log files (SIGHUP, for logrotate)."""

    def close(self) -> None:
        pass
