"""`ftpwarden serve` as a user starts it: one server per port, -v, and -o in quick mode (pooled mode)."""

from __future__ import annotations

import collections
import ftplib
import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import REPO

TIMEOUT = 20


def ftpwarden(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the CLI; one that has not ended in `timeout` (a server that started) is killed
    with every process it forked, and the test fails."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "ftpwarden", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"ftpwarden {' '.join(args)} still running after {timeout}s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def session_pids(stderr: str) -> collections.Counter:
    """Connections per worker process, from -v's CONNECT lines ("[pid N] CONNECT: ...")."""
    return collections.Counter(re.findall(r"\[pid (\d+)\] CONNECT:", stderr))


def test_a_second_server_cannot_share_the_port(make_server, tmp_path: Path):
    root = tmp_path / "pub"
    root.mkdir()
    first = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "2")
    other = tmp_path / "other"
    other.mkdir()
    second = ftpwarden("serve", str(other), "--port", str(first.port), "--bind", "127.0.0.1", "--workers", "2")
    assert second.returncode == 2
    assert f"ftpwarden: cannot listen on 127.0.0.1:{first.port}: Address already in use" in second.stderr
    assert "Traceback" not in second.stderr
    with ftplib.FTP() as ftp:  # the first one still answers, alone
        ftp.connect(first.host, first.port, timeout=TIMEOUT)
        ftp.login()


def test_pooled_workers_share_the_load(make_server, tmp_path: Path):
    """Both workers accept on the one socket: 100 concurrent sessions land on both."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "f.txt").write_bytes(b"data\n")
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "2", "-v")
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                with ftplib.FTP() as ftp:
                    ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
                    ftp.login()
                    ftp.retrbinary("RETR f.txt", lambda b: None)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(5,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    per_pid = session_pids(srv.stderr())
    assert sum(per_pid.values()) == 100
    assert len(per_pid) == 2 and min(per_pid.values()) >= 10, per_pid


def test_verbose_logs_sessions_to_stderr(make_server, tmp_path: Path):
    root = tmp_path / "pub"
    root.mkdir()
    (root / "f.txt").write_bytes(b"0123456789")
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1", "-v",
                      "--user", "alice:secret", "-o", "delay_failed_login=0")
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login("alice", "wrong")
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        ftp.login("alice", "secret")
        ftp.retrbinary("RETR f.txt", lambda b: None)
        ftp.storbinary("STOR up.txt", io.BytesIO(b"abc"))
        ftp.mkd("d")
        ftp.rename("up.txt", "d/up.txt")
        ftp.delete("d/up.txt")
    err = srv.stderr()
    for expected in ['CONNECT: Client "127.0.0.1"', '[alice] FAIL LOGIN: Client "127.0.0.1"',
                     '[alice] OK LOGIN: Client "127.0.0.1"',
                     '[alice] OK DOWNLOAD: Client "127.0.0.1", "/f.txt", 10 bytes',
                     '[alice] OK UPLOAD: Client "127.0.0.1", "/up.txt", 3 bytes',
                     '[alice] OK MKDIR: Client "127.0.0.1", "/d"',
                     '[alice] OK RENAME: Client "127.0.0.1", "/up.txt /d/up.txt"',
                     '[alice] OK DELETE: Client "127.0.0.1", "/d/up.txt"']:
        assert expected in err, (expected, err)
    assert "secret" not in err and "wrong" not in err


def test_quick_mode_obeys_dash_o_listen_address(make_server, tmp_path: Path):
    root = tmp_path / "pub"
    root.mkdir()
    srv = make_server(root, str(root), "--port", "0", "--workers", "1", "-o", "listen_address=127.0.0.2",
                      "-o", "ftpd_banner=hi there")
    assert srv.host == "127.0.0.2"
    with ftplib.FTP() as ftp:
        assert ftp.connect("127.0.0.2", srv.port, timeout=TIMEOUT) == "220 hi there"
    assert "-o:" not in srv.stderr() and "warning: -o" not in srv.stderr()


def test_port_flag_and_dash_o_disagreeing_stop_start_up(tmp_path: Path):
    r = ftpwarden("serve", str(tmp_path), "--port", "27082", "-o", "listen_port=27083")
    assert r.returncode == 2 and r.stdout == ""
    assert "--port 27082: says listen_port=27082 but -o listen_port=27083 says otherwise" in r.stderr
