"""What the core asks the I/O layer to do, and what the I/O layer reports back.

Actions are imperative frozen dataclasses.  The I/O layer performs one and hands
its outcome to `Session.complete(action, outcome)`, which returns the replies.
An outcome is the value named on the action, or an `OSError`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Literal

from .listing import Entry
from .principal import Principal

__all__ = [
    "Action", "Authenticate", "StartTls", "ResetSession", "ChangeDir", "StatPath", "FsChange",
    "OpenPassive", "ClosePassive", "AbortTransfer", "SendFile", "ReceiveFile", "SendListing",
    "ControlListing", "ComputeHash", "Transfer", "TransferAction", "TransferDone", "TransferStatus",
    "RestartBeyondEnd", "Outcome", "TlsState", "ShowQuota",
]


class Action:
    """Base class of everything the core asks for."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Authenticate(Action):
    """Check a login.  Outcome: the `Principal`, None for a refusal, or an
    OSError when its root cannot be opened.  A refusal is answered
    `failure_delay` seconds after the request, whatever the check cost (an
    unknown user and a cheap hash must look alike); it counts toward a ban."""

    user: str
    password: str = field(repr=False)
    failure_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class StartTls(Action):
    """AUTH TLS accepted (the 234 went out): handshake on the control connection.
    Outcome: None, or an exception when the handshake failed (the session ends)."""


@dataclass(frozen=True, slots=True)
class ResetSession(Action):
    """REIN: drop the login, the jail and any data channel.  No outcome."""


@dataclass(frozen=True, slots=True)
class ChangeDir(Action):
    """Check `path` is an enterable directory; outcome: the text of its message
    file (or "" / None), or an OSError."""

    path: str
    message_file: str | None = None
    verb: str = "CWD"  # CDUP answers 200 (RFC 959), CWD 250


@dataclass(frozen=True, slots=True)
class StatPath(Action):
    """stat() `path` inside the jail for `verb`; outcome: os.stat_result or OSError."""

    verb: str
    path: str
    dir_only: bool = False  # the client wrote "name/": only a directory will do


@dataclass(frozen=True, slots=True)
class FsChange(Action):
    """A filesystem change; outcome: None or OSError."""

    op: Literal["mkdir", "rmdir", "unlink", "rename", "chmod", "utime"]
    path: str
    target: str = ""      # rename destination
    mode: int = 0         # mkdir/chmod mode
    mtime: float = 0.0    # utime
    verb: str = ""        # for the reply text
    dir_only: bool = False  # the client wrote "name/": act only if `path` is a directory


@dataclass(frozen=True, slots=True)
class OpenPassive(Action):
    """Open a passive listener; outcome: (host, port) to announce, or OSError."""

    extended: bool


@dataclass(frozen=True, slots=True)
class AbortTransfer(Action):
    """ABOR while a transfer runs: cancel it (its 426 goes out first).  No outcome."""


@dataclass(frozen=True, slots=True)
class ClosePassive(Action):
    """Close any passive listener (a PORT replaces it).  No outcome."""


