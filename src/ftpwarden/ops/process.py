"""Isolated mode's metrics listener: the `ftpwarden-ops` process.

HTTP requests are untrusted bytes, so no root process parses them.  The broker
forks this process before its first accept (cli.py), with only two descriptors:
the metrics_listen socket (bound by root) and its end of a SOCK_SEQPACKET
socketpair.  It drops to `nopriv_user` in `secure_chroot_dir` (after reading the
admin_group's uids and opening /proc/self/net, which the jail hides), installs the
seccomp allow-list of a pooled worker (asyncio, sockets; no execve), and serves
/metrics and /status from the last snapshot the broker sent.

The broker counts (its OpsSink sees every session's events through LogRelay) and,
once a second, sends one datagram: JSON {"state": metrics state, "sessions": rows}.
It never waits on it: a full socket drops that snapshot.  The ops process exits
when the broker's end closes (and has a parent-death signal besides).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import pwd
import signal
import socket
from typing import Any

from ..logs.events import EventLog
from .access import Access
from .http import Feed, StatusServer
from .metrics import OpsMetrics, memory_by_kind
from .sink import OpsSink

__all__ = ["OpsFeed", "fork_ops_process", "ops_sink_of", "NAME"]

log = logging.getLogger("ftpwarden.ops")

NAME = "ftpwarden-ops"
SNAPSHOT_MAX = 4 << 20      # bytes of one snapshot datagram
ROWS_MAX = 2000             # sessions sent for /status (counts in the metrics cover them all)
_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33


def ops_sink_of(events: Any) -> OpsSink | None:
    """The OpsSink registered beside `events`' log sinks (logs.configured.TeeEventLog), or None."""
    sink = getattr(events, "ops", None)
    return sink if isinstance(sink, OpsSink) else None


def _snapshot(sink: OpsSink, pids: dict[str, list[int]]) -> bytes:
    rows = sink.table.snapshot()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["class"] or "none"] = counts.get(row["class"] or "none", 0) + 1
    memory, processes = memory_by_kind(pids)
    state = {**sink.metrics.state(), "mode": sink.table.mode, "open": counts, "memory": memory,
             "processes": processes}
    shown = rows[:ROWS_MAX]
    while True:
        data = json.dumps({"state": state, "sessions": shown}).encode()
        if len(data) <= SNAPSHOT_MAX or not shown:
            return data
        shown = shown[: len(shown) // 2]


class OpsFeed:
    """The broker's end: snapshots to the ops process, never blocking."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def send(self, events: EventLog, pids: dict[str, list[int]]) -> None:
        """`pids`: the broker's processes by kind (metrics.PROCESS_KINDS), for their memory."""
        sink = ops_sink_of(events)
        if sink is None or self.sock.fileno() < 0:
            return
        try:
            self.sock.send(_snapshot(sink, {**pids, "ops": [self.pid]}), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass  # the ops process is busy: it gets the next one
        except OSError:
            self.sock.close()  # it is gone; the metrics stop, the FTP service goes on

    def session_ended(self, events: EventLog, sid: str) -> None:
        """The broker ended a session (its worker may have died without a disconnect event)."""
        sink = ops_sink_of(events)
        if sink is not None:
            sink.table.disconnect(sid)

    def close(self) -> None:
        self.sock.close()


def fork_ops_process(listen: socket.socket, cfg: Any, close_in_child: Any = None) -> OpsFeed:
    """Fork `ftpwarden-ops` serving `listen`; the broker keeps the returned feed."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock, opt in ((mine, _SO_SNDBUFFORCE), (theirs, _SO_RCVBUFFORCE)):
        try:  # room for a whole snapshot (root may exceed wmem_max)
            sock.setsockopt(socket.SOL_SOCKET, opt, SNAPSHOT_MAX * 2)
        except OSError:
            pass
    parent = os.getpid()
    pid = os.fork()
    if pid:
        theirs.close()
        mine.setblocking(False)
        return OpsFeed(pid, mine)
    code = 1
    try:
        mine.close()
        _child(listen, theirs, cfg, parent)
        code = 0
    except BaseException:
        log.exception("%s failed", NAME)
    finally:
        os._exit(code)


def _child(listen: socket.socket, chan: socket.socket, cfg: Any, parent: int) -> None:
    from ..priv import seccomp
    from ..priv.creds import close_strays, drop_privileges
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(NAME.encode()), 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    access = Access(getattr(cfg, "admin_group", None))  # uids and /proc/self/net, before the jail
    keep = {listen.fileno(), chan.fileno(), *access.tables.values()}
    close_strays(keep)
    pw = pwd.getpwnam(cfg.nopriv_user)
    drop_privileges(pw.pw_uid, pw.pw_gid, root=cfg.secure_chroot_dir)
    sandbox = seccomp.installer("pooled", bool(cfg.seccomp_sandbox))
    asyncio.run(_serve(listen, chan, access, sandbox))


async def _serve(listen: socket.socket, chan: socket.socket, access: Access, sandbox: Any) -> None:
    latest: list[Any] = [{**OpsMetrics().state(), "mode": "isolated"}, []]
    done = asyncio.Event()

    def source() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return latest[0], latest[1]

    def on_snapshot() -> None:
        try:
            data = chan.recv(SNAPSHOT_MAX + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            done.set()  # the broker is gone
            return
        try:
            got = json.loads(data)
            if isinstance(got, dict) and isinstance(got.get("state"), dict) and isinstance(got.get("sessions"), list):
                latest[:] = [got["state"], got["sessions"]]
        except ValueError:
            log.warning("%s: a snapshot that is not JSON", NAME)

    chan.setblocking(False)
    loop = asyncio.get_running_loop()
    loop.add_reader(chan.fileno(), on_snapshot)
    server = StatusServer(listen, Feed(source), access)
    await server.start()
    if sandbox is not None:
        sandbox()
    await done.wait()
    server.close()
