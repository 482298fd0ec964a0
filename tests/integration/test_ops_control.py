"""Issue 14 in pooled mode: `ftpwarden who` / `ftpwarden kick` over the control socket
(one worker: served in the worker; two: by the supervisor, which asks each worker over
its link), who may connect to that socket, and sd_notify (READY, STATUS, WATCHDOG,
RELOADING around SIGHUP, STOPPING).

The client is curl at its defaults, plus -B (an ASCII download: curl then learns the
size from nothing and reads the control reply after the data ends, so it shows the
421) of a sparse file the server sends at anon_max_rate, so the session is still
there when `who` and `kick` run."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import REPO, SPARSE_SIZE, Server, start_server, stop_server

TIMEOUT = 20
KICKED = "< 421 Disconnected by the administrator."
RATE = "20000"  # bytes/s: a 1 GiB download lasts far longer than any test

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# ---------------------------------------------------------------- helpers (the isolated tests use them too)

def ftpwarden(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def anon_tree(base: Path) -> Path:
    """A root-owned 0755 anonymous root with a sparse 1 GiB file."""
    root = base / "anon"
    root.mkdir(mode=0o755, exist_ok=True)
    os.chmod(root, 0o755)
    with open(root / "big.bin", "wb") as f:
        f.truncate(SPARSE_SIZE)
    os.chmod(root / "big.bin", 0o644)
    return root


def who(conf: Path) -> list[dict]:
    r = ftpwarden("who", "--config", str(conf), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_who(conf: Path, ok: Callable[[list[dict]], bool], timeout: float = TIMEOUT) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = who(conf)
        if ok(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"who never showed what was expected: {rows}")


def slow_curl(srv: Server, path: str = "big.bin") -> subprocess.Popen[bytes]:
    return subprocess.Popen(["curl", "-sS", "-v", "-B", f"{srv.url}/{path}", "-o", os.devnull],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def check_who_and_kick(srv: Server, conf: Path) -> None:
    """curl's session shows in `who` (human and JSON); `kick ID` ends it and curl sees 421."""
    curl = slow_curl(srv)
    try:
        rows = wait_who(conf, lambda rows: any(r.get("transfer") for r in rows))
        (row,) = [r for r in rows if r.get("transfer")]
        assert row["client"] == "127.0.0.1"
        assert row["transfer"]["name"].endswith("big.bin") and row["transfer"]["direction"] == "download"
        assert row["user"] in ("anonymous", "ftp"), row
        table = ftpwarden("who", "--config", str(conf))
        assert table.returncode == 0 and row["id"] in table.stdout and "big.bin" in table.stdout, table
        r = ftpwarden("kick", "--config", str(conf), row["id"])
        assert r.returncode == 0 and f"kicked 1 session: {row['id']}" in r.stdout, (r.stdout, r.stderr)
        _, err = curl.communicate(timeout=TIMEOUT)
        assert KICKED in err.decode(errors="replace"), err[-2000:]
        assert curl.returncode != 0
        wait_who(conf, lambda rows: not any(r["id"] == row["id"] for r in rows))
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait(5)


def raw_login(srv: Server) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"USER anonymous\r\n")
    assert f.readline().startswith(b"331")
    s.sendall(b"PASS guest@example.org\r\n")
    assert f.readline().startswith(b"230")
    return s


def sees_421(s: socket.socket) -> bytes:
    """What the server says next, then EOF."""
    s.settimeout(TIMEOUT)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def check_kick_by_ip_and_user(srv: Server, conf: Path) -> None:
    a, b = raw_login(srv), raw_login(srv)
    try:
        wait_who(conf, lambda rows: len(rows) == 2)
        r = ftpwarden("kick", "--config", str(conf), "no.such.id")
        assert r.returncode == 1 and "no session matched" in r.stderr
        r = ftpwarden("kick", "--config", str(conf), "--user", rows_user(conf))
        assert r.returncode == 0 and "kicked 2 sessions" in r.stdout, (r.stdout, r.stderr)
        for s in (a, b):
            assert sees_421(s) == b"421 Disconnected by the administrator.\r\n"
        c = raw_login(srv)
        with c:
            wait_who(conf, lambda rows: len(rows) == 1)
            r = ftpwarden("kick", "--config", str(conf), "--ip", "127.0.0.1")
            assert r.returncode == 0 and "kicked 1 session" in r.stdout
            assert sees_421(c).startswith(b"421 ")
    finally:
        a.close()
        b.close()


def rows_user(conf: Path) -> str:
    return who(conf)[0]["user"]


def in_child_as(uid: int, gid: int, groups: list[int], fn: Callable[[], str]) -> str:
    """fn() run in a forked child with these ids; its result (or the exception's name)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = "child failed"
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                out = fn()
            except Exception as e:
                out = type(e).__name__
        finally:
            os.write(w, out.encode()[:4000])
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    return got


def check_access(sock_path: str, group: int) -> None:
    """0660 root:admin_group; a user outside it is refused by the mode bits, and again by
    SO_PEERCRED when the bits are loosened; a member of the group may ask."""
    from ftpwarden.ops.control import request

    st = os.stat(sock_path)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, group)
    nobody = pwd.getpwnam("nobody")
    outsider = grp.getgrnam("nogroup").gr_gid if group != grp.getgrnam("nogroup").gr_gid else nobody.pw_gid

    def ask() -> str:
        return json.dumps(request(sock_path, {"who": {}}, timeout=5))

    assert in_child_as(nobody.pw_uid, outsider, [], ask) == "PermissionError"
    os.chmod(sock_path, 0o666)  # the mode bits out of the way: SO_PEERCRED still refuses
    try:
        got = in_child_as(nobody.pw_uid, outsider, [], ask)
        assert json.loads(got) == {"ok": False, "error": "permission denied"}, got
    finally:
        os.chmod(sock_path, 0o660)
    got = in_child_as(nobody.pw_uid, outsider, [group], ask)  # a member (supplementary group)
    assert json.loads(got)["ok"] is True, got


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp (pytest's tmp_path sits below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="ftpw-ctl-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def admin_group() -> tuple[str, int]:
    g = grp.getgrnam("adm")
    return g.gr_name, g.gr_gid


class NotifySocket:
    """The NOTIFY_SOCKET systemd would give: a datagram socket the test reads."""

    def __init__(self, base: Path) -> None:
        self.path = str(base / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def wait_for(self, ok: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """The first datagram (from now on, or already seen and not yet taken) that satisfies ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.seen):
                if ok(msg):
                    del self.seen[:i + 1]
                    return msg
            self.seen.clear()
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        raise AssertionError("no such sd_notify datagram")

    def close(self) -> None:
        self.sock.close()


