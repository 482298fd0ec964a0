"""session_support: a local (PAM) user's login gets a utmp record, wtmp lines and a PAM session.

The records are the system's (/var/run/utmp, /var/log/wtmp), read here as struct
utmpx; each test looks only at its own lines ("ftpd" + the holder's pid).  The PAM
service is a test one: ftpwarden's, plus pam_exec on the session that appends what
it is called for to a file.  With session_support=NO nothing is written.
"""

from __future__ import annotations

import ftplib
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import proc_stat, wait_for
from ..integration.conftest import Server, start_server, stop_server
from .conftest import ftp_over, inetd_session, loopback_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="utmp, wtmp and PAM sessions need root")

UTMP, WTMP = Path("/var/run/utmp"), Path("/var/log/wtmp")
RECORD = struct.Struct("<hxxi32s4s32s256shhiii4i20s")  # glibc's struct utmpx on x86-64 / arm64: 384 bytes
USER_PROCESS, DEAD_PROCESS = 7, 8
ALICE = ("ftpw_alice", "alice-pw-1")
TIMEOUT = 10


def records(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    out = []
    for i in range(0, len(data) - RECORD.size + 1, RECORD.size):
        f = RECORD.unpack_from(data, i)
        out.append({"type": f[0], "pid": f[1], "line": f[2].rstrip(b"\0").decode(), "user": f[4].rstrip(b"\0").decode(),
                    "host": f[5].rstrip(b"\0").decode(), "time": f[9] + f[10] / 1e6})
    return out


def ours(path: Path, since: float) -> list[dict]:
    """This server's records (its lines) written since `since`."""
    return [r for r in records(path) if r["line"].startswith("ftpd") and r["time"] >= since]


@pytest.fixture
def hook(tmp_path: Path):
    """(PAM service name, the file its session hook appends to); the service is removed after."""
    log = tmp_path / "pam-session.log"
    script = tmp_path / "pam-session-hook"
    script.write_text(f'#!/bin/sh\necho "$PAM_TYPE $PAM_USER $PAM_RHOST $PAM_TTY" >> {log}\n')
    os.chmod(script, 0o755)
    name = f"ftpwarden-sessiontest-{os.getpid()}"
    service = Path("/etc/pam.d") / name
    service.write_text(f"@include ftpwarden\nsession required pam_exec.so {script}\n")
    if not UTMP.exists():  # a container without a login since boot: what systemd-update-utmp makes
        UTMP.touch(mode=0o664)
        os.chown(UTMP, 0, 43)
    yield name, log
    service.unlink()


@pytest.fixture
def server(tmp_path: Path, accounts):
    started: list[Server] = []

    def start(service: str, *lines: str) -> Server:
        conf = loopback_conf(tmp_path, "anonymous_enable=NO", "local_enable=YES", "chroot_local_user=YES",
                             f"pam_service_name={service}", "allow_writeable_chroot=YES", "delay_failed_login=0",
                             *lines)
        srv = start_server(["--config", str(conf)], tmp_path, tmp_path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)
        assert "Traceback" not in srv.stderr(), srv.stderr()[-3000:]


def login(srv: Server) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(*ALICE)
    return ftp


def hook_lines(log: Path) -> list[str]:
    """What the PAM session hook saw: "TYPE USER TTY" (PAM_RHOST, a name or the address, left out)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [" ".join(line.split()[i] for i in (0, 1, 3)) for line in lines]


def test_login_and_logout_are_recorded(server, hook):
    service, log = hook
    since = time.time()
    srv = server(service, "session_support=YES")
    ftp = login(srv)
    live = wait_for(lambda: [r for r in ours(UTMP, since) if r["type"] == USER_PROCESS], TIMEOUT)
    assert len(live) == 1, ours(UTMP, since)
    rec = live[0]
    assert (rec["user"], rec["host"], rec["line"]) == ("ftpw_alice", "127.0.0.1", f"ftpd{rec['pid']}")
    holder = rec["pid"]
    status = Path(f"/proc/{holder}/status").read_text()
    assert status.count("\t0\t0\t0\t0") == 2  # root: it writes the records
    assert Path(f"/proc/{holder}/comm").read_text().strip() == "ftpwarden-rec"
    assert proc_stat(holder)[0] == srv.proc.pid  # the broker (a subreaper) is its parent: it reaps it
    who = subprocess.run(["who"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    assert any(line.split()[:2] == ["ftpw_alice", rec["line"]] for line in who.splitlines()), who
    assert hook_lines(log) == ["open_session ftpw_alice ftp"]
    assert ftp.pwd() == "/"
    ftp.quit()
    assert wait_for(lambda: not os.path.exists(f"/proc/{holder}"), TIMEOUT), "the holder outlived the session"
    assert [r["type"] for r in ours(UTMP, since) if r["line"] == rec["line"]] == [DEAD_PROCESS]
    assert [(r["type"], r["user"]) for r in ours(WTMP, since) if r["line"] == rec["line"]] == [
        (USER_PROCESS, "ftpw_alice"), (DEAD_PROCESS, "")]
    assert hook_lines(log) == ["open_session ftpw_alice ftp", "close_session ftpw_alice ftp"]
    last = subprocess.run(["last", "-f", str(WTMP), "-w"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    assert any(line.split()[:2] == ["ftpw_alice", rec["line"]] for line in last.splitlines()), last


def test_server_stop_ends_the_session_records(server, hook):
    service, log = hook
    since = time.time()
    srv = server(service, "session_support=YES")
    ftp = login(srv)
    assert wait_for(lambda: hook_lines(log), TIMEOUT)
    (rec,) = ours(UTMP, since)
    stop_server(srv)
    ftp.close()
    assert wait_for(lambda: len(hook_lines(log)) == 2, TIMEOUT), hook_lines(log)
    assert hook_lines(log)[1] == "close_session ftpw_alice ftp"
    assert [(r["type"], r["line"]) for r in ours(UTMP, since)] == [(DEAD_PROCESS, rec["line"])]


def test_a_refused_pam_session_refuses_the_login(server, hook, tmp_path):
    service, _log = hook
    Path("/etc/pam.d", service).write_text("@include ftpwarden\nsession required pam_deny.so\n")
    since = time.time()
    srv = server(service, "session_support=YES")
    with pytest.raises(ftplib.error_perm, match="530"):
        login(srv)
    assert [r["type"] for r in ours(UTMP, since)] == [DEAD_PROCESS]  # written, then ended: vsftpd's order


def test_nothing_without_session_support(server, hook):
    service, log = hook
    since = time.time()
    srv = server(service)
    ftp = login(srv)
    assert ftp.pwd() == "/"
    ftp.quit()
    time.sleep(0.5)
    assert ours(UTMP, since) == [] and ours(WTMP, since) == []
    assert hook_lines(log) == []


def test_anonymous_gets_no_records(tmp_path, hook, accounts):
    service, log = hook
    anon = tmp_path / "anon"
    anon.mkdir(mode=0o755)
    conf = loopback_conf(tmp_path, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                         "local_enable=YES", f"pam_service_name={service}", "session_support=YES",
                         "delay_failed_login=0")
    since = time.time()
    srv = start_server(["--config", str(conf)], anon, tmp_path)
    try:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(srv.host, srv.port)
        ftp.login()
        assert ftp.pwd() == "/"
        ftp.quit()
    finally:
        stop_server(srv)
    assert ours(UTMP, since) == [] and ours(WTMP, since) == [] and hook_lines(log) == []


def test_inetd_mode(tmp_path, hook, accounts, session_isolation):
    """listen=NO: the session's own checker forks the holder; the session's end (its
    process exits) ends the records (inetd mode has no identity workers: both runs see the same)."""
    service, log = hook
    conf = loopback_conf(tmp_path, "listen_ipv6=NO", "anonymous_enable=NO", "local_enable=YES",
                         "chroot_local_user=YES", f"pam_service_name={service}", "allow_writeable_chroot=YES",
                         "session_support=YES")
    since = time.time()
    with inetd_session(conf, stderr=subprocess.DEVNULL) as (proc, client):
        ftp = ftp_over(client, TIMEOUT)
        ftp.login(*ALICE)
        (rec,) = wait_for(lambda: ours(UTMP, since), TIMEOUT) or [None]
        assert rec is not None and (rec["type"], rec["user"]) == (USER_PROCESS, "ftpw_alice")
        assert hook_lines(log) == ["open_session ftpw_alice ftp"]
        ftp.quit()
        assert proc.wait(TIMEOUT) == 0
        assert wait_for(lambda: len(hook_lines(log)) == 2, TIMEOUT), hook_lines(log)
        assert [r["type"] for r in ours(UTMP, since)] == [DEAD_PROCESS]
