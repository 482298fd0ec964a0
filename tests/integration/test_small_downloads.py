"""Small binary downloads (net/transfer.py `_sent_at_once`): the file may go before
its 150, which then leaves with the 226; every byte, REST and the replies stay as before."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import time

import pytest

from .conftest import Server

TIMEOUT = 20
EDGE = 64 * 1024  # transfer.SMALL_DOWNLOAD


@pytest.fixture
def small_server(make_server, tmp_path) -> Server:
    root = tmp_path / "pub"
    root.mkdir()
    for size in (0, 1, 8192, EDGE - 1, EDGE, EDGE + 1):
        (root / f"f{size}.bin").write_bytes(os.urandom(size))
    return make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1")


def connect(srv: Server) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login("anonymous", "guest@example.org")
    return ftp


def test_small_files_whole_with_150_then_226(small_server):
    with connect(small_server) as ftp:
        for path in sorted(small_server.root.iterdir()):
            want = path.read_bytes()
            for rest in sorted({0, min(1, len(want)), len(want)}):
                buf = io.BytesIO()
                # retrbinary insists on a 1xx before the data and a 2xx after
                reply = ftp.retrbinary(f"RETR {path.name}", buf.write, rest=rest or None)
                assert reply.startswith("226"), reply
                assert buf.getvalue() == want[rest:], (path.name, rest)
        # the session goes on as usual afterwards
        assert ftp.sendcmd("NOOP").startswith("200")


def test_small_file_to_a_slow_reader_still_whole(small_server):
    """A reader with a tiny window, a file at the edge of the fast path: whole, 150
    then 226 (tests/unit/test_small_download.py forces the hand-over itself)."""
    want = (small_server.root / f"f{EDGE}.bin").read_bytes()
    with connect(small_server) as ftp:
        ftp.voidcmd("TYPE I")
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        data = socket.socket()
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        data.settimeout(TIMEOUT)
        data.connect((host, port))
        with data:
            assert ftp.sendcmd(f"RETR f{EDGE}.bin").startswith("150")
            got = bytearray()
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                chunk = data.recv(4096)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.001)
        assert ftp.voidresp().startswith("226")
        assert bytes(got) == want