class Transfer(Action):
    """An action moving bytes over the data connection.

    The I/O layer: prepare (open the file / read the directory), then report
    `Session.transfer_started(action, size)` for the 150 reply, move the bytes,
    then `Session.complete(action, TransferDone(...))` for the final reply.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SendFile(Transfer):
    path: str
    protected: bool = False  # PROT P: the data connection is under TLS
    offset: int = 0
    ascii: bool = False
    world_readable_only: bool = False
    # decided by the core, carried out by the I/O layer:
    rate: int = 0                 # bytes/s for this session's class (anon/local_max_rate); 0: none
    reuse_required: bool = False  # protected: refuse a data connection that does not resume the control's TLS session
    lock: bool = False            # lock_upload_files: a shared fcntl lock while reading (waits for a writer)


@dataclass(frozen=True, slots=True)
class ReceiveFile(Transfer):
    path: str
    protected: bool = False  # PROT P: the data connection is under TLS
    offset: int = 0
    append: bool = False
    ascii: bool = False
    may_overwrite: bool = True
    unique: bool = False      # STOU: pick a fresh name from `path`
    umask: int = 0o077
    file_mode: int = 0o666
    # decided by the core, carried out by the I/O layer:
    rate: int = 0                 # bytes/s for this session's class (anon/local_max_rate); 0: none
    reuse_required: bool = False  # protected: refuse a data connection that does not resume the control's TLS session
    atomic: bool = False          # write a hidden partial file, renamed into place once whole
    chown: bool = False           # chown_uploads: the monitor gives the file to chown_username
    lock: bool = False            # lock_upload_files: an exclusive fcntl lock while writing
    delete_on_failure: bool = False  # delete_failed_uploads: a failed upload leaves nothing it wrote
    random_suffix: bool = False   # better_stou: STOU tries NAME.<random>, not NAME.1, NAME.2


@dataclass(frozen=True, slots=True)
class SendListing(Transfer):
    kind: Literal["LIST", "NLST", "MLSD"]
    path: str
    protected: bool = False  # PROT P: the data connection is under TLS
    show_hidden: bool = False
    # The path argument as the client wrote it ("" for none): NLST prints names
    # in that spelling, as vsftpd does ("sub/a.txt", not "/sub/a.txt").
    given: str = ""
    # A glob ("*", "?", "[...]") from the argument's last component: then `path`
    # is the directory to list and only matching names are shown.
    pattern: str = ""
    # decided by the core, carried out by the I/O layer:
    rate: int = 0                 # bytes/s for this session's class (anon/local_max_rate); 0: none
    reuse_required: bool = False  # protected: refuse a data connection that does not resume the control's TLS session
    dir_only: bool = False  # MLSD, a glob or "name/": a file there is 501/550, not a one-line listing
    recursive: bool = False  # ls -R (ls_recurse_enable): every directory below, as ls -lR prints them


@dataclass(frozen=True, slots=True)
class ControlListing(Action):
    """STAT path / MLST: lstat or list `path`; outcome: list of listing.Entry or OSError."""

    verb: str
    path: str


@dataclass(frozen=True, slots=True)
class ComputeHash(Action):
    """HASH: digest of `path`; outcome: (hex digest, size) or OSError."""

    path: str
    algorithm: str


@dataclass(frozen=True, slots=True)
class ShowQuota(Action):
    """SITE QUOTA: the user's quota and usage; outcome: its lines (a tuple of str), or OSError."""


TransferAction = SendFile | ReceiveFile | SendListing  # every concrete Transfer


class RestartBeyondEnd(OSError):
    """RETR after a REST past the end of the file; the reply names both numbers."""

    def __init__(self, offset: int, size: int) -> None:
        super().__init__(errno.EINVAL, f"restart position {offset} is past the end ({size} bytes)")
        self.offset = offset
        self.size = size


TransferStatus = Literal["ok", "no_data_connection", "aborted", "connection_lost", "local_error",
                         "tls_refused", "truncated", "refused"]  # truncated: a recursive listing stopped at its
# bound; refused: an upload complete on disk that the upload_hook (sync) refused: removed or quarantined


@dataclass(frozen=True, slots=True)
class TransferDone:
    """Past tense: how a transfer ended."""

    status: TransferStatus
    size: int = 0
    error: OSError | None = None
    name: str = ""   # the name actually written (STOU)
    detail: str = ""  # tls_refused: what the client lacks


@dataclass(frozen=True, slots=True)
class TlsState:
    """One session's TLS state as it leaves the core: what the pre-login process
    hands to the post-login one (priv/messages.Handover), typed, not a string."""

    protected: bool = False     # the control connection is under TLS (AUTH TLS or implicit)
    pbsz: bool = False          # PBSZ 0 was accepted
    prot_private: bool = False  # PROT P: data connections use TLS


# What the I/O layer hands to `Session.complete`, whatever the action (each
# action's docstring names its own); the session checks the pair.
Outcome = (Principal | OSError | str | os.stat_result | tuple[list[Entry], float] | tuple[str, int]
           | TransferDone | tuple[str, ...] | None)
