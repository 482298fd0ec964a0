"""setproctitle_enable in pooled mode: a pooled process shows how many sessions it hosts.

/proc/PID/cmdline is what `ps` shows.  Off (the default), the command line stays as started.
"""

from __future__ import annotations

import ftplib
import subprocess
from pathlib import Path

from ..conftest import descendants, wait_for
from .conftest import serve


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def connect(srv) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=10)
    ftp.login("alice", "secret")
    return ftp


def test_pooled_title_counts_sessions(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "setproctitle_enable=YES")
    pid = srv.proc.pid
    assert wait_for(lambda: cmdline(pid) == b"ftpwarden: pooled: 0 sessions\0", 5), cmdline(pid)
    first, second = connect(srv), connect(srv)
    try:
        assert wait_for(lambda: cmdline(pid) == b"ftpwarden: pooled: 2 sessions\0", 5), cmdline(pid)
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
        assert ps.stdout.strip() == "ftpwarden: pooled: 2 sessions"
    finally:
        first.quit()
    assert wait_for(lambda: cmdline(pid) == b"ftpwarden: pooled: 1 session\0", 5), cmdline(pid)
    second.quit()
    assert wait_for(lambda: cmdline(pid) == b"ftpwarden: pooled: 0 sessions\0", 5), cmdline(pid)
    assert srv.proc.poll() is None  # libc's environment moved, not lost: the server still serves
    connect(srv).quit()


def test_pooled_workers_and_supervisor(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "setproctitle_enable=YES", workers=2)
    pid = srv.proc.pid
    assert wait_for(lambda: cmdline(pid) == b"ftpwarden: pooled: supervisor of 2 workers\0", 5), cmdline(pid)
    def idle_workers() -> bool:
        return [cmdline(p) for p in descendants(pid)] == [b"ftpwarden: pooled: 0 sessions\0"] * 2
    assert wait_for(idle_workers, 5), [cmdline(p) for p in descendants(pid)]


def test_pooled_title_off_by_default(make_server, tmp_path):
    srv = serve(make_server, tmp_path)
    connect(srv).quit()
    line = cmdline(srv.proc.pid)
    assert b"\0serve\0" in line and b"ftpwarden: " not in line, line