def check_sd_notify(srv: Server, notify: NotifySocket) -> None:
    """READY=1 once listening, STATUS= with the count, WATCHDOG=1, RELOADING=1 + READY=1
    around SIGHUP, STOPPING=1 on SIGTERM."""
    ready = notify.wait_for(lambda m: "READY=1" in m.splitlines())
    assert f"MAINPID={srv.proc.pid}" in ready and "STATUS=0 sessions" in ready
    notify.wait_for(lambda m: m == "WATCHDOG=1")
    notify.wait_for(lambda m: m == "WATCHDOG=1")  # again: every WatchdogSec/2
    s = raw_login(srv)
    with s:
        notify.wait_for(lambda m: "STATUS=1 session" in m.splitlines())
        srv.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines())
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.splitlines())
        assert "STATUS=1 session" in notify.wait_for(lambda m: "READY=1" in m.splitlines())
    notify.wait_for(lambda m: "STATUS=0 sessions" in m.splitlines())
    srv.proc.send_signal(signal.SIGTERM)
    notify.wait_for(lambda m: "STOPPING=1" in m.splitlines())
    assert srv.proc.wait(TIMEOUT) == 0


# ---------------------------------------------------------------- pooled mode

def pooled_conf(base: Path, workers: int, *lines: str, sock: Path | None = None) -> Path:
    conf = base / "pooled.conf"
    conf.write_text("\n".join(["listen=YES", "listen_address=127.0.0.1", "listen_port=0", "pooled=YES",
                               "anonymous_enable=YES", f"anon_root={anon_tree(base)}", f"anon_max_rate={RATE}",
                               f"worker_processes={workers}", "delay_failed_login=0",
                               f"control_socket={sock or base / 'run' / 'control.sock'}", *lines, ""]))
    return conf


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def pooled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    conf = pooled_conf(tmp_path, request.param)
    srv = start_server(["--config", str(conf)], tmp_path / "anon", tmp_path)
    yield srv, conf
    stop_server(srv)


@needs_curl
def test_who_sees_curl_and_kick_ends_it(pooled: tuple[Server, Path]) -> None:
    check_who_and_kick(*pooled)


def test_kick_by_user_and_ip(pooled: tuple[Server, Path]) -> None:
    check_kick_by_ip_and_user(*pooled)


def test_socket_removed_at_stop(pooled: tuple[Server, Path]) -> None:
    srv, conf = pooled
    path = conf.parent / "run" / "control.sock"
    assert path.is_socket()
    assert who(conf) == []  # the server runs (its SIGTERM handler is in place)
    stop_server(srv)
    assert srv.proc.returncode == 0
    assert not path.exists()
    r = ftpwarden("who", "--config", str(conf))
    assert r.returncode == 2 and "no server is listening" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to nobody: needs root")
@pytest.mark.parametrize("workers", [1, 2])
def test_non_admin_cannot_use_the_control_socket(tmp_path: Path, workers: int) -> None:
    name, gid = admin_group()
    with reachable_dir() as run:  # nobody reaches the directory: the socket's own bits decide
        conf = pooled_conf(tmp_path, workers, f"admin_group={name}", sock=run / "control.sock")
        srv = start_server(["--config", str(conf)], tmp_path / "anon", tmp_path)
        try:
            check_access(str(run / "control.sock"), gid)
        finally:
            stop_server(srv)


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify(tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    srv = start_server(["--config", str(pooled_conf(tmp_path, workers))], tmp_path / "anon", tmp_path)
    try:
        check_sd_notify(srv, notify)
    finally:
        stop_server(srv)
        notify.close()


def raw_request(path: Path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def test_bad_requests_get_an_error(pooled: tuple[Server, Path]) -> None:
    """Only the closed request set is answered; anything else is an error line, and the server goes on."""
    _, conf = pooled
    path = conf.parent / "run" / "control.sock"
    for data in (b"not json\n", b"[1]\n", b'{"who": {}, "kick": {}}\n', b'{"kick": {"name": "x"}}\n',
                 b'{"kick": {"id": ""}}\n', b'{"shutdown": {}}\n', b'{"who": {}' + b" " * 5000 + b"}\n"):
        reply = raw_request(path, data)
        assert reply["ok"] is False and reply["error"], (data[:40], reply)
    assert raw_request(path, b'{"who": {}}\n') == {"ok": True, "sessions": []}
    r = ftpwarden("kick", "--config", str(conf))
    assert r.returncode == 2 and "exactly one of" in r.stderr


def test_check_config_reports_control_problems(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    conf = pooled_conf(tmp_path, 1, "admin_group=no-such-group-ftpw", sock=tmp_path / "file")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2
    assert "admin_group: no such group: no-such-group-ftpw" in r.stderr
    assert "control_socket: " in r.stderr and "exists and is not a socket" in r.stderr
