"""Issue 14 in isolated mode: the broker serves the control socket; `kick` of a logged-in
session is a Kick message to the identity worker hosting it (which writes 421 and
closes that session only), of a session still logging in a SIGTERM to its pre-login
process (which says 421); who may connect; sd_notify from the broker.  Each test runs
once per session_isolation setting (tests/privileged/conftest.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..integration.conftest import Server, start_server, stop_server
from ..integration.test_ops_control import (
    RATE,
    NotifySocket,
    admin_group,
    anon_tree,
    check_access,
    check_kick_by_ip_and_user,
    check_sd_notify,
    check_who_and_kick,
    ftpwarden,
    needs_curl,
    raw_login,
    reachable_dir,
    sees_421,
    wait_who,
)
from .conftest import loopback_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")


def isolated_conf(base: Path, *lines: str, sock: Path | None = None) -> Path:
    return loopback_conf(base, "anonymous_enable=YES", "local_enable=NO", f"anon_root={anon_tree(base)}",
                         f"anon_max_rate={RATE}", "delay_failed_login=0",
                         f"control_socket={sock or base / 'run' / 'control.sock'}", *lines)


@pytest.fixture
def isolated(tmp_path: Path, session_isolation: str) -> Iterator[tuple[Server, Path]]:
    conf = isolated_conf(tmp_path)
    srv = start_server(["--config", str(conf)], tmp_path / "anon", tmp_path)
    yield srv, conf
    stop_server(srv)


@needs_curl
def test_who_sees_curl_and_kick_ends_it(isolated: tuple[Server, Path]) -> None:
    check_who_and_kick(*isolated)


def test_kick_by_user_and_ip(isolated: tuple[Server, Path]) -> None:
    check_kick_by_ip_and_user(*isolated)


def test_kick_one_of_a_workers_sessions(isolated: tuple[Server, Path]) -> None:
    """Two sessions of one identity (one worker, or two with process isolation): kicking
    one leaves the other working."""
    srv, conf = isolated
    a, b = raw_login(srv), raw_login(srv)
    with a, b:
        rows = wait_who(conf, lambda rows: len(rows) == 2)
        assert {r["user"] for r in rows} == {"anonymous"} and {r["mode"] for r in rows} == {"isolated"}
        r = ftpwarden("kick", "--config", str(conf), rows[0]["id"])
        assert r.returncode == 0, r.stderr
        kicked, other = (a, b) if sees_421_nowait(a) else (b, a)
        assert sees_421(kicked) == b"421 Disconnected by the administrator.\r\n"
        other.sendall(b"NOOP\r\n")
        other.settimeout(10)
        assert other.recv(100).startswith(b"200")
        assert [r["id"] for r in wait_who(conf, lambda rows: len(rows) == 1)] == [rows[1]["id"]]


def sees_421_nowait(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        data = s.recv(4096, socket.MSG_PEEK)
    except TimeoutError:
        return False
    return data.startswith(b"421")


def test_kick_before_login(isolated: tuple[Server, Path]) -> None:
    """A session still at USER: its pre-login process says 421 and ends."""
    srv, conf = isolated
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"USER anonymous\r\n")
        assert f.readline().startswith(b"331")
        (row,) = wait_who(conf, lambda rows: len(rows) == 1)
        r = ftpwarden("kick", "--config", str(conf), "--ip", "127.0.0.1")
        assert r.returncode == 0 and row["id"] in r.stdout, r.stderr
        assert f.read().startswith(b"421 ")


def test_non_admin_cannot_use_the_control_socket(tmp_path: Path, session_isolation: str) -> None:
    name, gid = admin_group()
    with reachable_dir() as run:
        conf = isolated_conf(tmp_path, f"admin_group={name}", sock=run / "control.sock")
        srv = start_server(["--config", str(conf)], tmp_path / "anon", tmp_path)
        try:
            check_access(str(run / "control.sock"), gid)
        finally:
            stop_server(srv)


def test_sd_notify(tmp_path: Path, session_isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    srv = start_server(["--config", str(isolated_conf(tmp_path))], tmp_path / "anon", tmp_path)
    try:
        check_sd_notify(srv, notify)
    finally:
        stop_server(srv)
        notify.close()
