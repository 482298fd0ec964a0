"""Upload hooks: `upload_hook=/path/to/program` runs after a completed upload.

Session processes may not execve (seccomp), so the program is started by a
small runner process forked before the sandbox goes on: in pooled mode one per
worker process (as the server's user; as root, as `upload_hook_user`), in
isolated mode one forked by the broker (root), which starts every hook as
`upload_hook_user`.  Requests and answers are one JSON object per datagram on
a SOCK_SEQPACKET socketpair.

The program gets the upload's real path as its one argument and the facts in
its environment (nothing else of the server's): FTPW_USER, FTPW_CLASS,
FTPW_PATH, FTPW_VPATH, FTPW_SIZE, FTPW_CLIENT, FTPW_SHA256 (when computed),
PATH=/usr/sbin:/usr/bin:/sbin:/bin.  Its stdout and stderr (merged) are logged,
the first OUTPUT_MAX bytes of them.

Asynchronous (default): the final reply does not wait; at most
`upload_hook_concurrency` programs run at once and `upload_hook_queue` wait,
further uploads' hooks are dropped (and logged).  `upload_hook_sync=YES`: the
session waits up to `upload_hook_timeout` seconds: exit 0 -> 226; anything
else (non-zero, killed at the timeout, queue full) -> the runner removes the
file, or moves it into `upload_quarantine_dir` when set, and the client gets 550.

Who the program runs as: never root by accident.  Started as root, the server
refuses to start unless `upload_hook_user` names the account; uid 0 only when
that option names a uid-0 account explicitly (a scanner that must read every
user's files), with a warning at start.  Not root, the hook runs as the
server's own user (nothing else is possible) and `upload_hook_user` must be
unset or that user.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import posixpath
import pwd
import queue
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Settings", "settings", "worker_settings", "HookClient", "Result", "hook_env", "OUTPUT_MAX"]

log = logging.getLogger("ftpwarden.hooks")

OUTPUT_MAX = 4096      # bytes of a hook's output that are logged
MESSAGE_MAX = 65536    # one request or answer
ANSWER_GRACE = 5.0     # seconds a sync session waits beyond the hook's own timeout
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Settings:
    program: str
    sync: bool
    timeout: float
    uid: int | None       # None: the runner's own (pooled, not root)
    gid: int | None
    queue: int
    concurrency: int
    quarantine_dir: str | None


def settings(cfg: Any) -> Settings | None:
    """The hook's settings from the config, None when off; ValueError says what is wrong."""
    program = getattr(cfg, "upload_hook", None)
    if not program:
        return None
    if not os.path.isabs(program):
        raise ValueError(f"upload_hook must be an absolute path (got {program!r})")
    if not os.access(program, os.X_OK):
        raise ValueError(f"upload_hook {program} is not an executable file")
    name = getattr(cfg, "upload_hook_user", None)
    uid = gid = None
    if os.geteuid() == 0:
        if not name:
            raise ValueError("upload_hook needs upload_hook_user when the server starts as root "
                             "(the account the program runs as)")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"upload_hook_user {name!r}: no such user") from None
        uid, gid = pw.pw_uid, pw.pw_gid
        if uid == 0:
            log.warning("upload_hook runs as %s (uid 0), as upload_hook_user says", name)
    elif name:
        try:
            if pwd.getpwnam(name).pw_uid != os.geteuid():
                raise ValueError(f"upload_hook_user {name!r}: not root, the server can run hooks "
                                 "only as its own user")
        except KeyError:
            raise ValueError(f"upload_hook_user {name!r}: no such user") from None
    quarantine = getattr(cfg, "upload_quarantine_dir", None) or None
    if quarantine is not None and not os.path.isabs(quarantine):
        raise ValueError("upload_quarantine_dir must be an absolute path")
    return Settings(program, bool(getattr(cfg, "upload_hook_sync", False)),
                    float(getattr(cfg, "upload_hook_timeout", None) or 60),
                    uid, gid, max(0, int(getattr(cfg, "upload_hook_queue", None) or 64)),
                    max(1, int(getattr(cfg, "upload_hook_concurrency", None) or 2)), quarantine)


