"""seccomp_sandbox (priv/seccomp.py) in a real isolated server, and in pooled mode.

- the pre-login process, the TLS helper and the identity worker run under the filter
  (/proc/PID/status `Seccomp: 2`), and sessions work through it (listings, uploads,
  downloads, plain and PROT P); with seccomp_sandbox=NO they run without (0);
- a session process that dies of SIGSYS ends only its own session, and the broker logs it;
- pooled mode's worker process runs under the filter (the supervisor of several does not).
"""

from __future__ import annotations

import ctypes
import ftplib
import io
import os
import signal
from pathlib import Path

import pytest

from ftpwarden.priv import seccomp

from ..conftest import descendants, wait_for
from ..integration.conftest import Ctl, start_server, stop_server, tls_login
from .conftest import (
    conf_at,
    everyone,
    ftp_over,
    holders,
    inetd_session,
    live,
    session_processes,
    socket_inode,
    tls_lines,
    uid_of,
    write_conf,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)"),
              pytest.mark.skipif(not seccomp.SUPPORTED, reason="the allow-list is for x86_64 only")]
ALICE = ("ftpw_alice", "alice-pw-1")
BOB = ("ftpw_bob", "bob-pw-2")
TIMEOUT = 20
KILLED = "killed by the seccomp sandbox (SIGSYS)"


def seccomp_mode(pid: int) -> int:
    """/proc/PID/status Seccomp: 0 off, 2 a filter."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    raise AssertionError("no Seccomp line")


def one(pids: list[int], what: str) -> int:
    assert len(pids) == 1, (what, pids)
    return pids[0]


def server(base: Path, accounts, *lines: str):
    conf = write_conf(base, "delay_failed_login=0", "force_local_logins_ssl=NO", "force_local_data_ssl=NO",
                      "write_enable=YES", *tls_lines(base), *lines)
    return start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)


def prelogin_of(srv, ctl: Ctl, accounts) -> int:
    """The process holding this not-yet-logged-in connection: the pre-login process."""
    inode = socket_inode(ctl.sock)
    return one(wait_for(lambda: [p for p in holders(inode, everyone(srv)) if uid_of(p) == accounts["nobody"].pw_uid],
                        5), "pre-login process")


def identity_worker(srv, accounts, user: str = "alice") -> int:
    return one(wait_for(lambda: [p for p in live(session_processes(srv)) if uid_of(p) == accounts[user].pw_uid], 5),
               f"{user}'s identity worker")


def work(ftp: ftplib.FTP, name: str) -> None:
    """What a session does: a directory, an upload, a listing, a download, a rename, deletes."""
    data = os.urandom(300_000)
    name = f"seccomp-{name}-{os.urandom(4).hex()}"  # the accounts' homes outlive a test
    ftp.mkd(f"{name}.d")
    ftp.storbinary(f"STOR {name}.d/f", io.BytesIO(data))
    assert any(line.endswith(" f") for line in _lines(ftp, f"LIST {name}.d"))
    assert ftp.nlst(f"{name}.d")
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}.d/f", got.write)
    assert got.getvalue() == data
    ftp.rename(f"{name}.d/f", f"{name}.d/g")
    ftp.delete(f"{name}.d/g")
    ftp.rmd(f"{name}.d")


def _lines(ftp: ftplib.FTP, cmd: str) -> list[str]:
    out: list[str] = []
    ftp.retrlines(cmd, out.append)
    return out


def plain_login(srv, user: tuple[str, str] = ALICE) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(*user)
    return ftp


def test_session_processes_run_under_the_filter_and_work(tmp_path, accounts):
    srv = server(tmp_path, accounts)
    ctl = None
    try:
        ctl = Ctl(srv.host, srv.port)
        assert seccomp_mode(prelogin_of(srv, ctl, accounts)) == 2
        ftp = tls_login(srv, user=ALICE[0], password=ALICE[1], timeout=TIMEOUT)
        try:
            helper = one(holders(socket_inode(ftp.sock), everyone(srv)), "TLS helper")
            assert uid_of(helper) == accounts["nobody"].pw_uid
            assert seccomp_mode(helper) == 2
            assert seccomp_mode(identity_worker(srv, accounts)) == 2
            work(ftp, "tls")  # every PROT P transfer is relayed by the helper, under its list
        finally:
            ftp.quit()
        plain = plain_login(srv)
        try:
            work(plain, "plain")
            plain.set_pasv(False)  # active mode: the broker connects, the worker only receives the socket
            assert plain.nlst()
        finally:
            plain.quit()
        assert KILLED not in srv.stderr()
    finally:
        if ctl is not None:
            ctl.sock.close()
        stop_server(srv)


def test_without_seccomp_sandbox_no_filter(tmp_path, accounts):
    srv = server(tmp_path, accounts, "seccomp_sandbox=NO")
    ctl = None
    try:
        ctl = Ctl(srv.host, srv.port)
        assert seccomp_mode(prelogin_of(srv, ctl, accounts)) == 0
        ftp = plain_login(srv)
        try:
            assert seccomp_mode(identity_worker(srv, accounts)) == 0
        finally:
            ftp.quit()
    finally:
        if ctl is not None:
            ctl.sock.close()
        stop_server(srv)


def test_a_session_process_killed_by_sigsys_ends_only_its_session(tmp_path, accounts):
    """A real kill by the filter needs a call off the list, which no client can make
    happen (that is the point); so SIGSYS is sent with kill(2) here, which the broker
    cannot tell from the kernel's (tests/unit/test_seccomp.py has the real kills).
    isolate=NO: with it each session process is the init of its own PID namespace, which
    kill(2) cannot end with a signal it has no handler for; the kernel's seccomp kill
    can (test_a_real_kill_ends_the_init_of_a_pid_namespace)."""
    srv = server(tmp_path, accounts, "isolate=NO")
    alice = plain_login(srv)
    try:
        # a pre-login process: its client sees the connection end
        ctl = Ctl(srv.host, srv.port)
        victim = prelogin_of(srv, ctl, accounts)
        os.kill(victim, signal.SIGSYS)
        assert ctl.file.readline() == b""
        ctl.sock.close()
        assert wait_for(lambda: f"session process {victim} {KILLED}" in srv.stderr(), 10), srv.stderr()
        # bob's identity worker: bob's session ends, alice's (another process) goes on
        bob = plain_login(srv, BOB)
        worker = identity_worker(srv, accounts, "bob")
        os.kill(worker, signal.SIGSYS)
        with pytest.raises((EOFError, OSError, ftplib.Error)):
            for _ in range(50):  # the reply to a NOOP or the end of the connection, whichever comes
                bob.voidcmd("NOOP")
        bob.close()
        assert wait_for(lambda: f"session process {worker} {KILLED}" in srv.stderr(), 10), srv.stderr()
        work(alice, "after")
        again = plain_login(srv)  # new sessions start as before
        again.quit()
    finally:
        alice.quit()
        stop_server(srv)
    assert srv.proc.returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_pooled_workers_run_under_the_filter(tmp_path, workers):
    """pooled=YES (as root): the worker process, or each of several, has the filter after its
    listeners are bound; a supervisor of several does not (it reads no client byte)."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n")
    srv = start_server([str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", str(workers),
                        "--user", "alice:secret", "--write", "-o", "delay_failed_login=0"], root, tmp_path)
    try:
        if workers == 1:
            serving = [srv.proc.pid]
        else:
            serving = wait_for(lambda: (kids := live(session_processes(srv))) and len(kids) == workers and kids, 10)
            assert serving, "no pooled workers"
            assert seccomp_mode(srv.proc.pid) == 0
        assert wait_for(lambda: all(seccomp_mode(p) == 2 for p in serving), 10), [seccomp_mode(p) for p in serving]
        for _ in range(workers * 2):  # connections land on either worker
            ftp = plain_login(srv, ("alice", "secret"))
            try:
                work(ftp, f"pooled{_}")
                ftp.set_pasv(False)
                assert ftp.nlst()
            finally:
                ftp.quit()
        assert all(p in live(serving) for p in serving), "a pooled worker died"
        if workers > 1:  # one killed (kill(2) standing in for the filter): said, and replaced
            os.kill(serving[0], signal.SIGSYS)
            assert wait_for(lambda: f"worker {serving[0]} ended (-31, {KILLED}); starting a new one"
                            in srv.stderr(), 10), srv.stderr()
            ftp = plain_login(srv, ("alice", "secret"))
            ftp.quit()
    finally:
        stop_server(srv)


