"""Python's ftplib against a real ftpwarden server on loopback."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import threading
import time

import pytest

from ..conftest import wait_for
from .conftest import Server

TIMEOUT = 20


def connect(srv: Server, user: str = "anonymous", password: str = "guest@example.org") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(user, password)
    return ftp


def test_anonymous_download(quick_server):
    with connect(quick_server) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        assert buf.getvalue() == b"hello world\n"
        data = io.BytesIO()
        ftp.retrbinary("RETR sub/data.bin", data.write)
        assert data.getvalue() == (quick_server.root / "sub" / "data.bin").read_bytes()


def test_anonymous_is_read_only(quick_server):
    with connect(quick_server) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.storbinary("STOR new.txt", io.BytesIO(b"x"))
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.mkd("newdir")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.delete("hello.txt")
    assert not (quick_server.root / "new.txt").exists()
    assert (quick_server.root / "hello.txt").exists()


def test_wrong_password_is_530(quick_server):
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        connect(quick_server, "alice", "wrong")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        connect(quick_server, "nobody-here", "wrong")


def test_virtual_user_upload_roundtrip(quick_server):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with connect(quick_server, "alice", "secret") as ftp:
        ftp.storbinary("STOR up.bin", io.BytesIO(payload))
        assert ftp.size("up.bin") == len(payload)
        back = io.BytesIO()
        ftp.retrbinary("RETR up.bin", back.write)
    assert back.getvalue() == payload
    assert (quick_server.root / "up.bin").read_bytes() == payload


def test_directories_rename_delete(quick_server):
    with connect(quick_server, "alice", "secret") as ftp:
        assert ftp.mkd("d1") == "/d1"
        ftp.cwd("d1")
        assert ftp.pwd() == "/d1"
        ftp.storbinary("STOR a.txt", io.BytesIO(b"a"))
        ftp.rename("a.txt", "b.txt")
        assert ftp.nlst() == ["b.txt"]
        ftp.delete("b.txt")
        ftp.cwd("..")
        ftp.rmd("d1")
        assert "d1" not in ftp.nlst()
    assert not (quick_server.root / "d1").exists()


def test_listings(quick_server):
    with connect(quick_server) as ftp:
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        names = [line.split()[-1] for line in lines]
        assert sorted(names) == ["hello.txt", "sub"]
        assert lines[names.index("sub")].startswith("d")
        facts = dict(ftp.mlsd())
        assert facts["hello.txt"]["type"] == "file" and facts["hello.txt"]["size"] == "12"
        assert facts["sub"]["type"] == "dir"
        assert sorted(ftp.nlst()) == ["hello.txt", "sub"]


def test_hidden_files_need_dash_a(quick_server):
    (quick_server.root / ".hidden").write_text("h")
    with connect(quick_server) as ftp:
        plain: list[str] = []
        ftp.retrlines("LIST", plain.append)
        every: list[str] = []
        ftp.retrlines("LIST -a", every.append)
    assert not any(".hidden" in line for line in plain)
    assert any(line.endswith(" .hidden") for line in every)


def test_ascii_mode_converts_line_endings(quick_server):
    (quick_server.root / "unix.txt").write_bytes(b"one\ntwo\n")
    with connect(quick_server, "alice", "secret") as ftp:
        ftp.voidcmd("TYPE A")
        with ftp.transfercmd("RETR unix.txt") as conn:
            raw = b""
            while chunk := conn.recv(65536):
                raw += chunk
        ftp.voidresp()
        assert raw == b"one\r\ntwo\r\n"
        ftp.storlines("STOR dos.txt", io.BytesIO(b"a\r\nb\r\n"))
    assert (quick_server.root / "dos.txt").read_bytes() == b"a\nb\n"


def test_rest_resumes_download(quick_server):
    with connect(quick_server) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write, rest=6)
        assert buf.getvalue() == b"world\n"
        # REST applies once: the next RETR starts at 0 again
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        assert buf.getvalue() == b"hello world\n"


def test_rest_resumes_upload(quick_server):
    with connect(quick_server, "alice", "secret") as ftp:
        ftp.storbinary("STOR part.bin", io.BytesIO(b"0123456789"))
        ftp.storbinary("STOR part.bin", io.BytesIO(b"ABC"), rest=5)
        ftp.storbinary("APPE part.bin", io.BytesIO(b"xyz"))
    # a restarted STOR overwrites from the marker and keeps the tail (issue 17, as vsftpd)
    assert (quick_server.root / "part.bin").read_bytes() == b"01234ABC89xyz"


def test_active_mode(quick_server):
    with connect(quick_server) as ftp:
        ftp.set_pasv(False)
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        assert buf.getvalue() == b"hello world\n"


def test_size_mdtm_mfmt_hash(quick_server):
    target = quick_server.root / "sub" / "data.bin"
    with connect(quick_server, "alice", "secret") as ftp:
        assert ftp.size("sub/data.bin") == target.stat().st_size
        assert ftp.sendcmd("MDTM hello.txt").startswith("213 ")
        assert ftp.sendcmd("MFMT 20200102030405 hello.txt") == "213 Modify=20200102030405; /hello.txt"
        assert time.gmtime((quick_server.root / "hello.txt").stat().st_mtime)[:6] == (2020, 1, 2, 3, 4, 5)
        reply = ftp.sendcmd("HASH sub/data.bin")
        assert reply.split()[1:4] == ["SHA-256", f"0-{target.stat().st_size - 1}",
                                      hashlib.sha256(target.read_bytes()).hexdigest()]
        ftp.sendcmd("OPTS HASH MD5")
        assert ftp.sendcmd("HASH hello.txt").split()[3] == hashlib.md5(b"hello world\n").hexdigest()


def test_stat_of_a_path_over_control(quick_server):
    with connect(quick_server) as ftp:
        reply = ftp.sendcmd("STAT /")
    assert reply.startswith("213-") and "hello.txt" in reply and reply.rstrip().endswith("213 End")


def test_escapes_stay_inside_root(quick_server, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside")
    os.symlink(str(tmp_path), quick_server.root / "link-out")
    os.symlink("../../../../../../", quick_server.root / "rel-out")
    with connect(quick_server) as ftp:
        for path in ("../outside.txt", "/../outside.txt", "link-out/outside.txt", "rel-out/outside.txt",
                     "rel-out" + str(outside)):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.retrbinary(f"RETR {path}", lambda b: None)
        ftp.cwd("../../..")
        assert ftp.pwd() == "/"
        assert "hello.txt" in ftp.nlst()


def test_abor_during_download(quick_server):
    big = quick_server.root / "big.bin"
    with open(big, "wb") as f:
        f.truncate(512 * 1024 * 1024)
    with connect(quick_server) as ftp:
        conn = ftp.transfercmd("RETR big.bin")
        conn.recv(65536)
        ftp.putcmd("ABOR")
        first = ftp.getline()
        conn.close()
        second = ftp.getline() if first.startswith("426") else ""
        assert first.startswith("426") and second.startswith("226"), (first, second)
        assert ftp.sendcmd("NOOP").startswith("200")


def test_stat_during_transfer(quick_server):
    big = quick_server.root / "big2.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    with connect(quick_server) as ftp:
        conn = ftp.transfercmd("RETR big2.bin")
        conn.recv(65536)
        reply = ftp.sendcmd("STAT")
        assert reply.startswith("211") and "Transfer in progress" in reply
        conn.close()
        ftp.getline()


def test_over_long_line_and_bad_bytes(quick_server):
    with socket.create_connection((quick_server.host, quick_server.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"USER " + b"a" * 100_000 + b"\r\n")
        assert f.readline().startswith(b"500")
        s.sendall(b"NOOP\xff\xfe\xfd\r\n")
        assert f.readline()[:1] in (b"2", b"5")
        s.sendall(b"USER \xc3\x28bad\r\n")
        assert f.readline()[:1] in (b"3", b"5")
        s.sendall(b"NOOP\r\n")
        assert f.readline().startswith(b"200")


def test_http_request_closes(quick_server):
    with socket.create_connection((quick_server.host, quick_server.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert f.readline().startswith(b"500")
        assert f.read() == b""


def test_other_sessions_keep_working_during_a_slow_one(quick_server):
    with socket.create_connection((quick_server.host, quick_server.port), timeout=TIMEOUT) as slow:
        slow.sendall(b"USER anonym")  # never finishes its line
        with connect(quick_server) as ftp:
            assert ftp.sendcmd("NOOP").startswith("200")


def test_many_parallel_sessions(quick_server):
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(quick_server) as ftp:
                buf = io.BytesIO()
                ftp.retrbinary("RETR hello.txt", buf.write)
                assert buf.getvalue() == b"hello world\n"
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "sessions still running at the time limit"
    assert not errors


def test_names_with_spaces_and_utf8(quick_server):
    (quick_server.root / "with space.txt").write_text("s")
    (quick_server.root / "grüße €.txt").write_text("u")
    with connect(quick_server) as ftp:
        ftp.encoding = "utf-8"
        facts = dict(ftp.mlsd())
        assert "with space.txt" in facts and "grüße €.txt" in facts
        assert ftp.size("with space.txt") == 1
        buf = io.BytesIO()
        ftp.retrbinary("RETR grüße €.txt", buf.write)
        assert buf.getvalue() == b"u"
        assert ftp.sendcmd("MLST with space.txt").splitlines()[1].endswith(" /with space.txt")


def test_atomic_uploads_hide_partial_files_until_complete(make_server, tmp_path):
    root = tmp_path / "atomic"
    root.mkdir()
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                      "--user", "alice:secret", "-o", "atomic_uploads=YES", "-o", "delay_failed_login=0")
    payload = os.urandom(4 * 1024 * 1024)
    ftp = connect(srv, "alice", "secret")
    conn = ftp.transfercmd("STOR big.bin")
    conn.sendall(payload[:1_000_000])
    time.sleep(0.3)
    assert not (root / "big.bin").exists()  # nothing that looks complete while it runs
    # the client process dies: the kernel closes both of its connections
    conn.close()
    ftp.close()  # closes the control socket and its file object
    partial = root / ".ftpwarden-partial.big.bin"
    # (its own hidden name while it runs; the one a resume looks for once it failed)
    wait_for(lambda: partial.exists() and partial.stat().st_size >= 1_000_000, timeout=10)  # asserted below
    time.sleep(0.3)
    assert not (root / "big.bin").exists()
    assert partial.stat().st_size == 1_000_000
    # the client comes back and continues where it stopped
    with connect(srv, "alice", "secret") as ftp:
        ftp.storbinary("APPE big.bin", io.BytesIO(payload[1_000_000:]))
    assert (root / "big.bin").read_bytes() == payload
    assert not partial.exists()


def test_anon_max_rate_limits_a_download(make_server, tmp_path):
    root = tmp_path / "rate"
    root.mkdir()
    (root / "r.bin").write_bytes(os.urandom(600_000))
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                      "-o", "anon_max_rate=400000")
    with connect(srv) as ftp:
        started = time.monotonic()
        buf = io.BytesIO()
        ftp.retrbinary("RETR r.bin", buf.write)
        took = time.monotonic() - started
    assert buf.getvalue() == (root / "r.bin").read_bytes()
    assert took >= 1.0  # 600 kB at 400 kB/s cannot arrive sooner (no upper bound: shared machines)


def test_user_max_rate_is_shared_by_the_sessions_of_one_account(make_server, tmp_path):
    root = tmp_path / "urate"
    root.mkdir()
    (root / "u.bin").write_bytes(os.urandom(300_000))
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "2",
                      "--user", "alice:secret", "-o", "user_max_rate=400000", "-o", "delay_failed_login=0")
    results: list[bytes] = []

    def fetch() -> None:
        with connect(srv, "alice", "secret") as ftp:
            buf = io.BytesIO()
            ftp.retrbinary("RETR u.bin", buf.write)
            results.append(buf.getvalue())

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - started
    assert results == [(root / "u.bin").read_bytes()] * 3
    assert took >= 1.8  # 900 kB through one 400 kB/s budget, whichever worker serves each session


def test_login_timeout_counts_from_connect_not_per_line(make_server, tmp_path):
    root = tmp_path / "lt"
    root.mkdir()
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                      "-o", "login_timeout=2", "-o", "idle_session_timeout=60")
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        started = time.monotonic()
        closed_with = b""
        while time.monotonic() - started < 8:
            try:
                s.sendall(b"NOOP\r\n")
            except OSError:
                break
            line = f.readline()
            if not line.startswith(b"200"):
                closed_with = line
                break
            time.sleep(0.4)
        took = time.monotonic() - started
    assert closed_with.startswith(b"421") and 1.5 < took < 6, (closed_with, took)
