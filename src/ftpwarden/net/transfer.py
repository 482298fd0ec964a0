"""One transfer over the data connection: prepare, connect, 150, move the bytes, final reply.

Every decision is already on the action (proto/session.py `_transfer_decisions`:
protection and TLS reuse, rate, atomic upload, chown, may_overwrite, the MLSD
rule); this module carries it out and reports a `TransferDone`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import stat as stat_mod
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..logs.events import TransferRecord
from ..ops import uploads
from ..proto import paths
from ..proto.actions import ReceiveFile, SendFile, SendListing, TransferAction, TransferDone
from ..proto.listing import Entry
from ..proto.replies import Reply
from . import data, files, tls
from .jail import Jail
from .limits import RateGrants

if TYPE_CHECKING:
    from .control import ControlConnection

__all__ = ["run", "ATOMIC_GRACE", "RECURSE_MAX_ENTRIES", "RECURSE_MAX_SECONDS"]

ATOMIC_GRACE = 0.05  # seconds to wait for a dying client's control EOF
# ls -R (ls_recurse_enable): a listing of the whole tree is built before its 150, in a
# thread; these bound it.  100k entries is ~7 MB of listing (far inside a worker's
# address-space room) and more than any client shows usefully; 5 s of walking keeps a
# deep or slow tree from holding a thread.  Past either, the listing ends with a last
# line saying so and the reply is 451, never a 226 that would call it complete.
RECURSE_MAX_ENTRIES = 100_000
RECURSE_MAX_SECONDS = 5.0


@dataclass(slots=True)
class Held:
    """What one transfer holds open; `release` frees whatever is left."""

    fd: int | None = None                # the file read or written
    name: str = ""                       # the name written (STOU picks it)
    partial: str | None = None           # atomic upload: the hidden file renamed into place at the end
    upload: files.Upload | None = None   # how the upload's file was opened (delete_failed_uploads undoes it)
    emptied: bool = False                # a fresh STOR truncated the file it writes
    sock: socket.socket | None = None    # the data socket before it became a connection
    conn: data.Conn | None = None        # the data connection (plain or TLS)
    moving: bool = False                 # the 150 went out and bytes began to move: the transfer is logged
    started: Reply | None = None         # a 150 held back to go out with the final reply (`_sent_at_once`)
    quota: Any = None                    # ops.uploads.Charge: the upload's budget and what it replaces
    over_quota: bool = False             # the upload crossed its quota: it is discarded whatever the options

    def release(self) -> None:
        if self.conn is not None:  # a failed transfer: no close_notify
            self.conn.abort()
            self.conn = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def run(cc: ControlConnection, action: TransferAction) -> None:
    """The whole transfer, then its final reply (and the transfer log line)."""
    progress = cc.transfer_progress
    held = Held()
    started = time.time()
    reporter = _report_progress(cc, progress) if isinstance(action, (SendFile, ReceiveFile)) else None
    try:
        try:
            done = await _move(cc, action, progress, held)
        except asyncio.CancelledError:
            done = TransferDone("aborted", progress[0])
        except OSError:  # the control connection failed under us (or would not drain)
            done = TransferDone("connection_lost", progress[0])
        if isinstance(done.error, OSError) and done.error.errno == errno.EDQUOT:
            held.over_quota = True
        if (isinstance(action, ReceiveFile) and done.status != "ok" and held.upload is not None
                and cc.jail is not None):
            if action.delete_on_failure or held.over_quota:
                # before the file is closed: its lock still keeps readers off what goes
                files.discard_failed_upload(cc.jail, held.upload, held.fd, held.emptied)
            else:  # atomic_uploads: where a resume finds it
                files.keep_failed_upload(cc.jail, held.upload, action.path, held.fd)
        if isinstance(action, ReceiveFile) and done.status == "ok":  # quota usage, upload_hook
            done = await uploads.completed(cc, action, held.quota, done)
    finally:
        if reporter is not None:
            reporter.cancel()
        held.release()
    if held.moving and isinstance(action, (SendFile, ReceiveFile)):
        _log(cc, action, done, started, held.name)
    replies = cc.session.complete(action, done)
    if held.started is not None:
        replies.insert(0, held.started)
    try:
        await cc.emit(replies)
    except OSError:
        cc.closing = True
        cc.writer.transport.abort()  # the main loop sees the end and cleans up


def _report_progress(cc: ControlConnection, progress: list[int]) -> asyncio.Task[None] | None:
    """metrics_listen / control_socket: the running transfer's bytes to the session
    table (ops/table.py), at most once a second and only when they changed."""
    if not (getattr(cc.cfg, "metrics_listen", None) or getattr(cc.cfg, "control_socket", None)):
        return None

    async def report() -> None:
        last = -1
        while True:
            await asyncio.sleep(1.0)
            if progress[0] != last:
                last = progress[0]
                cc.events.progress(cc.sid, last)

    return asyncio.get_running_loop().create_task(report())


async def _move(cc: ControlConnection, action: TransferAction, progress: list[int], held: Held) -> TransferDone:
    jail = cc.jail
    assert jail is not None
    size: int | None = None
    payload = b""
    truncated = ""  # a recursive listing stopped at its bound: why
    try:
        if isinstance(action, SendFile):
            held.fd, size = files.open_download(jail, action)
        elif isinstance(action, ReceiveFile):
            held.upload = files.open_upload(jail, action)
            held.fd, held.name, held.partial = held.upload.fd, held.upload.name, held.upload.partial
            held.quota = uploads.charge(cc, jail, action, held.upload)  # EDQUOT: 552 before any 150
        else:
            assert isinstance(action, SendListing)
            payload, truncated = await asyncio.to_thread(_render, cc, jail, action)
        if isinstance(action, (SendFile, ReceiveFile)) and action.lock:
            # lock_upload_files (vsftpd): a download waits for the upload writing the file
            # (and an upload for the downloads reading it), up to data_connection_timeout
            assert held.fd is not None
            await files.wait_lock(held.fd, isinstance(action, ReceiveFile),
                                  float(cc.cfg.data_connection_timeout or 300))
    except OSError as e:
        return TransferDone("local_error", error=e)
    try:
        held.sock = await cc.data.connect(cc.session.data_kind, cc.session.port_target)
    except data.DataRefused:
        return TransferDone("no_data_connection")
    if isinstance(action, ReceiveFile) and not (action.append or action.offset or action.unique):
        # only now, with the data connection up, may an old file be emptied:
        # a STOR answered 425 leaves it as it was
        assert held.fd is not None
        os.ftruncate(held.fd, 0)  # after the lock (vsftpd: "must truncate the file AFTER locking it")
        held.emptied = True
    start: TransferAction = action
    if isinstance(action, ReceiveFile) and action.unique:
        start = ReceiveFile(paths.resolve(paths.parent(action.path), held.name), unique=True)
    started = cc.session.transfer_started(start, size)
    use_sendfile = bool(cc.cfg.use_sendfile)
    chunk = data.chunk_size(cc.cfg.trans_chunk_size)
    # the early send is one sendfile of up to 64 KiB: not without sendfile, nor with a chunk size set
    at_once = use_sendfile and not chunk and _sent_at_once(cc, action, held, size, progress)
    if not at_once:
        cc.send(started)
    if isinstance(start, (SendFile, ReceiveFile)):
        cc.events.transfer_start(cc.sid, cc.remote_ip, cc.user, start.path,
                                 "o" if isinstance(start, SendFile) else "i",
                                 max(0, size - start.offset) if isinstance(start, SendFile) and size is not None
                                 else None)
    if at_once:
        held.started, held.moving = started, True
        conn, held.conn = held.conn, None
        assert conn is not None
        await conn.close()
        return TransferDone("ok", progress[0], name=held.name)
    await cc.drain()
    upload = isinstance(action, ReceiveFile)
    link = cc.ctx.tls_link if action.protected else None
    refused = await _connect(cc, action, held, upload)
    if refused is not None:
        return refused
    held.moving = True
    conn = held.conn
    assert conn is not None
    stall = float(cc.cfg.data_connection_timeout or 0)
    throttle = _throttle(cc, action)
    try:
        if isinstance(action, SendFile):
            assert held.fd is not None
            # from where `_sent_at_once` stopped, if it began
            await data.send_file(conn, held.fd, action.offset + progress[0], action.ascii, progress, stall,
                                 throttle, chunk=chunk, use_sendfile=use_sendfile)
        elif isinstance(action, ReceiveFile):
            assert held.fd is not None
            await data.receive_file(conn, held.fd, action.ascii, progress, stall, throttle, chunk=chunk,
                                    limit=held.quota.grant if held.quota is not None else None)
        else:
            progress[0] = await data.send_bytes(conn, payload)
    except (ConnectionError, TimeoutError, ssl.SSLError):
        return TransferDone("connection_lost", progress[0])
    except OSError as e:  # the local file failed (disk full, quota)
        return TransferDone("local_error", progress[0], error=e)
    if link is not None and not upload:  # whole: the helper may send close_notify
        try:
            await asyncio.to_thread(link.sent)
        except Exception:  # the helper is gone
            return TransferDone("connection_lost", progress[0])
    # close_notify (TLS): the client knows the data is whole; strict_ssl_write_shutdown
    # wants the client's close_notify back on a download
    confirm = 0.0 if upload or not action.protected else _confirm_seconds(cc)
    held.conn = None
    if not await conn.close(confirm=confirm):
        return TransferDone("connection_lost", progress[0])
    if link is not None:  # how the helper saw the TLS stream end decides
        ended = await asyncio.to_thread(link.ended, _confirm_seconds(cc) + 30)
        if ended is not None:
            return TransferDone("connection_lost", progress[0])
    if isinstance(action, ReceiveFile):
        return await _finish_upload(cc, jail, action, held, progress[0])
    if truncated:
        return TransferDone("truncated", progress[0], detail=truncated)
    return TransferDone("ok", progress[0], name=held.name)


async def _connect(cc: ControlConnection, action: TransferAction, held: Held, upload: bool) -> TransferDone | None:
    """Make `held.sock` the data connection `held.conn` (TLS as the action says); None when it is up."""
    if held.conn is not None:  # `_sent_at_once` made it (plain) and began
        return None
    sock = held.sock
    assert sock is not None
    if action.protected and cc.ctx.tls_link is not None:  # isolated: the TLS helper does TLS, we see plaintext
        held.sock = None  # wrap takes it
        try:
            plain = await asyncio.to_thread(cc.ctx.tls_link.wrap, sock, upload, action.reuse_required)
        except Exception as e:  # TlsRefused, or the helper is gone
            return TransferDone("tls_refused", detail=str(e) or e.__class__.__name__)
        held.conn = data.PlainConn(plain)
        return None
    if action.protected:  # the handshake follows the 150, as clients expect (and vsftpd does)
        assert cc.ssl_context is not None
        try:
            conn = await tls.accept_data(sock, cc.ssl_context, float(cc.cfg.accept_timeout or 60),
                                         strict_eof=bool(cc.cfg.strict_ssl_read_eof))
        except (TimeoutError, OSError, ssl.SSLError) as e:
            return TransferDone("tls_refused", detail=f"handshake failed ({e.__class__.__name__})")
        held.sock = None
        refusal = await tls.refuse_unresumed(conn, action.reuse_required)
        if refusal:
            return TransferDone("tls_refused", detail=refusal)
        held.conn = conn
        return None
    held.sock = None
    held.conn = data.PlainConn(sock)
    return None


SMALL_DOWNLOAD = 64 * 1024  # at most this much may go before its 150 (`_sent_at_once`)


def _sent_at_once(cc: ControlConnection, action: TransferAction, held: Held, size: int | None,
                  progress: list[int]) -> bool:
    """A small plain binary passive download: sendfile it all now, before the
    150, which then leaves with the 226 in one write (one send on the control
    connection and two event-loop turns fewer per file).  The client is already
    connected (passive) and reads the data whenever it likes; the kernel holds it.

    False: not such a download, or the socket did not take it all (or failed):
    the usual path sends the 150 and goes on from `progress[0]`."""
    if not (isinstance(action, SendFile) and size is not None and size - action.offset <= SMALL_DOWNLOAD
            and not action.protected and not action.ascii and not action.rate and cc.ctx.account_rates is None
            and cc.session.data_kind == "pasv"):
        return False
    assert held.sock is not None and held.fd is not None
    held.conn = data.PlainConn(held.sock)
    held.sock = None
    sfd = held.conn.sock.fileno()
    try:
        while sent := os.sendfile(sfd, held.fd, action.offset + progress[0], SMALL_DOWNLOAD):
            progress[0] += sent
    except OSError:  # BlockingIOError, or a failure the usual path meets and reports after its 150
        return False
    return True


async def _finish_upload(cc: ControlConnection, jail: Jail, action: ReceiveFile, held: Held,
                         size: int) -> TransferDone:
    if held.fd is not None and files.flush_needed(held.fd):  # NFS, CephFS: on the servers first
        try:
            await asyncio.to_thread(os.fdatasync, held.fd)
        except OSError as e:
            return TransferDone("local_error", size, error=e)
    if held.partial is not None:  # atomic_uploads: the name appears only now, complete
        # A client that died closed both connections; the end of the data is
        # then no proof of a complete file.  Give the control EOF a moment to
        # arrive (atomic uploads only: it costs this much per upload).
        await asyncio.sleep(ATOMIC_GRACE)
        if cc.reader.at_eof():
            return TransferDone("connection_lost", size)
        try:  # no replace where the user may not overwrite: the kernel refuses atomically
            jail.rename(held.partial, action.path, replace=action.may_overwrite)
        except OSError as e:
            return TransferDone("local_error", size, error=e)
    if held.quota is not None and held.fd is not None:  # before chown closes it: what the file now holds
        held.quota.size_after = os.fstat(held.fd).st_size
    if action.chown and cc.ctx.broker is not None:  # pooled mode runs as one user: nobody to give it to
        try:
            await asyncio.to_thread(cc.ctx.broker.chown_upload, held.fd)
        except OSError as e:
            return TransferDone("local_error", size, error=e)
        finally:  # the file is chown_username's now: this session writes no more to it
            if held.fd is not None:
                os.close(held.fd)
                held.fd = None
    return TransferDone("ok", size, name=held.name)


def _confirm_seconds(cc: ControlConnection) -> float:
    """strict_ssl_write_shutdown: how long a download waits for the client's close_notify."""
    if not cc.cfg.strict_ssl_write_shutdown:
        return 0.0
    return float(cc.cfg.data_connection_timeout or 60)


