"""The monitor channel's messages: a closed set of frozen dataclasses and one codec.

Wire format of one message (one SOCK_SEQPACKET datagram): a kind byte, then
each field in declaration order — `int` as 8 bytes signed big-endian, `bool`
as one byte 0 or 1, `str` and `bytes` as a 4-byte length and the bytes (str is
UTF-8 with surrogate escapes).  No pickle: decoding builds only the classes listed in `KINDS`, and
any length, kind or trailing-byte mismatch is a `ChannelError`.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import ClassVar

from ..proto.actions import TlsState

__all__ = [
    "Message", "ChannelError", "MAX_MESSAGE", "encode", "decode",
    "Login", "LoginOk", "LoginFailed", "Handover", "ActiveDataSocket", "PassiveListen", "DataSocket",
    "ChownUpload", "Done", "Refused", "WrapData", "DataWrapped", "DataEnded", "DataSent",
    "LogConnect", "LogCommand", "LogReply", "LogTransferStart", "LogTransfer", "LogFsChange",
    "LogDisconnect", "LogNotice", "LogDebug", "LogUserlist", "LogHostsDenied", "LogProgress", "LogTlsHandshake",
    "RateGrant", "RateWait", "QuotaAsk", "QuotaGrant", "QuotaUsed", "QuotaShow", "QuotaLines", "UploadHook",
    "HookDone",
    "SpawnPrelogin", "SpawnIdentity", "Spawned", "ZygoteReload", "Admit", "Kick",
    "ProxyRead", "ProxyDeclared", "SpawnProxy",
    "CheckerConn", "CheckerReload", "CheckerUp", "CheckLogin", "CheckGranted", "CheckRefused",
]

MAX_MESSAGE = 64 * 1024  # a login or a handover of pipelined commands fits easily


class ChannelError(Exception):
    """A malformed or unexpected message: the session ends."""


class Message:
    kind: ClassVar[int]


# --- worker -> monitor -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Login(Message):
    """Pre-login: check these credentials.  `tls_protected`: the worker says the
    control connection is under TLS: the worker's claim, which the monitor
    cannot verify (it never sees the TLS layer; vsftpd's monitor trusts it too)."""

    kind: ClassVar[int] = 1
    user: str
    password: str = dataclasses.field(repr=False)
    tls_protected: bool = False


@dataclass(frozen=True, slots=True)
class Handover(Message):
    """Pre-login, after LoginOk: the bytes the client sent after PASS.

    Without TLS the worker then exits.  With TLS it stays as the session's TLS
    helper and the message carries two descriptors: the plaintext end of the
    control connection and the channel for data-connection handshakes, both
    for the post-login worker; the flags are the session's `TlsState`.
    """

    kind: ClassVar[int] = 2
    pending: bytes
    tls_protected: bool = False
    tls_pbsz: bool = False
    tls_prot_private: bool = False

    @classmethod
    def of(cls, pending: bytes, state: TlsState) -> Handover:
        return cls(pending, state.protected, state.pbsz, state.prot_private)

    @property
    def tls_state(self) -> TlsState:
        return TlsState(self.tls_protected, self.tls_pbsz, self.tls_prot_private)


@dataclass(frozen=True, slots=True)
class ActiveDataSocket(Message):
    """Post-login: a socket connected to the client's `port` (from port 20 if configured)."""

    kind: ClassVar[int] = 3
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PassiveListen(Message):
    """Post-login, isolate_network: a socket listening for this session's next
    passive data connection.  The monitor picks the address (the control
    connection's local one) and the port (pasv_min_port..pasv_max_port,
    bind_retries tries); the worker names neither."""

    kind: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class ChownUpload(Message):
    """Post-login, anonymous uploads with chown_uploads: chown the passed fd."""

    kind: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class WrapData(Message):
    """Post-login worker -> TLS helper: do the TLS handshake on the data socket
    (first descriptor) and relay its plaintext through the second; `upload` (1
    or 0) says which way the bytes go, `serial` numbers the transfer,
    `reuse_required` (1 or 0) is the core's require_ssl_reuse decision for it
    (the worker's own data connection: it could not weaken anyone else's)."""

    kind: ClassVar[int] = 5
    upload: int
    serial: int
    reuse_required: int = 1


@dataclass(frozen=True, slots=True)
class DataSent(Message):
    """Post-login worker -> TLS helper: every byte of download `serial` is in the
    plaintext socket; only then may the helper end it with close_notify (a
    download the worker gave up on ends without one)."""

    kind: ClassVar[int] = 6
    serial: int


# --- monitor -> worker -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoginOk(Message):
    kind: ClassVar[int] = 10
    name: str
    user_class: str


@dataclass(frozen=True, slots=True)
class LoginFailed(Message):
    kind: ClassVar[int] = 11


@dataclass(frozen=True, slots=True)
class DataSocket(Message):
    """The answer to ActiveDataSocket (a connected socket) or PassiveListen (a
    listening one); the socket travels as SCM_RIGHTS."""

    kind: ClassVar[int] = 12


@dataclass(frozen=True, slots=True)
class DataWrapped(Message):
    """TLS helper -> worker: the handshake succeeded (and resumed the session when required)."""

    kind: ClassVar[int] = 15


@dataclass(frozen=True, slots=True)
class DataEnded(Message):
    """TLS helper -> worker, after the relay of transfer `serial` ended: `reason`
    is empty for a clean end (the client's close_notify, or what
    strict_ssl_read_eof/strict_ssl_write_shutdown accept), else why the stream
    is not whole.  The worker's plaintext EOF alone never means success."""

    kind: ClassVar[int] = 16
    serial: int
    reason: str


@dataclass(frozen=True, slots=True)
class Done(Message):
    kind: ClassVar[int] = 13


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """A request the monitor would not or could not do (connect failed)."""

    kind: ClassVar[int] = 14
    reason: str


# --- the password checker (priv/checker.py) ------------------------------------

@dataclass(frozen=True, slots=True)
class CheckerConn(Message):
    """Listener -> checker: the descriptor is one monitor's own channel to the checker."""

    kind: ClassVar[int] = 20


@dataclass(frozen=True, slots=True)
class CheckerReload(Message):
    """Listener -> checker (SIGHUP): load the configuration and the user DB again."""

    kind: ClassVar[int] = 21


@dataclass(frozen=True, slots=True)
class CheckerUp(Message):
    """Checker -> listener, once at its start: `error` is empty when the user DB loaded."""

    kind: ClassVar[int] = 22
    error: str


@dataclass(frozen=True, slots=True)
class CheckLogin(Message):
    """Monitor -> checker: check these credentials."""

    kind: ClassVar[int] = 23
    user: str
    password: str = dataclasses.field(repr=False)
    remote_ip: str


@dataclass(frozen=True, slots=True)
class CheckGranted(Message):
    """Checker -> monitor: a good login, as the account's fields (never a hash);
    `grants` is the Perm values joined by commas."""

    kind: ClassVar[int] = 24
    name: str
    user_class: str
    root: str
    grants: str
    umask: int
    anon_password: str
    uid: int
    gid: int
    chroot: bool
    start_dir: str
    quota_bytes: int = -1   # the user file's quotas; -1: the config's default
    quota_files: int = -1


@dataclass(frozen=True, slots=True)
class CheckRefused(Message):
    """Checker -> monitor: refused (wrong password, unknown user, or no check possible)."""

    kind: ClassVar[int] = 25


KINDS: dict[int, type[Message]] = {
    cls.kind: cls for cls in (Login, Handover, ActiveDataSocket, PassiveListen, ChownUpload, WrapData, DataSent,
                              LoginOk, LoginFailed, DataSocket, DataWrapped, DataEnded, Done, Refused)
}
KINDS.update({cls.kind: cls for cls in (CheckerConn, CheckerReload, CheckerUp, CheckLogin, CheckGranted,
                                        CheckRefused)})


# --- worker -> monitor: log events (kinds 30-39) -----------------------------
# One-way: the monitor writes them through the configured sinks and answers
# nothing.  It fills in the client address, the session id and (after login)
# the user and class itself; the rest is the worker's word, bounded by logrelay.

@dataclass(frozen=True, slots=True)
class LogConnect(Message):
    """The client is connected (pre-login only, once)."""

    kind: ClassVar[int] = 30


@dataclass(frozen=True, slots=True)
class LogCommand(Message):
    """A raw control line (the monitor masks PASS); `user` as the session knows it."""

    kind: ClassVar[int] = 31
    user: str
    line: bytes


@dataclass(frozen=True, slots=True)
class LogReply(Message):
    """Encoded reply lines as sent (a long reply comes in several messages)."""

    kind: ClassVar[int] = 32
    user: str
    data: bytes


@dataclass(frozen=True, slots=True)
class LogTransferStart(Message):
    kind: ClassVar[int] = 33
    path: str
    upload: bool
    size: int = -1  # a download's bytes to send, when known (-1: unknown): the status page's progress bar


@dataclass(frozen=True, slots=True)
class LogTransfer(Message):
    """A finished transfer; times in microseconds (the codec has no float)."""

    kind: ClassVar[int] = 34
    path: str
    upload: bool
    ascii: bool
    size: int
    micros: int
    complete: bool
    started_us: int


@dataclass(frozen=True, slots=True)
class LogFsChange(Message):
    kind: ClassVar[int] = 35
    op: str
    path: str
    target: str
    ok: bool


@dataclass(frozen=True, slots=True)
class LogDisconnect(Message):
    kind: ClassVar[int] = 36
    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class LogNotice(Message):
    """A worker's own diagnostic (Python logging): its fd 2 is /dev/null."""

    kind: ClassVar[int] = 37
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class LogDebug(Message):
    """A DEBUG line for the session's vsftpd log (TLS diagnostics: debug_ssl, SNI refusals)."""

    kind: ClassVar[int] = 38
    user: str
    text: str


@dataclass(frozen=True, slots=True)
class LogUserlist(Message):
    """userlist_log: `user` was refused at USER by the user list (the broker words the line)."""

    kind: ClassVar[int] = 39
    user: str
    deny_list: bool  # userlist_deny=YES: listed; NO: not listed


@dataclass(frozen=True, slots=True)
class LogHostsDenied(Message):
    """tcp_wrappers: hosts.allow/hosts.deny refused this client (the pre-login process said 421)."""

    kind: ClassVar[int] = 42
    where: str  # FILE:LINE of the deciding line


@dataclass(frozen=True, slots=True)
class LogProgress(Message):
    """A running transfer's bytes so far (at most once a second, only with metrics_listen or
    control_socket set): the session table's progress (ops/table.py)."""

    kind: ClassVar[int] = 49
    moved: int


@dataclass(frozen=True, slots=True)
class LogTlsHandshake(Message):
    """The control connection's TLS handshake ended (the metrics count them)."""

    kind: ClassVar[int] = 48
    ok: bool


KINDS.update({cls.kind: cls for cls in (LogConnect, LogCommand, LogReply, LogTransferStart, LogTransfer,
                                        LogFsChange, LogDisconnect, LogNotice, LogDebug, LogUserlist,
                                        LogHostsDenied, LogProgress, LogTlsHandshake)})
# --- user_max_rate grants (post-login worker <-> monitor) -------------------

@dataclass(frozen=True, slots=True)
class RateGrant(Message):
    """Worker -> monitor: may this session move `nbytes` (1..limits.max_grant)?
    The monitor books them for the session's own account; the worker names none."""

    kind: ClassVar[int] = 40
    nbytes: int


@dataclass(frozen=True, slots=True)
class RateWait(Message):
    """Monitor -> worker: wait this long (microseconds, clamped) before moving them."""

    kind: ClassVar[int] = 41
    micros: int


KINDS.update({cls.kind: cls for cls in (RateGrant, RateWait)})


# --- quotas and upload hooks (post-login worker <-> broker; ops/quota.py, ops/hooks.py) ---
# The broker decides for the session's own account (the worker names none) and keeps the usage.

@dataclass(frozen=True, slots=True)
class QuotaAsk(Message):
    """Worker -> broker: an upload starts (`probe`: only whether a quota applies to this account)."""

    kind: ClassVar[int] = 70
    new_file: bool
    replaced: int   # bytes of the file it empties or replaces (they come back)
    probe: bool


@dataclass(frozen=True, slots=True)
class QuotaGrant(Message):
    """Broker -> worker: `left` bytes may be written (-1: no byte limit); `refused`: why none (552)."""

    kind: ClassVar[int] = 71
    applies: bool
    left: int
    refused: str


@dataclass(frozen=True, slots=True)
class QuotaUsed(Message):
    """Worker -> broker: an upload completed (or a file was deleted): the usage changes by this; -> Done."""

    kind: ClassVar[int] = 72
    nbytes: int
    files: int


@dataclass(frozen=True, slots=True)
class QuotaShow(Message):
    """Worker -> broker: SITE QUOTA; -> QuotaLines."""

    kind: ClassVar[int] = 73


@dataclass(frozen=True, slots=True)
class QuotaLines(Message):
    kind: ClassVar[int] = 74
    text: str  # lines joined by newlines; "" when no quota applies


@dataclass(frozen=True, slots=True)
class UploadHook(Message):
    """Worker -> broker: `path` (in the session's root) is complete; run upload_hook.
    Sync: answered with HookDone after the program ran; async: at once (status "queued")."""

    kind: ClassVar[int] = 75
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class HookDone(Message):
    kind: ClassVar[int] = 76
    status: str     # ok | failed | timeout | busy | error | queued
    code: int       # the exit code, -1 when none
    moved_to: str   # quarantined here


KINDS.update({cls.kind: cls for cls in (QuotaAsk, QuotaGrant, QuotaUsed, QuotaShow, QuotaLines, UploadHook,
                                        HookDone)})


# --- the zygote (priv/zygote.py) and identity workers (priv/identity.py) ------
# Listener/broker -> zygote: fork a process; the zygote answers Spawned with the
# child's pidfd (SCM_RIGHTS), or Refused.  The zygote never sees client bytes.

@dataclass(frozen=True, slots=True)
class SpawnPrelogin(Message):
    """Broker -> zygote: a pre-login process for the client socket (first
    descriptor) talking to the broker over the session channel (second).
    proxy_protocol_enable: the client and server addresses the balancer's PROXY
    header declared ("" and 0: the socket's own peer, no declared server)."""

    kind: ClassVar[int] = 50
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0


@dataclass(frozen=True, slots=True)
class SpawnIdentity(Message):
    """Broker -> zygote: an identity worker that runs as uid/gid/`groups` (decimal
    gids joined by commas), chrooted to `root` when `chroot`, and takes sessions
    over the admission channel (the one descriptor)."""

    kind: ClassVar[int] = 51
    uid: int
    gid: int
    groups: str
    root: str
    chroot: bool


@dataclass(frozen=True, slots=True)
class Spawned(Message):
    """Zygote -> broker: the child runs; its pidfd travels as SCM_RIGHTS."""

    kind: ClassVar[int] = 52
    pid: int


@dataclass(frozen=True, slots=True)
class ZygoteReload(Message):
    """Broker -> zygote (SIGHUP): read the configuration again for new children."""

    kind: ClassVar[int] = 53


@dataclass(frozen=True, slots=True)
class Admit(Message):
    """Broker -> identity worker: one more session.  Descriptors: the control
    connection (the client's TCP socket, or the TLS helper's plaintext end),
    the session's own channel to the broker, and with TLS the channel to the
    session's TLS helper.  The account fields are CheckGranted's; the rest is
    Handover's plus the addresses the broker saw at accept."""

    kind: ClassVar[int] = 54
    name: str
    user_class: str
    root: str
    grants: str
    umask: int
    anon_password: str
    uid: int
    gid: int
    chroot: bool
    start_dir: str
    pending: bytes
    tls_protected: bool
    tls_pbsz: bool
    tls_prot_private: bool
    local_ip: str
    remote_ip: str
    session: str = ""  # the broker's id of the session (as `ftpwarden who` shows it): what Kick names
    server_ip: str = ""  # the destination a PROXY header declared (PASV's advertised address), or ""

    @property
    def tls_state(self) -> TlsState:
        return TlsState(self.tls_protected, self.tls_pbsz, self.tls_prot_private)


@dataclass(frozen=True, slots=True)
class Kick(Message):
    """Broker -> identity worker, on its admission channel (`ftpwarden kick`): end the
    hosted session of that id; the worker writes 421 to its client and closes it."""

    kind: ClassVar[int] = 57
    session: str


KINDS.update({cls.kind: cls for cls in (SpawnPrelogin, SpawnIdentity, Spawned, ZygoteReload, Admit, Kick)})
_INT = struct.Struct(">q")
_LEN = struct.Struct(">I")


def encode(msg: Message) -> bytes:
    out = [bytes([msg.kind])]
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        if f.type == "bool" and isinstance(value, bool):
            out.append(b"\x01" if value else b"\x00")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
            raise TypeError(f"{type(msg).__name__}.{f.name}: unsupported {type(value).__name__}")
        if isinstance(value, int):
            out.append(_INT.pack(value))
            continue
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        out += [_LEN.pack(len(raw)), raw]
    data = b"".join(out)
    if len(data) > MAX_MESSAGE:
        raise ChannelError("message too large")
    return data


def decode(data: bytes) -> Message:
    if not data or len(data) > MAX_MESSAGE:
        raise ChannelError("empty or oversized message")
    cls = KINDS.get(data[0])
    if cls is None:
        raise ChannelError(f"unknown message kind {data[0]}")
    pos, values = 1, list[int | bool | str | bytes]()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.type == "bool":
            if pos + 1 > len(data) or data[pos] > 1:
                raise ChannelError("bad bool")
            values.append(data[pos] == 1)
            pos += 1
            continue
        if f.type == "int":
            if pos + 8 > len(data):
                raise ChannelError("truncated int")
            values.append(_INT.unpack_from(data, pos)[0])
            pos += 8
            continue
        if pos + 4 > len(data):
            raise ChannelError("truncated length")
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if pos + n > len(data):
            raise ChannelError("truncated field")
        raw = data[pos:pos + n]
        pos += n
        values.append(raw.decode("utf-8", "surrogateescape") if f.type == "str" else raw)
    if pos != len(data):
        raise ChannelError("trailing bytes")
    return cls(*values)


# --- the PROXY header reader (priv/proxyreader.py) -------------------------------
# proxy_protocol_enable in isolated mode: root never parses network bytes, so the
# broker passes each trusted connection (a dup) to the unprivileged ftpwarden-proxy
# process, which reads the header and answers; the broker keeps its own copy.

@dataclass(frozen=True, slots=True)
class ProxyRead(Message):
    """Broker -> ftpwarden-proxy: read the PROXY header of the socket (the one
    descriptor), consuming exactly the header, and answer ProxyDeclared(`token`)."""

    kind: ClassVar[int] = 80
    token: int


@dataclass(frozen=True, slots=True)
class ProxyDeclared(Message):
    """ftpwarden-proxy -> broker: the header of connection `token`.  `ok` False:
    missing, malformed or late (`why`); the broker closes the connection.  An
    empty client_ip (LOCAL, UNKNOWN) is the socket's own peer; an empty server_ip,
    no declared destination."""

    kind: ClassVar[int] = 81
    token: int
    ok: bool
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    why: str


@dataclass(frozen=True, slots=True)
class SpawnProxy(Message):
    """Broker -> zygote: the ftpwarden-proxy process, talking over the one
    descriptor (a SOCK_SEQPACKET channel); answered Spawned or Refused."""

    kind: ClassVar[int] = 82


KINDS.update({cls.kind: cls for cls in (ProxyRead, ProxyDeclared, SpawnProxy)})


# --- the user database unreachable (user_db_url, policy/auth/pgusers.py): kinds 85-89 ----------

@dataclass(frozen=True, slots=True)
class CheckUnavailable(Message):
    """Checker -> monitor: no decision, the user database cannot be reached (`reason`: for the log)."""

    kind: ClassVar[int] = 85
    reason: str


@dataclass(frozen=True, slots=True)
class LoginUnavailable(Message):
    """Monitor -> pre-login, after Login: no decision now; the worker answers 421 and closes.
    Not a failed login: no ban counted, no delay."""

    kind: ClassVar[int] = 86


KINDS.update({cls.kind: cls for cls in (CheckUnavailable, LoginUnavailable)})
__all__ += ["CheckUnavailable", "LoginUnavailable"]


# --- shared state, state_db_url (broker <-> ftpwarden-state; ops/stateproc.py): kinds 90-99 ---
# One-way each, never answered; the broker sends without waiting (a full channel drops one).

@dataclass(frozen=True, slots=True)
class StateFailure(Message):
    """Broker -> state: a failed login from `ip` was counted here, under this ban rule."""

    kind: ClassVar[int] = 90
    ip: str
    threshold: int
    seconds: int
    window: int


@dataclass(frozen=True, slots=True)
class StateActive(Message):
    """Broker -> state: this node moved bytes for `account` in the last second (user_max_rate)."""

    kind: ClassVar[int] = 91
    account: str


@dataclass(frozen=True, slots=True)
class StateBan(Message):
    """State -> broker: `ip` is banned (by some node) for `millis` more milliseconds."""

    kind: ClassVar[int] = 92
    ip: str
    millis: int


@dataclass(frozen=True, slots=True)
class StateShare(Message):
    """State -> broker: `nodes` nodes move bytes for `account` now: this node's budget is rate / nodes."""

    kind: ClassVar[int] = 93
    account: str
    nodes: int


@dataclass(frozen=True, slots=True)
class SpawnState(Message):
    """Broker -> zygote: fork ftpwarden-state (ops/stateproc.py) on the one descriptor (its
    channel); `node` is this node's name in the shared tables.  The zygote reads
    state_db_url from its own configuration: the URL (a secret) never travels."""

    kind: ClassVar[int] = 94
    node: str


KINDS.update({cls.kind: cls for cls in (StateFailure, StateActive, StateBan, StateShare, SpawnState)})
__all__ += ["StateFailure", "StateActive", "StateBan", "StateShare", "SpawnState"]
