"""Temporary bans in isolated mode: the broker counts failed logins in the
listener's table, the listener refuses banned addresses with a fixed 421, and
no process that parses client bytes has the table mapped (nor the zygote, which
forks them)."""

from __future__ import annotations

import ftplib
import os
import signal
import socket
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import start_server, stop_server
from .conftest import ids, session_processes, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20
BANNED = b"421 Too many failed logins from your address; try again later.\r\n"


@pytest.fixture
def banning(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("ibans")
    conf = write_conf(base, "delay_failed_login=0", "ban_threshold=3", "xferlog_enable=YES",
                      f"vsftpd_log_file={base / 'vsftpd.log'}")
    srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)
    srv.extra["log"] = base / "vsftpd.log"
    yield srv
    stop_server(srv)


def greeting(srv, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        return s.makefile("rb").readline()


def fail_once(srv) -> None:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("ftpw_alice", "not-her-password")
    ftp.close()


def shared_maps(pid: int) -> list[str]:
    """The ban table (anonymous shared memory) and its semaphore, as mapped in `pid`."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return [line for line in text.splitlines() if " rw-s " in line and ("/dev/zero" in line or "/dev/shm/sem." in line)]


def test_failed_logins_are_counted_and_the_listener_refuses(banning):
    for _ in range(2):
        fail_once(banning)
    assert greeting(banning).startswith(b"220")  # counted once per failure, not yet banned
    fail_once(banning)
    assert greeting(banning) == BANNED
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftplib.FTP(timeout=TIMEOUT).connect(banning.host, banning.port)
    # another address still logs in
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(banning.host, banning.port, source_address=("127.0.0.2", 0))
    ftp.login("ftpw_alice", "alice-pw-1")
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    lines = wait_for(lambda: [line for line in banning.extra["log"].read_text().splitlines() if "BAN:" in line])
    assert len(lines) == 1 and lines[0].endswith('BAN: Client "127.0.0.1", 600 seconds'), lines
    # the ban survives a SIGHUP re-read of the config
    os.kill(banning.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: "configuration re-read" in banning.stderr())
    assert greeting(banning) == BANNED
    assert banning.proc.poll() is None
    assert "Traceback" not in banning.stderr()


def test_workers_do_not_map_the_ban_table(banning, accounts):
    listener = banning.proc.pid
    assert len(shared_maps(listener)) == 2  # the table and its lock: the check sees them
    nobody = accounts["nobody"].pw_uid
    alice = accounts["alice"].pw_uid
    pre = socket.create_connection((banning.host, banning.port), timeout=TIMEOUT)
    post = ftplib.FTP(timeout=TIMEOUT)
    try:
        assert pre.makefile("rb").readline().startswith(b"220")
        post.connect(banning.host, banning.port, source_address=("127.0.0.2", 0))
        post.login("ftpw_alice", "alice-pw-1")
        workers = wait_for(lambda: sorted(
            (ids(p)[0][0], p) for p in session_processes(banning) if ids(p)[0][0] in (nobody, alice)))
        assert {uid for uid, _ in workers} == {nobody, alice}, workers
        for _uid, pid in workers:
            assert shared_maps(pid) == [], (pid, shared_maps(pid))
        assert shared_maps(zygote(banning)) == []  # what it forks starts without the table
        assert len(shared_maps(listener)) == 2  # the broker's, still mapped
    finally:
        pre.close()
        post.close()
