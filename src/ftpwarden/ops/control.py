"""The control socket: `ftpwarden who` and `ftpwarden kick` talk to the running server here.

An AF_UNIX stream socket at `control_socket` (off unless set), mode 0660 owned
by root (the server's user when not root) and `admin_group`.  The mode bits
are the first gate; each connection is then checked again with SO_PEERCRED:
root, the server's own uid, or a process whose gid or supplementary groups
include `admin_group`.  Anyone else gets one refusal line and nothing is read.

A request is one JSON object on one line (at most MAX_REQUEST bytes), the
answer one JSON object on one line, then the server closes:

    {"who": {}}                       -> {"ok": true, "sessions": [{...}, ...]}
    {"kick": {"id": "123.4"}}         -> {"ok": true, "kicked": ["123.4"]}
    {"kick": {"user": "alice"}} / {"kick": {"ip": "192.0.2.1"}}
    anything else                     -> {"ok": false, "error": "..."}

Served by the isolated broker (its selectors loop: `SelectorControl`), by a
single pooled worker (its asyncio loop: `serve_asyncio`), or by the pooled
supervisor (a thread: `serve_thread`, which asks the workers over
ops/pooledlink.py).  The request set is closed and small: no request names a
path, a command or anything a session could be made to do but end.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import grp
import json
import logging
import os
import select
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFAULT_PATH", "MAX_REQUEST", "KICK_LINE", "Ops", "control_path", "admin_gid", "bind_control", "unlink_control",
    "problems", "peer_allowed", "answer", "SelectorControl", "serve_asyncio", "serve_thread", "request",
    "find_table", "matches",
]

log = logging.getLogger("ftpwarden.control")

DEFAULT_PATH = "/run/ftpwarden/control.sock"  # what `who` and `kick` use without --config
MAX_REQUEST = 4096  # bytes of one request line
DEADLINE = 5.0  # seconds a client has to send its request and read the answer
KICK_LINE = b"421 Disconnected by the administrator.\r\n"
_REFUSED = b'{"ok": false, "error": "permission denied"}\n'
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Ops = tuple[Callable[[], list[dict[str, Any]]], Callable[[str, str], list[str]]]  # (who, kick(field, value))
_KICK_FIELDS = ("id", "user", "ip")


def control_path(cfg: Any) -> str | None:
    return str(getattr(cfg, "control_socket", None) or "") or None


def admin_gid(cfg: Any) -> int | None:
    """admin_group as a gid (a name or a number); None when unset.  KeyError: no such group."""
    name = str(getattr(cfg, "admin_group", None) or "")
    if not name:
        return None
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


def problems(cfg: Any) -> list[tuple[tuple[str, ...], str]]:
    """check-config's (and serve's) word on control_socket and admin_group, each at its line."""
    out: list[tuple[tuple[str, ...], str]] = []
    try:
        admin_gid(cfg)
    except KeyError:
        out.append((("admin_group",), f"admin_group: no such group: {cfg.admin_group}"))
    path = control_path(cfg)
    if path is not None:
        if not os.path.isabs(path):
            out.append((("control_socket",), f"control_socket: {path}: give an absolute path"))
        elif os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
            out.append((("control_socket",), f"control_socket: {path}: exists and is not a socket"))
    return out


# ---------------------------------------------------------------- the socket

def bind_control(path: str, group: int | None) -> socket.socket:
    """Listen at `path` (non-blocking).  A stale socket left by a dead server is
    replaced; a live one (another server answers) or any other file is an OSError."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "exists and is not a socket", path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover
        else:
            raise OSError(errno.EADDRINUSE, "another server listens there", path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # the mode comes from the umask at bind (0600, or 0660 for the group): no chmod later, which
    # would follow a symlink someone swapped in for the socket in a directory they may write
    old = os.umask(0o117 if group is not None else 0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    _BOUND[path] = os.lstat(path).st_ino
    try:
        if group is not None:  # still root's group until here: nobody else could connect yet
            os.chown(path, os.geteuid(), group, follow_symlinks=False)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_BOUND: dict[str, int] = {}  # path -> inode of the socket file we made there


def unlink_control(path: str | None) -> None:
    """At the end: remove our socket file (not one another server made since)."""
    if path is None or path not in _BOUND:
        return
    try:
        if os.lstat(path).st_ino == _BOUND.pop(path):
            os.unlink(path)
    except OSError:
        pass


def peer_allowed(conn: socket.socket, group: int | None) -> bool:
    """SO_PEERCRED: root, our own uid, or a member of `group` (its gid or a
    supplementary group, read from /proc for that very process)."""
    try:
        pid, uid, gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return False
    if uid == 0 or uid == os.geteuid():
        return True
    if group is None:
        return False
    return gid == group or group in _groups_of(pid, uid)


def _groups_of(pid: int, uid: int) -> set[int]:
    """The supplementary groups of process `pid`, if it still runs as `uid`; else none."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        if int(fields["Uid"].split()[0]) != uid:
            return set()
        return {int(g) for g in fields.get("Groups", "").split()}
    except (OSError, KeyError, ValueError, IndexError):
        return set()


# ---------------------------------------------------------------- requests

def answer(line: bytes, ops: Ops) -> bytes:
    """One request line -> one answer line; never raises."""
    try:
        req = json.loads(line.decode("utf-8"))
        if not isinstance(req, dict) or len(req) != 1:
            raise ValueError("one of who, kick")
        (verb, arg), = req.items()
        if verb == "who":
            return _line({"ok": True, "sessions": ops[0]()})
        if verb == "kick":
            if not isinstance(arg, dict) or len(arg) != 1:
                raise ValueError("kick takes one of id, user, ip")
            (field, value), = arg.items()
            if field not in _KICK_FIELDS or not isinstance(value, str) or not value:
                raise ValueError("kick takes one of id, user, ip (a non-empty string)")
            return _line({"ok": True, "kicked": ops[1](field, value)})
        raise ValueError(f"unknown request {verb!r}")
    except (ValueError, UnicodeDecodeError) as e:
        return _line({"ok": False, "error": f"bad request: {e}"})
    except Exception as e:  # our bug: the client hears it, the server goes on
        log.exception("control request failed")
        return _line({"ok": False, "error": f"internal error: {type(e).__name__}"})


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def matches(row: dict[str, Any], field: str, value: str) -> bool:
    """Does a `who` row match kick's selector (id, user or client address)?"""
    key = {"id": "id", "user": "user", "ip": "client"}[field]
    return str(row.get(key, "")) == value


def find_table(events: Any) -> Any:
    """The SessionTable fed by the OpsSink among `events`' sinks (ops/sink.py), or None."""
    from .sink import OpsSink
    seen: list[Any] = [events]
    for _ in range(64):  # a small object graph: the event log and its sinks
        if not seen:
            break
        obj = seen.pop()
        if isinstance(obj, OpsSink):
            return obj.table
        if isinstance(obj, (list, tuple)):
            seen.extend(obj)
        elif hasattr(obj, "__dict__") and obj is events:
            seen.extend(v for v in vars(obj).values() if isinstance(v, (OpsSink, list, tuple)))
    return None


# ---------------------------------------------------------------- serving: the broker's selectors loop

class _Client:
    __slots__ = ("conn", "inbuf", "out", "timer")

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.inbuf, self.out = conn, b"", b""
        self.timer: Any = None


class SelectorControl:
    """The isolated broker's control socket, non-blocking in its loop: a client
    that stalls costs a buffer until its deadline, never a wait.  `watch(obj, fn,
    events)`, `unwatch(obj)` (no close) and `after(seconds, fn)` are the loop's."""

    def __init__(self, sock: socket.socket, group: int | None, ops: Ops,
                 watch: Callable[[Any, Callable[[], None], int], None], unwatch: Callable[[Any], None],
                 after: Callable[[float, Callable[[], None]], Any]) -> None:
        self.sock, self.group, self.ops = sock, group, ops
        self.watch, self.unwatch, self.after = watch, unwatch, after
        self.clients: set[_Client] = set()
        watch(sock, self._accept, selectors.EVENT_READ)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control socket: %s", e)
                return
            conn.setblocking(False)
            if not peer_allowed(conn, self.group):
                try:
                    conn.send(_REFUSED)
                except OSError:
                    pass
                conn.close()
                continue
            c = _Client(conn)
            self.clients.add(c)
            c.timer = self.after(DEADLINE, functools.partial(self._close, c))
            self.watch(conn, functools.partial(self._read, c), selectors.EVENT_READ)

    def _read(self, c: _Client) -> None:
        try:
            data = c.conn.recv(MAX_REQUEST + 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        c.inbuf += data
        line, newline, _ = c.inbuf.partition(b"\n")
        if not newline and data and len(c.inbuf) <= MAX_REQUEST:
            return  # more to come
        self.unwatch(c.conn)
        if not newline and not data:  # EOF before a whole request
            self._close(c)
            return
        c.out = _line({"ok": False, "error": "request too long"}) if len(line) > MAX_REQUEST \
            else answer(line, self.ops)
        self._write(c)
        if c.out and c.conn.fileno() >= 0:
            self.watch(c.conn, functools.partial(self._write, c), selectors.EVENT_WRITE)

    def _write(self, c: _Client) -> None:
        try:
            sent = c.conn.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            sent = len(c.out)
        c.out = c.out[sent:]
        if not c.out:
            self._close(c)

    def _close(self, c: _Client) -> None:
        if c not in self.clients:
            return
        self.clients.discard(c)
        if c.timer is not None:
            c.timer.cancel()
        self.unwatch(c.conn)
        c.conn.close()

    def close(self) -> None:
        for c in list(self.clients):
            self._close(c)
        self.unwatch(self.sock)
        self.sock.close()


# ---------------------------------------------------------------- serving: a pooled worker's asyncio loop

async def serve_asyncio(sock: socket.socket, group: int | None,
                        ops: Callable[[], Ops]) -> asyncio.base_events.Server:
    """A single pooled worker serves the socket itself.  `ops()` -> this loop's (who, kick)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = writer.get_extra_info("socket")
            if conn is None or not peer_allowed(conn, group):
                writer.write(_REFUSED)
                return
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), DEADLINE)
            except asyncio.LimitOverrunError:
                writer.write(_line({"ok": False, "error": "request too long"}))
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            writer.write(answer(line.rstrip(b"\n"), ops()))
            await asyncio.wait_for(writer.drain(), DEADLINE)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, sock=sock, limit=MAX_REQUEST)


# ---------------------------------------------------------------- serving: the pooled supervisor's thread

def serve_thread(sock: socket.socket | None, group: int | None, ops: Ops,
                 tick: Callable[[], None] | None = None, period: float = 1.0) -> threading.Thread:
    """The supervisor of several pooled workers: a daemon thread answers one client
    at a time (each bounded by DEADLINE) and calls `tick()` about every `period` s."""

    def run() -> None:
        if sock is not None:
            sock.setblocking(False)
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if tick is not None and now >= next_tick:
                try:
                    tick()
                except Exception:
                    log.exception("control: tick failed")
                next_tick = now + period
            try:
                ready, _, _ = select.select([sock] if sock is not None else [], [], [],
                                            max(0.05, next_tick - time.monotonic()))
            except (OSError, ValueError):
                return  # closed: the server stops
            if not ready or sock is None:
                continue
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            with conn:
                _serve_blocking(conn, group, ops)

    thread = threading.Thread(target=run, name="ftpwarden-control", daemon=True)
    thread.start()
    return thread


def _serve_blocking(conn: socket.socket, group: int | None, ops: Ops) -> None:
    conn.settimeout(DEADLINE)
    try:
        if not peer_allowed(conn, group):
            conn.sendall(_REFUSED)
            return
        deadline = time.monotonic() + DEADLINE
        buf = b""
        while b"\n" not in buf and len(buf) <= MAX_REQUEST and time.monotonic() < deadline:
            data = conn.recv(MAX_REQUEST + 1)
            if not data:
                return
            buf += data
        line = buf.partition(b"\n")[0]
        if len(line) > MAX_REQUEST:
            conn.sendall(_line({"ok": False, "error": "request too long"}))
            return
        conn.sendall(answer(line, ops))
    except OSError:
        pass


# ---------------------------------------------------------------- the client (ftpwarden who / kick)

def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request, return the answer.  OSError when the server cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once, before reading: its one line is there to read
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                if buf:
                    break
                raise
            if not data:
                break
            buf += data
    try:
        reply = json.loads(buf.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise OSError(errno.EPROTO, "the server's answer is not JSON") from None
    if not isinstance(reply, dict):
        raise OSError(errno.EPROTO, "the server's answer is not a JSON object")
    return reply
