"""Pooled mode: who/kick over a worker's own sessions, and the supervisor's link to each worker.

A pooled worker answers `who` from its SessionTable (ops/table.py, fed by its
OpsSink) or, when none is configured, from its live connections alone; `kick`
acts on its ControlConnections in-process (ControlConnection.kick: 421, end).

With several workers the supervisor serves the control socket and asks each
worker over a socketpair made before the fork (AF_UNIX stream, one JSON line
each way, the same request set as the control socket).  The worker's end is
served in its asyncio loop; the supervisor asks one worker at a time with a
deadline, so a stuck worker costs a `who` at most LINK_WAIT seconds and
shows as missing rows, never as a hung supervisor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .control import KICK_LINE, MAX_REQUEST, Ops, answer, find_table, matches

__all__ = ["LocalSessions", "WorkerLinks", "serve_link", "LINK_WAIT"]

log = logging.getLogger("ftpwarden.pooledlink")

LINK_WAIT = 3.0  # seconds the supervisor waits for one worker's answer
_ANSWER_MAX = 64 << 20  # bytes of one worker's answer (about 200 000 sessions)


class LocalSessions:
    """This process's sessions: `sessions()` -> its live ControlConnections."""

    def __init__(self, sessions: Callable[[], Iterable[Any]], events: Any, mode: str = "pooled") -> None:
        self.sessions = sessions
        self.events = events
        self.mode = mode

    def who(self) -> list[dict[str, Any]]:
        live = {cc.sid: cc for cc in self.sessions() if getattr(cc, "sid", None)}
        table = find_table(self.events)
        if table is not None:
            rows = [row for row in table.snapshot() if row["id"] in live]
            known = {row["id"] for row in rows}
        else:
            rows, known = [], set()
        now = time.time()
        mono = asyncio.get_running_loop().time() if _in_loop() else None
        for sid, cc in live.items():  # no table (or a row it does not have): what the connection knows
            if sid in known:
                continue
            idle = round(max(0.0, mono - cc.last_active), 1) if mono is not None else None
            rows.append({"id": sid, "user": cc.user, "class": _class_of(cc), "client": cc.remote_ip,
                         "since": None, "idle": idle, "command": "", "mode": self.mode, "transfer": None,
                         "last": round(now - idle, 3) if idle is not None else None})
        return rows

    def kick(self, field: str, value: str) -> list[str]:
        kicked = []
        for row in self.who():
            if matches(row, field, value):
                for cc in self.sessions():
                    if getattr(cc, "sid", None) == row["id"] and cc.kick(KICK_LINE):
                        kicked.append(row["id"])
        return kicked

    def ops(self) -> Ops:
        return (self.who, self.kick)


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _class_of(cc: Any) -> str:
    session = getattr(cc, "session", None)
    account = getattr(session, "account", None) if session is not None else None
    cls = getattr(account, "user_class", None)
    return str(getattr(cls, "value", cls or ""))


# ---------------------------------------------------------------- worker side