def worker_settings(cfg: Any) -> Settings:
    """What a session process needs to know of the hook (isolated mode: the broker runs it)."""
    return Settings(str(cfg.upload_hook), bool(getattr(cfg, "upload_hook_sync", False)),
                    float(getattr(cfg, "upload_hook_timeout", None) or 60), None, None, 0, 1, None)


def hook_env(*, user: str, user_class: str, root: str, vpath: str, size: int, client: str) -> dict[str, str]:
    """The hook's whole environment.  `vpath` is normalised inside `root` here (in isolated mode it
    comes from the user's process): FTPW_PATH never names a file outside the account's root."""
    vpath = posixpath.normpath("/" + vpath.lstrip("/"))  # not "//": POSIX keeps two leading slashes
    return {"FTPW_USER": user, "FTPW_CLASS": user_class, "FTPW_PATH": os.path.join(root, vpath.lstrip("/")),
            "FTPW_VPATH": vpath, "FTPW_SIZE": str(size), "FTPW_CLIENT": client, "PATH": _PATH}


@dataclass(frozen=True, slots=True)
class Result:
    status: str       # ok | failed | timeout | busy | error
    code: int | None = None
    output: str = ""
    moved_to: str = ""  # quarantined here ("" : removed, or left)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------- the runner process

def _run_program(s: Settings, path: str, env: dict[str, str]) -> tuple[str, int | None, str]:
    """Run the hook once: (status, exit code, first output)."""
    creds: dict[str, Any] = {}
    if s.uid is not None:
        creds = {"user": s.uid, "group": s.gid, "extra_groups": []}
    try:
        proc = subprocess.Popen([s.program, path], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True,
                                start_new_session=True, umask=0o077, **creds)
    except OSError as e:
        return "error", None, f"cannot start {s.program}: {e.strerror}"
    deadline = time.monotonic() + s.timeout
    kept = bytearray()
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            if len(kept) < OUTPUT_MAX:  # the rest is read and dropped: a chatty hook cannot block
                kept += chunk[:OUTPUT_MAX - len(kept)]
    proc.stdout.close()
    try:
        code = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its whole session: children too
        except ProcessLookupError:
            pass
        proc.wait()
        return "timeout", None, kept.decode("utf-8", "replace")
    return ("ok" if code == 0 else "failed"), code, kept.decode("utf-8", "replace")


def _dispose(s: Settings, root: str, vpath: str) -> str:
    """A refused upload: moved into the quarantine directory (its new path), or removed ("").
    The file is reached through the user's root with openat2 (net.jail): a symlink
    planted since cannot send a root process elsewhere."""
    from ..net.jail import Jail  # the runner alone needs it
    with Jail(root) as jail:
        if s.quarantine_dir:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.path.basename(vpath)}"
            qfd = os.open(s.quarantine_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                jail.move_out(vpath, qfd, name)
            finally:
                os.close(qfd)
            return os.path.join(s.quarantine_dir, name)
        jail.unlink(vpath)
        return ""


def _answer(sock: socket.socket, lock: threading.Lock, reply: dict[str, Any]) -> None:
    data = json.dumps(reply).encode()
    with lock:
        try:
            sock.send(data[:MESSAGE_MAX])
        except OSError:
            pass


def _handle(s: Settings, sock: socket.socket, lock: threading.Lock, req: dict[str, Any]) -> None:
    status, code, output = _run_program(s, req["path"], req["env"])
    moved = ""
    if req.get("sync") and status != "ok":
        try:
            moved = _dispose(s, req["root"], req["vpath"])
        except OSError as e:
            output += f"\n[ftpwarden: could not remove the refused upload: {e.strerror}]"
    _answer(sock, lock, {"id": req["id"], "status": status, "code": code, "output": output, "moved_to": moved})


def runner_main(s: Settings, sock: socket.socket) -> None:
    """The runner: read requests, run them with at most `concurrency` at once and
    `queue` waiting; EOF (the session process ended) ends it."""
    lock = threading.Lock()
    waiting: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max(1, s.queue))

    def work() -> None:
        while (req := waiting.get()) is not None:
            try:
                _handle(s, sock, lock, req)
            except Exception as e:  # a bad request: answered, the runner lives on
                _answer(sock, lock, {"id": req.get("id"), "status": "error", "output": repr(e)})

    threads = [threading.Thread(target=work, daemon=True) for _ in range(s.concurrency)]
    for t in threads:
        t.start()
    while True:
        try:
            data = sock.recv(MESSAGE_MAX)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            req = json.loads(data)
            if not isinstance(req, dict) or not isinstance(req.get("env"), dict):
                raise ValueError("not a request")
        except ValueError:
            continue
        try:
            waiting.put_nowait(req)
        except queue.Full:
            _answer(sock, lock, {"id": req.get("id"), "status": "busy",
                                 "output": f"hook queue full ({s.queue} waiting)"})
    for _ in threads:
        waiting.put(None)
    for t in threads:  # the hooks under way finish (each bounded by its timeout)
        t.join(s.timeout + 1)


