"""Issue 12's files and transfer options in pooled mode (parity_files_checks.py has the
checks; tests/privileged/test_parity_files.py runs them in isolated mode)."""

from __future__ import annotations

import ftplib
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from . import parity_files_checks as P
from .conftest import SPARSE_SIZE, Site


def _site(make_server, tmp_path: Path, name: str, options: list[str]) -> tuple[Site, int]:
    root = tmp_path / name
    root.mkdir()
    args = [str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1", "--user", "alice:secret",
            "-o", "delay_failed_login=0"]
    for option in options:
        args += ["-o", option]
    srv = make_server(root, *args)
    return Site(srv.host, srv.port, "alice", "secret", root), srv.proc.pid


@pytest.fixture
def on(make_server, tmp_path):
    return _site(make_server, tmp_path, "on", P.ON)[0]


@pytest.fixture
def names(make_server, tmp_path):
    return _site(make_server, tmp_path, "names", P.NAMES)[0]


@pytest.fixture
def plain(make_server, tmp_path):
    return _site(make_server, tmp_path, "plain", P.PLAIN)[0]


@pytest.fixture
def atomic(make_server, tmp_path):
    return _site(make_server, tmp_path, "atomic", P.ATOMIC)[0]


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


needs_strace = pytest.mark.skipif(shutil.which("strace") is None or os.geteuid() != 0,
                                  reason="strace -p of the server needs strace and root")


@needs_strace
def test_use_sendfile_and_trans_chunk_size(make_server, tmp_path):
    """The default moves a download with sendfile, 1 MiB a call; trans_chunk_size=8192
    makes every call 8192 bytes; use_sendfile=NO makes no sendfile call at all (reads
    of 64 KiB, sent)."""
    default, pid = _site(make_server, tmp_path, "default", [])
    data, got, trace = P.traced_download(default, pid)
    assert got == data
    counts = P.sendfile_counts(trace)
    assert counts and set(counts) == {1 << 20}, trace[-2000:]

    chunked, pid = _site(make_server, tmp_path, "chunked", ["trans_chunk_size=8192"])
    data, got, trace = P.traced_download(chunked, pid)
    assert got == data
    counts = P.sendfile_counts(trace)
    assert len(counts) >= len(data) // 8192 and set(counts) == {8192}, trace[-2000:]

    plain, pid = _site(make_server, tmp_path, "plain", P.PLAIN + ["trans_chunk_size=1000"])
    data, got, trace = P.traced_download(plain, pid)
    assert got == data
    assert P.sendfile_counts(trace) == [] and "sendfile(" not in trace
    reads = P.pread_counts(trace)
    assert len(reads) >= len(data) // 4096 and set(reads) == {4096}, trace[-2000:]  # below 4096: 4096 (vsftpd)


def _big_file(site: Site, ftp: ftplib.FTP) -> None:
    with open(site.path("huge.txt"), "wb") as f:
        f.truncate(SPARSE_SIZE)
    os.chmod(site.path("huge.txt"), 0o644)


def test_async_abor_with_ftplib_abort_during_retr(on):
    """ftplib's abort() sends "ABOR\\r\\n" as urgent data (MSG_OOB) during a large RETR:
    426 for the transfer, 226 for the ABOR, and the session goes on."""
    with on.fresh() as ftp:
        _big_file(on, ftp)
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


def test_async_abor_enable_no_answers_urgent_abor_all_the_same(names):
    """async_abor_enable=NO (the default): our control connection is read during every
    transfer and the urgent byte stays in the stream, so NO changes nothing."""
    test_async_abor_with_ftplib_abort_during_retr(names)


def test_async_abor_with_telnet_ip_and_synch(on):
    """RFC 959's way: IAC IP, then IAC DM with the DM as urgent data, then ABOR."""
    with on.fresh() as ftp:
        _big_file(on, ftp)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR huge.txt")
        assert conn.recv(65536)
        sock = ftp.sock
        sock.sendall(b"\xff\xf4")  # IAC IP
        sock.sendall(b"\xff\xf2", socket.MSG_OOB)  # IAC DM, the DM urgent (the Synch)
        sock.sendall(b"ABOR\r\n")
        first = ftp.getline()
        assert first.startswith("426"), first
        conn.close()
        assert ftp.getresp().startswith("226")
        assert ftp.voidcmd("NOOP").startswith("200")