async def serve_link(sock: socket.socket, ops: Ops) -> None:
    """A pooled worker: answer the supervisor's requests on `sock` until it closes."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_REQUEST)
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            writer.write(answer(line.rstrip(b"\n"), ops))
            await writer.drain()
    finally:
        writer.close()


# ---------------------------------------------------------------- supervisor side

class WorkerLinks:
    """The supervisor's end of each worker's link, by worker slot."""

    def __init__(self) -> None:
        self.ends: dict[int, socket.socket] = {}
        self.lock = threading.Lock()  # the control thread asks; the main thread replaces links

    def make(self, slot: int) -> socket.socket:
        """A new link for worker `slot` (before its fork); returns the worker's end."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self.lock:
            old = self.ends.pop(slot, None)
            self.ends[slot] = mine
        if old is not None:
            old.close()
        return theirs

    def ours(self) -> list[socket.socket]:
        """Our ends: a worker forked later closes them (they are not its own)."""
        with self.lock:
            return list(self.ends.values())

    def ask(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Every worker's answer to `req` (a worker that does not answer in time is skipped)."""
        line = json.dumps(req).encode() + b"\n"
        with self.lock:
            ends = list(self.ends.items())
        answers = []
        for slot, end in ends:
            try:
                answers.append(_ask_one(end, line))
            except (OSError, ValueError) as e:
                log.warning("worker %d did not answer the control request: %s", slot, e)
        return answers

    def who(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for a in self.ask({"who": {}}):
            rows += a.get("sessions") or []
        return sorted(rows, key=lambda r: r.get("since") or 0)

    def kick(self, field: str, value: str) -> list[str]:
        kicked: list[str] = []
        for a in self.ask({"kick": {field: value}}):
            kicked += a.get("kicked") or []
        return kicked

    def ops(self) -> Ops:
        return (self.who, self.kick)

    def close(self) -> None:
        with self.lock:
            for end in self.ends.values():
                end.close()
            self.ends.clear()


def _ask_one(end: socket.socket, line: bytes) -> dict[str, Any]:
    end.setblocking(False)
    _drain_stale(end)
    end.sendall(line)  # small; the worker reads it at once
    deadline = time.monotonic() + LINK_WAIT
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError("timed out")
        ready, _, _ = select.select([end], [], [], left)
        if not ready:
            continue
        data = end.recv(1 << 20)
        if not data:
            raise OSError("the worker's link is closed")
        buf += data
        if len(buf) > _ANSWER_MAX:
            raise ValueError("answer too large")
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ValueError("not a JSON object")
    return reply


def _drain_stale(end: socket.socket) -> None:
    """A late answer to an earlier request that timed out: dropped before asking again."""
    try:
        while end.recv(1 << 20):
            pass
    except (BlockingIOError, InterruptedError):
        pass


# ---------------------------------------------------------------- wiring (net/server.py)

def start_worker_ops(ctx: Any, sessions: Callable[[], Iterable[Any]],
                     loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """In a pooled worker's loop: its link to the supervisor, or (a single worker) the
    control socket and sd_notify's ticks.  Returns what stops them."""
    local = LocalSessions(sessions, ctx.events)
    tasks: list[asyncio.Task[Any]] = []
    handles: list[Any] = []
    link = getattr(ctx, "ops_link", None)
    if link is not None:
        tasks.append(loop.create_task(serve_link(link, local.ops())))
    control = getattr(ctx, "ops_control", None)
    if control is not None:
        from .control import serve_asyncio
        sock, group = control
        tasks.append(loop.create_task(serve_asyncio(sock, group, local.ops)))
    from .statedb import start_pooled
    stop_state = start_pooled(ctx, loop)  # state_db_url: this process's sync thread
    notifier = getattr(ctx, "notifier", None)
    if notifier is not None and notifier.enabled:
        notifier.open()  # now: a seccomp sandbox may come next

        def tick() -> None:
            notifier.tick(sum(1 for _ in sessions()))
            handles[:] = [loop.call_later(notifier.period(), tick)]
        handles.append(loop.call_later(notifier.period(), tick))

    def stop() -> None:
        stop_state()
        for h in handles:
            h.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is None and hasattr(t.result(), "close"):
                t.result().close()  # the control socket's asyncio server
            else:
                t.cancel()
    return stop


class SupervisorOps:
    """The supervisor of several workers: links made before each fork, the control
    socket and sd_notify served by one thread."""

    def __init__(self, ctx: Any) -> None:
        self.control = getattr(ctx, "ops_control", None)
        self.notifier = getattr(ctx, "notifier", None)
        self.links = WorkerLinks()
        self._count = 0
        self._counted = 0.0
        self.thread: threading.Thread | None = None

    @property
    def wanted(self) -> bool:
        return self.control is not None or (self.notifier is not None and self.notifier.enabled)

    def for_worker(self, ctx: Any, slot: int) -> socket.socket:
        """Before forking worker `slot`: its end of a new link (set as ctx.ops_link in the child)."""
        return self.links.make(slot)

    def in_worker(self, ctx: Any, theirs: socket.socket) -> None:
        """Right after the fork, in the worker: only its own link end stays."""
        for end in list(self.links.ends.values()):  # no lock: the control thread is not in this process
            end.close()
        if self.control is not None:
            self.control[0].close()
        if self.notifier is not None:
            self.notifier.close()
        ctx.ops_control, ctx.notifier, ctx.ops_link = None, None, theirs

    @property
    def last_count(self) -> int:
        return self._count

    def sessions(self) -> int:
        now = time.monotonic()
        if now - self._counted >= 2.0:  # a `who` round trip to every worker, not every tick
            self._count = len(self.links.who())
            self._counted = now
        return self._count

    def start(self) -> None:
        from .control import serve_thread
        tick: Callable[[], None] | None = None
        period = 1.0
        notifier = self.notifier
        if notifier is not None and notifier.enabled:
            def tick() -> None:
                notifier.tick(self.sessions())
            period = notifier.period()
        sock, group = self.control if self.control is not None else (None, None)
        self.thread = serve_thread(sock, group, self.links.ops(), tick=tick, period=period)