def start_runner(s: Settings) -> socket.socket:
    """Fork the runner now (before any sandbox); the caller's end of its socketpair."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the runner
        code = 0
        try:
            mine.close()
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)  # the parent's (a broker's) wake-up pipe is not ours
            try:
                os.closerange(3, theirs.fileno())
                os.closerange(theirs.fileno() + 1, 65536)
            except OSError:
                pass
            runner_main(s, theirs)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return mine


def _die_with_parent() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- the session side

class HookClient:
    """The session process's side: `run` sends one upload's facts to the runner."""

    def __init__(self, s: Settings, sock: socket.socket) -> None:
        self.settings = s
        self.sock = sock
        sock.setblocking(False)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Result]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, s: Settings) -> HookClient:
        return cls(s, start_runner(s))

    async def run(self, env: dict[str, str], root: str, vpath: str) -> Result:
        """Sync: the program's result (after it ran, and after a refused file was
        disposed of).  Async: Result("queued") at once; its end is logged."""
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read())
        rid = next(self._ids)
        req = {"id": rid, "sync": self.settings.sync, "env": env, "path": env["FTPW_PATH"],
               "root": root, "vpath": vpath}
        data = json.dumps(req).encode()
        if len(data) > MESSAGE_MAX:
            return Result("error", output="request too large")
        fut: asyncio.Future[Result] = loop.create_future()
        self._waiting[rid] = fut
        try:
            await loop.sock_sendall(self.sock, data)
        except OSError as e:
            self._waiting.pop(rid, None)
            log.error("upload hook: the runner is gone (%s)", e)
            return Result("error", output="hook runner unavailable")
        if not self.settings.sync:
            return Result("queued")
        try:
            return await asyncio.wait_for(fut, self.settings.timeout + ANSWER_GRACE)
        except TimeoutError:
            return Result("timeout")
        finally:
            self._waiting.pop(rid, None)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, MESSAGE_MAX)
            except OSError:
                data = b""
            if not data:
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_result(Result("error", output="hook runner ended"))
                return
            try:
                msg = json.loads(data)
                result = Result(str(msg["status"]), msg.get("code"), str(msg.get("output") or ""),
                                str(msg.get("moved_to") or ""))
            except (ValueError, KeyError, TypeError):
                continue
            log_result(result)
            rid = msg.get("id")
            # async: nobody waits, the entry goes; sync: `run` removes its own
            waiter = self._waiting.get(rid) if self.settings.sync else self._waiting.pop(rid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)


def log_result(r: Result) -> None:
    out = r.output.strip().replace("\n", " | ")
    if r.ok:
        log.info("upload hook: exit 0%s", f"; output: {out}" if out else "")
    else:
        log.warning("upload hook: %s (exit %s)%s%s", r.status, r.code,
                    f"; quarantined as {r.moved_to}" if r.moved_to else "",
                    f"; output: {out}" if out else "")
