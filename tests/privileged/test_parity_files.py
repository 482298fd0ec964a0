"""Issue 12's files and transfer options in isolated mode (root broker, identity workers),
as the real user ftpw_alice jailed in her home: the checks of
tests/integration/parity_files_checks.py, run once per session_isolation setting."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from ..integration import parity_files_checks as P
from ..integration.conftest import SPARSE_SIZE, Site, start_server, stop_server
from .conftest import children_named, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
ALICE = ("ftpw_alice", "alice-pw-1")
WORKER = "ftpwarden-user"


def _serve(tmp_path_factory, accounts, name: str, options: list[str]):
    home = Path(accounts["alice"].pw_dir)
    base = tmp_path_factory.mktemp(name)
    conf = write_conf(base, "write_enable=YES", "delay_failed_login=0", "ban_threshold=0", "max_per_ip=200",
                      *options)
    srv = start_server(["--config", str(conf)], home, base)
    return srv, Site(srv.host, srv.port, *ALICE, home)


def _site_fixture(name: str, options: list[str]):
    @pytest.fixture(scope="module")
    def served(tmp_path_factory, accounts, session_isolation):  # a server per setting
        srv, site = _serve(tmp_path_factory, accounts, name, options)
        yield srv, site
        stop_server(srv)

    @pytest.fixture
    def site(request):
        srv, shared = request.getfixturevalue(f"{name}_server")
        fresh = Site(shared.host, shared.port, shared.user, shared.password, shared.local)
        fresh.extra = srv  # type: ignore[attr-defined]
        yield fresh
        if fresh.base:  # what a check made in alice's home goes with it
            shutil.rmtree(fresh.path(""), ignore_errors=True)

    return served, site


on_server, on = _site_fixture("on", P.ON)
names_server, names = _site_fixture("names", P.NAMES)
plain_server, plain = _site_fixture("plain", P.PLAIN)
atomic_server, atomic = _site_fixture("atomic", P.ATOMIC)


def test_download_file_and_upload_file_allow_only_matching_names(names):
    P.check_download_and_upload_file(names)


def test_ls_recurse_enable_walks_the_tree(on):
    P.check_ls_recurse(on)


def test_without_ls_recurse_enable_r_is_ignored(names):
    P.check_ls_recurse_ignored(names)


def test_delete_failed_uploads_leaves_nothing_of_an_aborted_upload(on):
    P.check_delete_failed_uploads(on, enabled=True)


def test_without_delete_failed_uploads_the_partial_stays(names):
    P.check_delete_failed_uploads(names, enabled=False)


def test_delete_failed_uploads_with_atomic_uploads_removes_the_hidden_partial(atomic):
    P.check_delete_failed_atomic(atomic)


def test_lock_upload_files_makes_a_download_wait_for_the_upload(on):
    P.check_download_waits_for_upload(on, locks=True)


def test_without_lock_upload_files_a_download_sees_half_a_file(plain):
    P.check_download_waits_for_upload(plain, locks=False)


def test_lock_upload_files_and_a_local_fcntl_locker(on):
    P.check_local_lock_holder(on)


def test_better_stou_picks_random_suffixes(on):
    P.check_stou_names(on, better=True)


def test_stou_without_better_stou_counts(names):
    P.check_stou_names(names, better=False)


def test_utf8_filesystem_advertises_utf8(on, names):
    P.check_utf8_feat(on, advertised=True)
    P.check_utf8_feat(names, advertised=False)


def _worker_of(srv) -> int:
    """The identity worker hosting the session just logged in (the newest one)."""
    return max(children_named(zygote(srv), WORKER))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_use_sendfile_and_trans_chunk_size(on, plain):
    """In the identity worker: trans_chunk_size=8192 (ON) makes every sendfile call 8192
    bytes; use_sendfile=NO (PLAIN) makes none (reads of 64 KiB, sent)."""
    data, got, trace = P.traced_download(on, lambda: _worker_of(on.extra))
    assert got == data
    counts = P.sendfile_counts(trace)
    assert len(counts) >= len(data) // 8192 and set(counts) == {8192}, trace[-2000:]
    data, got, trace = P.traced_download(plain, lambda: _worker_of(plain.extra))
    assert got == data
    assert "sendfile(" not in trace
    reads = P.pread_counts(trace)
    assert reads and set(reads) == {65536}, trace[-2000:]


def _big_file(site: Site) -> None:
    with open(site.path("huge.txt"), "wb") as f:
        f.truncate(SPARSE_SIZE)
    os.chmod(site.path("huge.txt"), 0o644)


def test_async_abor_with_ftplib_abort_during_retr(on):
    with on.fresh() as ftp:
        _big_file(on)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR huge.txt")
        assert conn.recv(65536)
        t0 = time.monotonic()
        resp = ftp.abort()
        assert resp.startswith("426"), resp
        conn.close()
        assert ftp.getresp().startswith("226")
        assert time.monotonic() - t0 < 5
        assert ftp.voidcmd("NOOP").startswith("200")


def test_async_abor_with_telnet_ip_and_synch(on):
    with on.fresh() as ftp:
        _big_file(on)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR huge.txt")
        assert conn.recv(65536)
        ftp.sock.sendall(b"\xff\xf4")  # IAC IP
        ftp.sock.sendall(b"\xff\xf2", socket.MSG_OOB)  # IAC DM, the DM urgent (the Synch)
        ftp.sock.sendall(b"ABOR\r\n")
        first = ftp.getline()
        assert first.startswith("426"), first
        conn.close()
        assert ftp.getresp().startswith("226")
        assert ftp.voidcmd("NOOP").startswith("200")
