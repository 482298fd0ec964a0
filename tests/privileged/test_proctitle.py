"""setproctitle_enable in isolated mode: each process's status in its title, as vsftpd shows it.

/proc/PID/cmdline is what `ps` shows.  The listener says LISTENER; a pre-login
process "IP: not logged in"; a TLS session's helper "IP/user: SSL handler".  With
session_isolation=process the session's process shows vsftpd's "IP/user: IDLE" and
the command under way ("IP/user: RETR big.bin"); a shared identity worker shows
whose sessions it hosts and how many.  Off (the default), nothing changes.
"""

from __future__ import annotations

import ftplib
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import descendants, wait_for
from ..integration.conftest import SPARSE_SIZE, Ctl, Server, start_server, stop_server, tls_login
from .conftest import comm, everyone, ftp_over, inetd_session, loopback_conf, tls_lines

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root")

TIMEOUT = 10
ALICE = ("ftpw_alice", "alice-pw-1")


def title(pid: int) -> str:
    """The title `ps` shows; "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()
    except OSError:
        return ""


def titles(srv: Server) -> list[str]:
    return sorted(title(p) for p in everyone(srv))


def with_title(srv: Server, text: str) -> list[int]:
    return [p for p in everyone(srv) if title(p) == "ftpwarden: " + text]


@pytest.fixture
def server(tmp_path: Path, accounts):
    started: list[Server] = []

    def start(*lines: str) -> Server:
        anon = tmp_path / "anon"
        anon.mkdir(mode=0o755, exist_ok=True)
        with open(anon / "big.bin", "wb") as f:
            f.truncate(SPARSE_SIZE)
        os.chmod(anon / "big.bin", 0o644)
        conf = loopback_conf(tmp_path, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                             "local_enable=YES", "chroot_local_user=YES", "pam_service_name=ftpwarden",
                             "allow_writeable_chroot=YES", "delay_failed_login=0", *lines)
        srv = start_server(["--config", str(conf)], anon, tmp_path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)
        assert "Traceback" not in srv.stderr(), srv.stderr()[-3000:]


def login(srv: Server, user: str = "anonymous", password: str = "x@example.org") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(user, password)
    return ftp


def test_listener_and_pre_login(server):
    srv = server("setproctitle_enable=YES")
    assert title(srv.proc.pid) == "ftpwarden: LISTENER"
    assert wait_for(lambda: with_title(srv, "zygote"), TIMEOUT), titles(srv)
    waiting = Ctl(srv.host, srv.port)  # connected, greeted, not logged in
    try:
        (pid,) = wait_for(lambda: with_title(srv, "127.0.0.1: not logged in"), TIMEOUT) or [0]
        assert comm(pid) == "ftpwarden-login"  # the name stays: only the title changes
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=TIMEOUT)
        assert ps.stdout.strip() == "ftpwarden: 127.0.0.1: not logged in"
    finally:
        waiting.close()


def test_session_titles(server, session_isolation):
    srv = server("setproctitle_enable=YES")
    first, second = login(srv, *ALICE), login(srv, *ALICE)
    try:
        if session_isolation == "identity":
            assert wait_for(lambda: with_title(srv, "ftpw_alice: 2 sessions"), TIMEOUT), titles(srv)
            first.quit()
            assert wait_for(lambda: with_title(srv, "ftpw_alice: 1 session"), TIMEOUT), titles(srv)
        else:
            assert wait_for(lambda: len(with_title(srv, "127.0.0.1/ftpw_alice: IDLE")) == 2, TIMEOUT), titles(srv)
    finally:
        for ftp in (first, second):
            ftp.close()


def test_the_command_shows_only_in_a_process_of_its_own(server, session_isolation):
    """session_isolation=process: vsftpd's per-command title; a shared identity worker
    shows its session count and never one session's command."""
    own = session_isolation == "process"
    idle = "127.0.0.1/anonymous: IDLE" if own else "anonymous: 1 session"
    srv = server("setproctitle_enable=YES")
    ftp = login(srv)
    try:
        (pid,) = wait_for(lambda: with_title(srv, idle), TIMEOUT) or [0]
        ftp.voidcmd("TYPE I")
        data = ftp.transfercmd("RETR big.bin")  # a gigabyte nobody reads: the transfer stays under way
        try:
            busy = "127.0.0.1/anonymous: RETR big.bin" if own else idle
            assert wait_for(lambda: title(pid) == "ftpwarden: " + busy, TIMEOUT), title(pid)
            assert not any("RETR" in t for t in titles(srv)) or own, titles(srv)
        finally:
            data.close()
        with pytest.raises(ftplib.Error):
            ftp.voidresp()  # the transfer's end: 426, the data connection was closed
        assert wait_for(lambda: title(pid) == "ftpwarden: " + idle, TIMEOUT), title(pid)
        if not own:
            return
        try:
            ftp.sendcmd("PASS secret-after-login")  # post-login PASS: its argument never reaches the title
        except ftplib.Error:
            pass
        assert title(pid) in ("ftpwarden: 127.0.0.1/anonymous: PASS", "ftpwarden: 127.0.0.1/anonymous: IDLE")
    finally:
        ftp.close()


def test_tls_helper(server, tmp_path):
    srv = server("setproctitle_enable=YES", *tls_lines(tmp_path), "force_local_logins_ssl=NO",
                 "force_local_data_ssl=NO")
    ftp = tls_login(srv, user=ALICE[0], password=ALICE[1], timeout=TIMEOUT)
    try:
        assert wait_for(lambda: with_title(srv, "127.0.0.1/ftpw_alice: SSL handler"), TIMEOUT), titles(srv)
    finally:
        ftp.close()


def test_off_by_default(server):
    srv = server()
    ftp = login(srv)
    try:
        assert wait_for(lambda: len(everyone(srv)) >= 4, TIMEOUT)
        assert not any(t.startswith("ftpwarden: ") for t in titles(srv)), titles(srv)
        assert " serve " in title(srv.proc.pid)
    finally:
        ftp.close()


def test_inetd_mode(tmp_path, session_isolation):
    """listen=NO: the session's root monitor says "connected"; its post-login process is vsftpd's
    (inetd mode has no identity workers: both runs see the same)."""
    anon = tmp_path / "anon"
    anon.mkdir(mode=0o755)
    conf = loopback_conf(tmp_path, "listen_ipv6=NO", "anonymous_enable=YES", f"anon_root={anon}",
                         "no_anon_password=YES", "setproctitle_enable=YES")
    with inetd_session(conf, stderr=subprocess.DEVNULL) as (proc, client):
        ftp = ftp_over(client, TIMEOUT)
        assert wait_for(lambda: title(proc.pid) == "ftpwarden: 127.0.0.1: connected", TIMEOUT), title(proc.pid)
        ftp.login()

        def post_login() -> list[int]:
            return [p for p in descendants(proc.pid) if title(p) == "ftpwarden: 127.0.0.1/anonymous: IDLE"]
        assert wait_for(post_login, TIMEOUT), [title(p) for p in descendants(proc.pid)]
        ftp.quit()
        assert proc.wait(TIMEOUT) == 0
