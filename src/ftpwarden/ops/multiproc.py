"""Pooled mode with several workers: each worker's numbers, summed by the supervisor.

As prometheus_client's multiprocess mode does with PROMETHEUS_MULTIPROC_DIR, each
worker writes its own file in a private directory made at start (0700, the server's
user; removed at exit): `PID.json` = {"state": counters, "sessions": its rows},
replaced atomically once a second.  The supervisor serves /metrics and /status in a
thread of its own and, for each request, sums the counters of every file (a dead
worker's counters still count, as in multiprocess mode) and lists the rows of the
workers still alive.  A worker never parses another's file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from typing import Any

from .metrics import memory_by_kind, merge

__all__ = ["WorkerDump", "SupervisorHttp", "make_dir"]

log = logging.getLogger("ftpwarden.ops")

DUMP_EVERY = 1.0  # seconds
FILE_MAX = 64 << 20


def make_dir() -> str:
    path = tempfile.mkdtemp(prefix="ftpwarden-ops-")  # 0700
    import atexit
    pid = os.getpid()

    def remove() -> None:
        if os.getpid() == pid:  # the supervisor only (workers end with os._exit anyway)
            shutil.rmtree(path, ignore_errors=True)
    atexit.register(remove)
    return path


class WorkerDump:
    """A worker's side (set as ctx.ops_http: net/server.py awaits start() in its loop)."""

    def __init__(self, directory: str, ops: Any, listen: socket.socket) -> None:
        self.directory = directory
        self.ops = ops
        self.listen = listen
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.listen.close()  # the supervisor serves it; this copy came with the fork
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.dump()
            except Exception:
                log.exception("ops: writing this worker's numbers failed")
            await asyncio.sleep(DUMP_EVERY)

    def dump(self) -> None:
        state, rows = self.ops.source()
        data = json.dumps({"state": state, "sessions": rows}).encode()
        final = os.path.join(self.directory, f"{os.getpid()}.json")
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def read_all(directory: str, mode: str = "pooled") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    states, rows = [], []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json") or not name[:-5].isdigit():
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                got = json.loads(f.read(FILE_MAX))
        except (OSError, ValueError):
            continue
        if not isinstance(got, dict) or not isinstance(got.get("state"), dict):
            continue
        states.append(got["state"])
        if _alive(int(name[:-5])) and isinstance(got.get("sessions"), list):
            rows += got["sessions"]
    rows.sort(key=lambda r: r.get("since") or 0)
    total = merge(states)
    memory, processes = memory_by_kind({"supervisor": [os.getpid()]})
    total.setdefault("memory", {}).update(memory)
    total.setdefault("processes", {}).update(processes)
    return {**total, "mode": mode}, rows


class SupervisorHttp:
    """The supervisor's side: /metrics and /status over every worker's file, in a thread."""

    def __init__(self, directory: str, listen: socket.socket, admin_group: str | None) -> None:
        self.directory = directory
        self.listen = listen
        self.admin_group = admin_group
        self.thread: threading.Thread | None = None

    def start_thread(self) -> None:
        from .access import Access
        access = Access(self.admin_group)
        self.thread = threading.Thread(target=self._run, args=(access,), name="ftpwarden-metrics", daemon=True)
        self.thread.start()

    def _run(self, access: Any) -> None:
        from .http import Feed, StatusServer

        async def main() -> None:
            server = StatusServer(self.listen, Feed(lambda: read_all(self.directory)), access)
            await server.start()
            await asyncio.Event().wait()  # until the process exits (a daemon thread)
        try:
            asyncio.run(main())
        except Exception:
            log.exception("ops: the metrics listener failed")