def _throttle(cc: ControlConnection, action: TransferAction) -> data.Throttle | None:
    """The action's rate and the account's shared budget, or None (the zero-copy path) when neither."""
    rates = cc.ctx.account_rates
    account = cc.session.account
    if rates is None or account is None:
        return data.Throttle(action.rate) if action.rate else None
    if isinstance(rates, RateGrants):  # isolated: the monitor books for this session's account
        return data.Throttle(action.rate, rates.ask, grant=rates.size)
    return data.Throttle(action.rate, rates.reserve_for(account.name))


def _log(cc: ControlConnection, action: SendFile | ReceiveFile, done: TransferDone, started: float,
         name: str) -> None:
    account = cc.session.account
    path = action.path
    if isinstance(action, ReceiveFile) and action.unique and name:
        path = paths.resolve(paths.parent(action.path), name)
    cc.events.transfer(TransferRecord(
        session=cc.sid, remote_ip=cc.remote_ip, user=cc.user,
        user_class=account.user_class.value if account is not None else "",
        anon_password=getattr(account, "anon_password", ""), path=path,
        direction="o" if isinstance(action, SendFile) else "i", ascii=action.ascii,
        size=done.size, seconds=time.time() - started, complete=done.status == "ok",
        started_at=started))


def _render(cc: ControlConnection, jail: Jail, action: SendListing) -> tuple[bytes, str]:
    """The listing's bytes, and why it stopped short ("" when whole)."""
    if action.recursive and stat_mod.S_ISDIR(jail.stat(action.path).st_mode):
        return _render_tree(cc, jail, action)
    return _render_listing(cc, jail, action), ""


