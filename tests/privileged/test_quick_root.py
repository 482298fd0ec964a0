"""Quick mode started as root (issue 11 item 5): `ftpwarden serve DIR` runs isolated mode,
every session as nopriv_user (nobody) jailed in DIR, never as root.

The server is started here, not through tests/integration's start_server (which keeps
quick mode pooled for the pooled-mode tests); it gets this module's session_isolation
setting like every isolated-mode server of tests/privileged.
"""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import process_tree, wait_for
from ..integration.conftest import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="quick mode is isolated mode only when started as root")

TIMEOUT = 10
HELLO = b"hello from quick mode as root\n"


@dataclass
class Quick:
    proc: subprocess.Popen
    port: int
    root: Path
    lines: list[str]  # what it printed at start


def _start(root: Path, isolation: str, *extra: str) -> Quick:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ftpwarden", "serve", str(root), "--port", "0",
                             "--bind", "127.0.0.1", "-o", "delay_failed_login=0",
                             "-o", f"session_isolation={isolation}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = b""  # read from the fd: a buffered readline would hide what select sees
    deadline = time.monotonic() + 20
    while out.count(b"\n") < 3 and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            out += os.read(proc.stdout.fileno(), 4096)
    lines = out.decode(errors="replace").splitlines()
    if len(lines) < 3 or " on 127.0.0.1:" not in lines[0]:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"quick mode did not start: {lines} {err.decode(errors='replace')}")
    port = int(lines[0].split(" on 127.0.0.1:", 1)[1].split()[0].rstrip(","))
    return Quick(proc, port, root, lines)


def _stop(q: Quick) -> None:
    if q.proc.poll() is None:
        q.proc.send_signal(signal.SIGTERM)
        try:
            q.proc.wait(10)
        except subprocess.TimeoutExpired:
            q.proc.kill()
            q.proc.wait(5)
    for stream in (q.proc.stdout, q.proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@pytest.fixture
def quick(tmp_path: Path, session_isolation: str, nobody: pwd.struct_passwd) -> Iterator[Quick]:
    """DIR root's and 0755 (anonymous never runs in a jail top it can write), with a
    subdirectory nobody may write; anonymous may upload (--write), alice is a virtual user."""
    root = tmp_path / "pub"
    root.mkdir()
    root.chmod(0o755)
    (root / "hello.txt").write_bytes(HELLO)
    (root / "incoming").mkdir()
    os.chown(root / "incoming", nobody.pw_uid, nobody.pw_gid)
    q = _start(root, session_isolation, "--write", "--user", "alice:secret")
    yield q
    _stop(q)


def _ids(pid: int) -> tuple[list[int], list[int], str]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in status}
    return [int(x) for x in field["Uid"][:3]], [int(x) for x in field["Gid"][:3]], " ".join(field["Groups"])


def _jailed_in(q: Quick) -> list[int]:
    """The server's processes whose root is DIR: the sessions' (identity workers)."""
    out = []
    for pid in process_tree(q.proc.pid):
        try:
            if os.readlink(f"/proc/{pid}/root") == str(q.root):
                out.append(pid)
        except OSError:
            continue
    return out


def _login(q: Quick, user: str = "anonymous", password: str = "guest@") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect("127.0.0.1", q.port)
    ftp.login(user, password)
    return ftp


def test_start_up_lines_say_who_the_sessions_run_as(quick: Quick, nobody: pwd.struct_passwd):
    assert f"serving {quick.root} (anonymous writable, alice writable) on 127.0.0.1:" in quick.lines[0]
    assert "(isolated mode)" in quick.lines[0]
    assert quick.lines[1] == (f"  sessions run as nobody:nogroup (uid {nobody.pw_uid}, gid {nobody.pw_gid}), "
                              f"jailed in {quick.root}")
    assert quick.lines[2].startswith(f"  connect: curl ftp://127.0.0.1:{quick.port}/")


@pytest.mark.parametrize("user, password", [("anonymous", "guest@"), ("alice", "secret")])
def test_sessions_run_as_nobody_jailed_in_the_directory(quick: Quick, nobody: pwd.struct_passwd, user, password):
    ftp = _login(quick, user, password)
    try:
        got = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", got.write)
        assert got.getvalue() == HELLO
        jailed = wait_for(lambda: _jailed_in(quick), TIMEOUT)
        assert jailed, "no process of the server has the served directory as its root"
        for pid in jailed:  # real, effective, saved: all nobody; no supplementary group
            assert _ids(pid) == ([nobody.pw_uid] * 3, [nobody.pw_gid] * 3, ""), pid
    finally:
        ftp.quit()
    for pid in process_tree(quick.proc.pid):  # and nothing of the tree runs as root in DIR
        try:
            if os.readlink(f"/proc/{pid}/root") == str(quick.root):
                assert _ids(pid)[0] != [0, 0, 0], pid
        except OSError:
            continue


@pytest.mark.parametrize("user, password", [("anonymous", "guest@"), ("alice", "secret")])
def test_uploads_land_owned_by_nobody(quick: Quick, nobody: pwd.struct_passwd, user, password):
    data = os.urandom(200_000)
    ftp = _login(quick, user, password)
    try:
        assert ftp.storbinary(f"STOR incoming/{user}.bin", io.BytesIO(data)).startswith("226")
        with pytest.raises(ftplib.error_perm, match=r"^55[03]"):  # the top is root's, not nobody's
            ftp.storbinary("STOR top.bin", io.BytesIO(b"x"))
    finally:
        ftp.quit()
    up = quick.root / "incoming" / f"{user}.bin"
    assert up.read_bytes() == data
    assert (up.stat().st_uid, up.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert not (quick.root / "top.bin").exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_downloads(quick: Quick):
    r = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), f"ftp://127.0.0.1:{quick.port}/hello.txt"],
                       capture_output=True, timeout=TIMEOUT + 5)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_read_only_without_write(tmp_path: Path, session_isolation: str):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o755)
    (root / "incoming").mkdir(mode=0o777)
    (root / "incoming").chmod(0o777)
    q = _start(root, session_isolation)
    try:
        assert "(anonymous read-only)" in q.lines[0]
        ftp = _login(q)
        try:
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.storbinary("STOR incoming/x.bin", io.BytesIO(b"x"))
        finally:
            ftp.quit()
        assert not (root / "incoming" / "x.bin").exists()
    finally:
        _stop(q)


def test_a_directory_nobody_cannot_read_stops_start_up(tmp_path: Path):
    root = tmp_path / "private"
    root.mkdir()
    root.chmod(0o700)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "ftpwarden", "serve", str(root), "--port", "0", "--bind", "127.0.0.1"],
                       capture_output=True, timeout=30, env=env)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().startswith(f"ftpwarden: {root}: nobody cannot read it"), r.stderr
