"""Temporary bans (ban_threshold, ban_seconds, ban_window) on a real pooled server
with two worker processes sharing the table."""

from __future__ import annotations

import ftplib
import json
import socket
import time
from pathlib import Path

import pytest

from ..conftest import wait_for

TIMEOUT = 10


def serve(make_server, tmp_path: Path, **opts: str):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    base = dict(listen="YES", listen_address="127.0.0.1", listen_port="0", pooled="YES",
                worker_processes="2", anonymous_enable="NO", delay_failed_login="0",
                ban_threshold="3", xferlog_enable="YES", vsftpd_log_file=str(logs / "vsftpd.log"),
                json_log_file=str(logs / "events.json"))
    base.update(opts)
    conf = tmp_path / "bans.conf"
    conf.write_text("".join(f"{k}={v}\n" for k, v in base.items()))
    srv = make_server(root, "--config", str(conf))
    srv.extra["logs"] = logs
    return srv


def greeting(srv, source: str = "127.0.0.1") -> bytes:
    """The first line the server sends to a new connection from `source`."""
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        return f.readline()


def fail_once(srv, source: str = "127.0.0.1") -> None:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("nobody_here", "wrong-password")
    ftp.close()


def test_failed_logins_across_connections_ban_the_address(make_server, tmp_path):
    srv = serve(make_server, tmp_path)
    for _ in range(2):
        fail_once(srv)
    assert greeting(srv).startswith(b"220")  # two failures: not yet
    fail_once(srv)
    first = greeting(srv)
    assert first == b"421 Too many failed logins from your address; try again later.\r\n"
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftplib.FTP(timeout=TIMEOUT).connect(srv.host, srv.port)
    # another address is untouched
    assert greeting(srv, "127.0.0.2").startswith(b"220")
    other = ftplib.FTP(timeout=TIMEOUT)
    other.connect(srv.host, srv.port, source_address=("127.0.0.2", 0))
    assert other.sendcmd("NOOP").startswith("200")
    other.close()
    # logged once, in the vsftpd format and as a JSON event
    vlog = srv.extra["logs"] / "vsftpd.log"
    bans = wait_for(lambda: [line for line in vlog.read_text().splitlines() if "BAN:" in line])
    assert len(bans) == 1, bans
    assert bans[0].endswith('BAN: Client "127.0.0.1", 600 seconds'), bans[0]
    events = [json.loads(line) for line in (srv.extra["logs"] / "events.json").read_text().splitlines()]
    assert [(e["client"], e["seconds"]) for e in events if e["event"] == "ban"] == [("127.0.0.1", 600)]
    failed_in = {e["session"].split(".")[0] for e in events if e["event"] == "login" and not e["ok"]}
    print(f"failed logins were counted by worker process(es) {sorted(failed_in)}")
    assert "Traceback" not in srv.stderr()


def test_failures_in_one_connection_count_too(make_server, tmp_path):
    srv = serve(make_server, tmp_path, max_login_fails="5")
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        for _ in range(3):
            s.sendall(b"USER someone\r\nPASS wrong\r\n")
            assert f.readline().startswith(b"331")
            assert f.readline().startswith(b"530")
        s.sendall(b"NOOP\r\n")  # a session already in is not cut off by the ban
        assert f.readline().startswith(b"200")
    assert greeting(srv).startswith(b"421")


def test_a_ban_ends_by_itself(make_server, tmp_path):
    srv = serve(make_server, tmp_path, ban_seconds="2")
    for _ in range(3):
        fail_once(srv)
    assert greeting(srv).startswith(b"421")
    time.sleep(2.2)
    assert greeting(srv).startswith(b"220")
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.close()


def test_failures_outside_the_window_do_not_ban(make_server, tmp_path):
    srv = serve(make_server, tmp_path, ban_window="1")
    for _ in range(2):
        fail_once(srv)
    time.sleep(1.2)
    fail_once(srv)
    assert greeting(srv).startswith(b"220")


def test_ban_threshold_zero_is_off(make_server, tmp_path):
    srv = serve(make_server, tmp_path, ban_threshold="0")
    for _ in range(5):
        fail_once(srv)
    assert greeting(srv).startswith(b"220")
