"""Isolated mode: stopping the server, or losing the zygote, ends every session (issue 18.3).

Process trees are read from /proc/PID/stat (this kernel has no .../children
files); every PID checked was recorded while the server ran.
"""

from __future__ import annotations

import ftplib
import os
import pwd
import signal
import socket
import time
from pathlib import Path

import pytest

from ftpwarden.priv.creds import CredentialError, drop_privileges, set_parent_death_signal

from ..conftest import proc_stat, process_tree, wait_for
from ..integration.conftest import Server, start_server, stop_server, tls_login
from .conftest import is_checker, is_zygote, tls_lines, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20
END_BOUND = 8.0  # seconds for every session to end (the listener allows its children 5 s)


# ---------------------------------------------------------------- /proc

def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if (st := proc_stat(p)) is not None and st[1] != "Z"]


def by_cmdline(marker: str) -> list[int]:
    """Every live process whose command line names `marker` (the test's config file):
    a session re-parented to init is found this way too."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and (st := proc_stat(int(name))) is not None and st[1] != "Z":
            found.append(int(name))
    return found


def kill_all(pids: list[int]) -> None:
    """Clean-up after a failure: only the PIDs this test recorded."""
    for p in alive(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def server(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("shutdown")
    conf = write_conf(base, "delay_failed_login=0", *tls_lines(base), "allow_anon_ssl=YES",
                      "force_local_logins_ssl=NO", "force_local_data_ssl=NO", name="shutdown.conf")
    srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)
    srv.extra["conf"] = str(conf)
    recorded: list[int] = [srv.proc.pid]
    srv.extra["recorded"] = recorded
    yield srv
    stop_server(srv)
    kill_all(recorded + by_cmdline(str(conf)))


def plain_login(srv: Server) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login("ftpw_alice", "alice-pw-1")
    return ftp


def alice_tls_login(srv: Server) -> ftplib.FTP_TLS:
    return tls_login(srv, user="ftpw_alice", password="alice-pw-1", timeout=TIMEOUT)


def sessions_ready(srv: Server, n_procs: int) -> list[int]:
    """The listener's tree once it has `n_procs` session processes (its password checker
    and the zygote not counted, but recorded too); recorded for clean-up."""
    def sessions(t: list[int]) -> list[int]:
        return [p for p in alive(t) if not is_checker(p) and not is_zygote(p)]

    def enough() -> list[int]:
        t = process_tree(srv.proc.pid)
        return t if len(sessions(t)) >= n_procs else []
    pids = wait_for(enough, 10)
    assert len(sessions(pids)) >= n_procs, pids
    srv.extra["recorded"].extend(pids)
    return pids


def ends_within(ftp: ftplib.FTP, bound: float) -> str:
    """The client's view: the next reply after the server stops, within `bound` seconds.
    Returns "421 ..." or "EOF"; fails if the session still answers."""
    ftp.sock.settimeout(bound)
    try:
        reply = ftp.getline()
    except (EOFError, ConnectionError, OSError) as e:
        if isinstance(e, socket.timeout):
            pytest.fail(f"the session was still open after {bound}s")
        return "EOF"
    if not reply:
        return "EOF"
    assert reply.startswith("421"), reply
    return reply


# ---------------------------------------------------------------- tests

def test_sigterm_to_the_listener_ends_every_session(server, session_isolation):
    plain = plain_login(server)
    tls = alice_tls_login(server)
    waiting = socket.create_connection((server.host, server.port), timeout=TIMEOUT)  # before login
    try:
        assert waiting.recv(1024).startswith(b"220")
        assert plain.sendcmd("NOOP").startswith("200")
        assert tls.sendcmd("NOOP").startswith("200")
        # alice's identity worker (one per session with session_isolation=process); TLS helper; pre-login
        pids = sessions_ready(server, 3 if session_isolation == "identity" else 4)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # what a client sees: a 421 (there is time to say it), then the end
        assert ends_within(plain, END_BOUND).startswith("421")
        assert ends_within(tls, END_BOUND).startswith("421")
        waiting.settimeout(END_BOUND)
        rest = b""
        while chunk := waiting.recv(1024):
            rest += chunk
        assert rest in (b"", b"421 Server shutting down.\r\n"), rest
        assert time.monotonic() - started < END_BOUND
        server.proc.wait(END_BOUND)
        left = wait_for(lambda: not alive(pids) and not by_cmdline(server.extra["conf"]), END_BOUND)
        assert left, f"still running: {alive(pids)} {by_cmdline(server.extra['conf'])}"
    finally:
        for c in (plain, tls, waiting):
            c.close()


def test_sigkill_of_the_zygote_ends_the_listener_and_every_session(server, session_isolation):
    """A new zygote forked from the listener would no longer be clean: the listener
    exits 1 (systemd starts the service again), and every process of its sessions
    ends with it (death signals): nothing keeps a client connection."""
    plain = plain_login(server)
    tls = alice_tls_login(server)
    waiting = socket.create_connection((server.host, server.port), timeout=TIMEOUT)  # before login
    try:
        assert waiting.recv(1024).startswith(b"220")
        pids = sessions_ready(server, 3 if session_isolation == "identity" else 4)
        os.kill(zygote(server), signal.SIGKILL)
        assert server.proc.wait(END_BOUND) == 1
        for ftp in (plain, tls):
            ends_within(ftp, END_BOUND)  # a 421 or the end of the connection, in time
        waiting.settimeout(END_BOUND)
        rest = b""
        while chunk := waiting.recv(1024):
            rest += chunk
        assert rest in (b"", b"421 Server shutting down.\r\n"), rest
        left = wait_for(lambda: not alive(pids) and not by_cmdline(server.extra["conf"]), END_BOUND)
        assert left, f"still running: {alive(pids)} {by_cmdline(server.extra['conf'])}"
        assert "Traceback" not in server.stderr()
    finally:
        for c in (plain, tls, waiting):
            c.close()


def test_sigkill_of_the_listener_ends_the_sessions(server):
    plain = plain_login(server)
    try:
        pids = sessions_ready(server, 1)  # alice's identity worker
        server.proc.kill()  # no handler runs: the zygote and its children learn it from their death signals
        server.proc.wait(5)
        assert ends_within(plain, END_BOUND).startswith("421")
        assert wait_for(lambda: not alive(pids), END_BOUND), f"orphaned: {alive(pids)}"
    finally:
        plain.close()


def test_death_signal_survives_the_privilege_drop():
    """creds.drop_privileges keeps the parent-death signal the kernel clears on setresuid."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "zygote": forks a worker, waits for its drop, then dies without a word
        try:
            os.close(r)
            me = os.getpid()
            mr, mw = os.pipe()
            worker = os.fork()
            if worker == 0:
                try:
                    set_parent_death_signal(parent=me)
                    drop_privileges(nobody.pw_uid, nobody.pw_gid)
                    os.write(mw, b"dropped")
                    time.sleep(30)
                finally:
                    os._exit(0)
            os.close(mw)
            said = os.read(mr, 16)
            os.write(w, f"{worker} {said.decode()}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.readline().decode()
    os.waitpid(middle, 0)
    worker_text, said = line.split()
    worker = int(worker_text)
    assert said == "dropped"
    try:
        assert wait_for(lambda: not alive([worker]), 5), "the worker outlived its parent"
    finally:
        kill_all([worker])


def test_a_parent_gone_before_the_signal_is_armed_is_an_error():
    with pytest.raises(CredentialError):
        set_parent_death_signal(parent=os.getppid() + 1_000_000)
    set_parent_death_signal(0)  # back to none for this test process


def test_pooled_workers_end_with_their_supervisor(tmp_path):
    """Pooled mode, several worker processes: SIGKILL of the supervisor ends them too."""
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server([str(root), "--port", "0", "--workers", "2"], root, tmp_path)
    pids: list[int] = []
    try:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(srv.host, srv.port)
        ftp.login()
        pids = wait_for(lambda: t if len(alive(t := process_tree(srv.proc.pid))) >= 2 else [], 10)
        assert len(pids) == 2, pids
        srv.proc.kill()
        srv.proc.wait(5)
        assert wait_for(lambda: not alive(pids), END_BOUND), f"orphaned pooled workers: {alive(pids)}"
        ftp.sock.settimeout(END_BOUND)
        with pytest.raises((EOFError, ConnectionError, OSError)):
            ftp.sendcmd("NOOP")
        ftp.close()
    finally:
        kill_all(pids)
        stop_server(srv)