def _render_tree(cc: ControlConnection, jail: Jail, action: SendListing) -> tuple[bytes, str]:
    """ls -R: each directory as a section ("label:", its lines, a blank line between
    sections), depth first in name order, as vsftpd and ls print it.  Which
    subdirectories are entered is the session's rule (`Session.subdirectories`:
    visible, not denied, never through a symlink); the jail confines every open,
    and a directory met twice (a bind mount) is not entered again.  The bounds are
    checked before each directory: one directory is listed whole, as a plain LIST would."""
    session = cc.session
    given = action.given.rstrip("/") if action.given not in ("", "/") else action.given
    now = time.time()
    deadline = time.monotonic() + RECURSE_MAX_SECONDS
    out = bytearray()
    listed = 0
    seen: set[tuple[int, int]] = set()
    st = jail.stat(action.path)
    seen.add((st.st_dev, st.st_ino))
    # (virtual path, label as printed); the label of the top is the argument as given, or "."
    stack: list[tuple[str, str]] = [(action.path, given or ".")]
    first = True
    while stack:
        vpath, label = stack.pop()
        if listed >= RECURSE_MAX_ENTRIES or time.monotonic() >= deadline:
            why = (f"more than {RECURSE_MAX_ENTRIES} entries" if listed >= RECURSE_MAX_ENTRIES
                   else f"more than {RECURSE_MAX_SECONDS:g} seconds")
            out += f"\r\nftpwarden: recursive listing stopped here ({why}); list a subdirectory\r\n".encode()
            return bytes(out), f"recursive listing stopped after {why}"
        try:
            entries = jail.listdir(vpath)  # sorted by name
        except OSError:
            entries = []  # an unreadable directory: its heading and nothing (as vsftpd)
        listed += len(entries)
        # NLST names carry their directory as labelled ("./sub/a.txt"; "/" gives "/a", not "//a"),
        # but for the top "." (as vsftpd)
        prefix = "" if first and label == "." else label.rstrip("/") + "/"
        lines = session.render_lines(action.kind, entries, now, action.show_hidden, prefix=prefix)
        out += (("" if first else "\r\n") + label + ":\r\n").encode("utf-8", "surrogateescape")
        if lines:
            out += ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
        first = False
        below = []
        for e in session.subdirectories(vpath, entries, action.show_hidden):
            if (e.dev, e.ino) in seen:
                continue
            seen.add((e.dev, e.ino))
            below.append((paths.resolve(vpath, e.name), label.rstrip("/") + "/" + e.name))
        stack.extend(reversed(below))  # the first name is listed first
    return bytes(out), ""


def _render_listing(cc: ControlConnection, jail: Jail, action: SendListing) -> bytes:
    st = jail.stat(action.path)
    given = action.given
    # NLST prints names as the client spelled the directory (vsftpd):
    # "NLST sub" -> "sub/a.txt", "NLST /sub/*.txt" -> "/sub/a.txt", "NLST" -> "a.txt"
    prefix = ""
    show_hidden = action.show_hidden
    if stat_mod.S_ISDIR(st.st_mode):
        entries = jail.listdir(action.path)  # sorted by name
        if action.pattern:
            prefix = given[:len(given) - len(action.pattern)]
        elif given not in ("", "."):
            prefix = given if given.endswith("/") else given + "/"
    elif action.dir_only:
        raise NotADirectoryError(20, "Not a directory")
    else:
        entries = [Entry.from_stat(paths.basename(action.path), jail.lstat(action.path))]
        if action.kind == "NLST":  # one file: its name exactly as given
            entries = [entries[0]._replace(name=given or entries[0].name)]
        show_hidden = True  # named outright: shown even if it is a dot file
    lines = cc.session.render_lines(action.kind, entries, time.time(), show_hidden,
                                    pattern=action.pattern, prefix=prefix)
    if not lines:
        return b""
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
