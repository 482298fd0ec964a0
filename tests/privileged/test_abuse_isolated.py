"""Abuse resistance in isolated mode (root listener+broker, unprivileged pre-login
processes and identity workers): timeouts before and after login, hostile input,
data-channel hijack, a SIGKILLed identity worker in the middle of a transfer."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import REPLY_START, Ctl, Prober, data_socket, recv_all, start_server, stop_server
from .conftest import holders, ids, session_processes, sessions_gone, socket_inode, write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
ALICE = ("ftpw_alice", "alice-pw-1")
BOB = ("ftpw_bob", "bob-pw-2")
BIG_SIZE = 48 * 1024 * 1024


def serve(tmp_path_factory, accounts, *lines: str):
    base = tmp_path_factory.mktemp("iabuse")
    conf = write_conf(base, "write_enable=YES", "delay_failed_login=0", "ban_threshold=0", "max_per_ip=200", *lines)
    return start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)


@pytest.fixture
def iso(tmp_path_factory, accounts):
    srv = serve(tmp_path_factory, accounts, "data_connection_timeout=2")
    yield srv
    stop_server(srv)


@pytest.fixture
def big_file(accounts):
    home = Path(accounts["alice"].pw_dir)
    path = home / "abuse-big.bin"
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    os.chown(path, accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path, digest
    path.unlink(missing_ok=True)


def no_traceback(srv) -> None:
    err = srv.stderr()
    assert "Traceback" not in err, err[-3000:]


def test_idle_timeouts_in_both_workers(tmp_path_factory, accounts, session_isolation):
    srv = serve(tmp_path_factory, accounts, "idle_session_timeout=2")
    try:
        pre = Ctl(srv.host, srv.port)  # the nopriv pre-login worker reads it
        post = Ctl(srv.host, srv.port).login(*ALICE)  # the post-login worker as alice
        started = time.monotonic()
        assert pre.reply() == b"421 Timeout.\r\n"
        assert post.reply() == b"421 Timeout.\r\n"
        assert time.monotonic() - started < 6
        assert pre.closed(3) and post.closed(3)
        assert wait_for(lambda: not sessions_gone(srv, session_isolation), timeout=10), session_processes(srv)
        no_traceback(srv)
    finally:
        stop_server(srv)


def test_hostile_input_before_and_after_login(iso, session_isolation):
    listener = iso.proc.pid
    with Prober(iso, "hostile input, isolated mode", user=ALICE[0], password=ALICE[1]):
        for login in (False, True):
            ctl = Ctl(iso.host, iso.port)
            if login:
                ctl.login(*ALICE)
            assert ctl.cmd(b"A" * 5000 + b"\r\n").startswith(b"500")
            assert ctl.cmd(b"NO\x00OP\r\n").startswith(b"501")
            assert ctl.cmd(b"NOOP\rPWD\r\n").startswith(b"501")
            assert ctl.cmd(b"\xff\xf4\xff\xf2NOOP\r\n").startswith(b"200")
            assert ctl.cmd(b"CWD \xff\xfe\xc3\x28\r\n")[:1] == b"5"
            answers = [ctl.cmd(b"BOGUS\r\n") for _ in range(20)]
            assert all(REPLY_START.match(a) for a in answers)
            assert answers[-1] == b"500 Too many errors.\r\n"
            assert ctl.closed(3)
        flood = Ctl(iso.host, iso.port)
        flood.sock.sendall(os.urandom(1 << 20))
        assert flood.closed(5)
    assert iso.proc.poll() is None and listener == iso.proc.pid
    assert wait_for(lambda: not sessions_gone(iso, session_isolation), timeout=10), session_processes(iso)
    no_traceback(iso)


def test_data_channel_hijack_is_refused(iso, accounts):
    (Path(accounts["alice"].pw_dir) / "mine.txt").write_text("alice's file\n")
    ctl = Ctl(iso.host, iso.port).login(*ALICE)
    trap = socket.socket()
    trap.bind(("127.0.0.2", 0))
    trap.listen(1)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    for line in (f"PORT 127,0,0,2,{port >> 8},{port & 255}", f"EPRT |1|127.0.0.2|{port}|",
                 "PORT 127,0,0,1,0,21", "EPRT |1|127.0.0.1|22|"):
        assert ctl.cmd(line).startswith(b"500"), line
    assert ctl.cmd("RETR mine.txt").startswith(b"425")
    with pytest.raises(socket.timeout):
        trap.accept()
    trap.close()
    # passive theft from another address
    host, pport = ctl.pasv()
    thief = data_socket(host, pport, source="127.0.0.2")
    real = data_socket(host, pport)
    ctl.send("RETR mine.txt")
    assert ctl.reply().startswith(b"150")
    assert recv_all(real) == b"alice's file\n"
    assert ctl.reply().startswith(b"226")
    try:
        assert recv_all(thief) == b""
    except ConnectionResetError:
        pass
    thief.close()
    real.close()
    assert ctl.cmd("NOOP").startswith(b"200")
    no_traceback(iso)


def test_stalled_download_426_in_the_post_login_worker(iso, big_file):
    ctl = Ctl(iso.host, iso.port).login(*ALICE)
    assert ctl.cmd("TYPE I").startswith(b"200")
    host, port = ctl.pasv()
    d = data_socket(host, port, rcvbuf=4096)
    ctl.send(f"RETR {big_file[0].name}")
    assert ctl.reply().startswith(b"150")
    d.recv(1000)
    started = time.monotonic()
    final = ctl.reply()
    assert final.startswith(b"426"), final
    assert time.monotonic() - started < 10
    d.close()
    assert ctl.cmd("NOOP").startswith(b"200")


def test_sigkill_of_an_identity_worker_mid_transfer_spares_the_other_sessions(iso, big_file, accounts,
                                                                               session_isolation):
    """Three downloads: the victim's, another of alice's, one of bob's.  The worker serving the
    victim is killed: the victim's session ends, and so does alice's other one exactly when the
    two share that worker (identity setting); every other download finishes byte-exact."""
    path, digest = big_file
    bobs = Path(accounts["bob"].pw_dir) / path.name
    shutil.copyfile(path, bobs)
    os.chown(bobs, accounts["bob"].pw_uid, accounts["bob"].pw_gid)
    alice_uid = accounts["alice"].pw_uid

    def start(source: str, cred: tuple[str, str]) -> tuple[Ctl, socket.socket]:
        ctl = Ctl(iso.host, iso.port, source=source).login(*cred)
        assert ctl.cmd("TYPE I").startswith(b"200")
        host, port = ctl.pasv()
        d = data_socket(host, port, source=source, rcvbuf=65536)
        ctl.send(f"RETR {path.name}")
        assert ctl.reply().startswith(b"150")
        return ctl, d

    try:
        victim_ctl, victim_data = start("127.0.0.1", ALICE)
        sibling_ctl, sibling_data = start("127.0.0.2", ALICE)
        bob_ctl, bob_data = start("127.0.0.3", BOB)
        heads = {name: d.recv(1 << 16) for name, d in (("sibling", sibling_data), ("bob", bob_data))}
        victim_data.recv(1 << 16)
        workers = [p for p in session_processes(iso) if ids(p)[0][0] == alice_uid]
        assert len(workers) == (1 if session_isolation == "identity" else 2), workers
        (victim,) = [p for p in workers if holders(socket_inode(victim_ctl.sock), [p])]
        shared = victim in holders(socket_inode(sibling_ctl.sock), workers)
        assert shared == (session_isolation == "identity")
        os.kill(victim, signal.SIGKILL)
        survivors = [("bob", bob_ctl, bob_data)] + ([] if shared else [("sibling", sibling_ctl, sibling_data)])
        for name, ctl, data in survivors:
            h = hashlib.sha256(heads[name])
            size = len(heads[name])
            while chunk := data.recv(1 << 20):
                h.update(chunk)
                size += len(chunk)
            assert ctl.reply().startswith(b"226"), name
            assert (size, h.hexdigest()) == (BIG_SIZE, digest), name
            assert ctl.cmd("NOOP").startswith(b"200"), name
        # the killed worker's sessions are over: the client sees its connection end
        assert victim_ctl.closed(5)
        if shared:
            assert sibling_ctl.closed(5)
        assert wait_for(lambda: victim not in session_processes(iso), timeout=10), session_processes(iso)
        assert iso.proc.poll() is None
        fresh = Ctl(iso.host, iso.port).login(*ALICE)  # the killed identity logs in again
        assert fresh.cmd("NOOP").startswith(b"200")
        fresh.close()
        for c in (victim_ctl, sibling_ctl, bob_ctl):
            c.close()
        for d in (victim_data, sibling_data, bob_data):
            d.close()
    finally:
        bobs.unlink(missing_ok=True)
