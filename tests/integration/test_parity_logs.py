"""vsftpd's remaining log and process-model options (issue 12) on a real pooled server:
no_log_lock, wc_logs_enable, log_die, ftp_enable, run_as_launching_user."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

import pytest

from ..conftest import wait_for
from .conftest import start_server, stop_server
from .test_logs import ALICE_PW, connect, ftpwarden, lines, serve
from .test_logs import site as site  # a fixture, used by name

TIMEOUT = 20


def _connected(log: Path) -> bool:
    return any("CONNECT: Client" in line for line in lines(log))


@pytest.mark.parametrize("no_log_lock", ["NO", "YES"])
def test_log_lines_wait_for_the_file_lock(make_server, site, no_log_lock):
    log = site.logs / "vsftpd.log"
    srv = serve(make_server, site, xferlog_enable="YES", no_log_lock=no_log_lock)
    with open(log, "ab") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)  # another writer (this test's process) holds the log
        client = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
        try:
            if no_log_lock == "YES":  # vsftpd's workaround: written without a lock
                assert wait_for(lambda: _connected(log), 5)
                return
            time.sleep(0.4)
            assert not _connected(log)  # the server waits for the lock...
            assert wait_for(lambda: _connected(log), 5)  # ...but at most LOCK_WAIT (1 s): never stalls
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
            client.close()


@pytest.mark.parametrize("wide", ["NO", "YES"])
def test_wc_logs_enable(make_server, site, wide):
    log = site.logs / "vsftpd.log"
    srv = serve(make_server, site, xferlog_enable="YES", wc_logs_enable=wide)
    with connect(srv) as ftp:  # ftplib speaks UTF-8
        ftp.login("alice", ALICE_PW)
        ftp.mkd("caf\u00e9\u202e")  # é, then a right-to-left override (a format character)
    assert wait_for(lambda: any("OK MKDIR" in line for line in lines(log)), TIMEOUT)
    (line,) = [x for x in lines(log) if "OK MKDIR" in x]
    if wide == "YES":  # UTF-8 aware: é kept, the override (not printable) replaced
        assert line.endswith('"/caf\u00e9?"'), line
    else:  # vsftpd's default: every byte of a non-ASCII character is a '?' (é: 2, U+202E: 3)
        assert line.endswith('"/caf?????"'), line
    assert "\u202e" not in log.read_text()


def test_log_die_sends_a_fatal_start_up_error_to_syslog(tmp_path):
    sock_path = tmp_path / "log.sock"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(sock_path))
    syslog.settimeout(0.5)
    try:
        for log_die in ("NO", "YES"):
            conf = tmp_path / f"die-{log_die}.conf"
            conf.write_text(f"listen=YES\nlisten_port=0\nlisten_address=127.0.0.1\npooled=YES\n"
                            f"anon_root={tmp_path / 'missing'}\nlog_die={log_die}\nsyslog_socket={sock_path}\n")
            r = ftpwarden("serve", "--config", str(conf))
            assert r.returncode == 2 and "anon_root:" in r.stderr.decode()
            try:
                got = syslog.recv(8192).decode()
            except TimeoutError:
                got = ""
            if log_die == "NO":
                assert got == ""
            else:  # <facility ftp (11) * 8 + LOG_ERR (3)>
                assert got.startswith("<91>") and f"{conf}:5: anon_root: " in got, got
    finally:
        syslog.close()


def test_ftp_enable_no_leaves_nothing_to_serve(tmp_path):
    conf = tmp_path / "noftp.conf"
    conf.write_text(f"listen=YES\nanon_root={tmp_path}\nftp_enable=NO\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2
    assert f"{conf}:3: ftp_enable=NO leaves nothing to serve" in r.stderr.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, every start is pooled mode already")
def test_run_as_launching_user_runs_pooled_mode_as_root(tmp_path):
    (tmp_path / "pub").mkdir()
    conf = tmp_path / "launch.conf"
    conf.write_text(f"listen=YES\nlisten_port=0\nlisten_address=127.0.0.1\nanon_root={tmp_path / 'pub'}\n"
                    "worker_processes=1\nrun_as_launching_user=YES\n")
    assert "serve would run pooled mode" in ftpwarden("check-config", str(conf)).stdout.decode()
    srv = start_server(["--config", str(conf)], tmp_path / "pub", tmp_path)
    try:
        with connect(srv) as ftp:
            ftp.login()
            assert ftp.nlst() == []
        assert "run_as_launching_user=YES as root: pooled mode" in srv.stderr()
        # no zygote, no pre-login process: the session ran in the serving process, as its user
        kids = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
        assert not [k for k in kids if Path(f"/proc/{k}/comm").read_text().startswith("ftpwarden-")]
    finally:
        stop_server(srv)