def test_a_real_kill_ends_the_init_of_a_pid_namespace():
    """isolate=YES makes each session process the init of a PID namespace, which signals
    without a handler do not reach; the filter's kill (SECCOMP_RET_KILL_PROCESS) does."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        code = 1
        try:
            signal.alarm(20)
            if ctypes.CDLL(None, use_errno=True).unshare(0x20000000) != 0:  # CLONE_NEWPID
                os._exit(3)
            child = os.fork()
            if child == 0:  # pid 1 of the new namespace
                os.write(w, str(os.getpid()).encode())
                seccomp.install("prelogin")
                os.execv("/bin/true", ["true"])
            code = 0 if os.waitpid(child, 0)[1] == signal.SIGSYS else 2
        finally:
            os._exit(code)
    try:
        assert os.read(r, 16) == b"1"
        assert os.waitpid(middle, 0)[1] == 0
    finally:
        os.close(r)
        os.close(w)


def test_inetd_mode_session_processes_run_under_the_filter(tmp_path, accounts):
    """listen=NO: the pre-login process and, after login, the session's post-login process."""
    anon = tmp_path / "anon"
    anon.mkdir(mode=0o755)
    (anon / "f.txt").write_text("inetd\n")
    os.chmod(anon / "f.txt", 0o644)
    conf = conf_at(tmp_path, "listen_ipv6=NO", "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES")
    with inetd_session(conf) as (proc, client):
        def running_as(user: str) -> list[int]:
            return [p for p in live(descendants(proc.pid)) if uid_of(p) == accounts[user].pw_uid]

        ftp = ftp_over(client, TIMEOUT)
        assert ftp.welcome.startswith("220")
        assert seccomp_mode(one(wait_for(lambda: running_as("nobody"), 5), "pre-login process")) == 2
        ftp.login()
        assert seccomp_mode(one(wait_for(lambda: running_as("ftp"), 5), "post-login process")) == 2
        buf = io.BytesIO()
        ftp.retrbinary("RETR f.txt", buf.write)
        assert buf.getvalue() == b"inetd\n"
        assert ftp.nlst() == ["f.txt"]
        ftp.quit()
        assert proc.wait(10) == 0
