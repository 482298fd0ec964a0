"""PROXY headers, random and mutated: the parser raises nothing but ProxyHeaderError and
never takes a byte past a header; a live pooled node refuses them all and still serves."""

from __future__ import annotations

import concurrent.futures
import errno
import ftplib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftpwarden.proto.proxyheader import V1_MAX, V2_MAX, V2_SIGNATURE, HeaderParser, ProxyHeaderError, parse

from ..integration.conftest import Server, start_server, stop_server

TAIL = b"USER alice\r\n"


def _v2(command: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


SEEDS = [
    b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\r\n",
    b"PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 40000 21\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
    _v2(1, 0x11, bytes(range(12))),
    _v2(1, 0x21, bytes(range(36)) + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x00"),
    _v2(0, 0x00, b""),
    _v2(1, 0x11, bytes(12) + b"\x04\x00\x02ab\x05\x00\x01x"),
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:  # flip a byte
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:  # insert
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:  # delete
            del data[pos:pos + draw(st.integers(1, 8))]
        else:  # truncate
            del data[pos:]
    return bytes(data)


headers = st.one_of(mutated(), st.binary(max_size=200), st.binary(max_size=60).map(lambda b: b"PROXY " + b),
                    st.binary(max_size=60).map(lambda b: V2_SIGNATURE + b))


@settings(max_examples=3000, deadline=None)
@given(headers, st.binary(max_size=30), st.lists(st.integers(1, 64), max_size=10))
def test_never_another_exception_never_past_the_header(data, tail, sizes):
    stream = data + tail
    whole = None
    try:
        whole = parse(stream)
    except ProxyHeaderError:
        pass
    if whole is not None:  # a header: its length and nothing of what follows
        _declared, used = whole
        assert used <= V1_MAX or stream[:1] == V2_SIGNATURE[:1]
        assert used <= V2_MAX
        assert parse(stream[:used]) == whole
    # the same bytes in pieces, as a reader gets them: same outcome, never past the end
    p = HeaderParser()
    pos = 0
    try:
        for size in [*sizes, len(stream)]:
            if p.done or pos >= len(stream):
                break
            chunk = stream[pos:pos + min(size, p.want())]
            used = p.feed(chunk)
            assert 0 <= used <= len(chunk)
            pos += used
            if not p.done:
                assert used == len(chunk)  # short only at the header's end
        if p.done:
            assert whole is not None and (p.declared, pos) == whole
    except ProxyHeaderError:
        assert whole is None


# ---------------------------------------------------------------- a live pooled node

@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("proxyfuzz")
    root = tmp / "root"
    root.mkdir()
    (root / "file.txt").write_bytes(b"some text\n")
    srv = start_server([str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                        "--user", "alice:secret", "-o", "delay_failed_login=0", "-o", "ban_threshold=0",
                        "-o", "proxy_protocol_enable=YES", "-o", "proxy_protocol_from=127.0.0.1"], root, tmp)
    yield srv
    stop_server(srv)


def _send(srv: Server, data: bytes) -> bytes:
    """Send `data` then end our side: the node must close without a reply, or (a valid
    header after all) greet; what came back."""
    with socket.create_connection((srv.host, srv.port), timeout=8) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            return got
        except (ConnectionResetError, BrokenPipeError):
            return b""
        except OSError as e:  # ENOTCONN at shutdown: reset already (our unread bytes)
            if e.errno != errno.ENOTCONN:
                raise
            return b""


def _good_client(srv: Server) -> None:
    s = socket.create_connection((srv.host, srv.port), timeout=8)
    s.sendall(SEEDS[0])
    ftp = ftplib.FTP(timeout=8)
    ftp.sock, ftp.af, ftp.host = s, s.family, srv.host
    ftp.file = s.makefile("r", encoding="utf-8")
    assert ftp.getresp().startswith("220")
    ftp.login("alice", "secret")
    ftp.voidcmd("TYPE I")
    assert ftp.size("file.txt") == 10  # (a data connection from here would need its own header)
    ftp.quit()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(headers, min_size=1, max_size=12))
def test_live_node_survives_fuzzed_headers(node, batch):
    check_batch(node, batch)
    _good_client(node)


def check_batch(node: Server, batch: list[bytes]) -> None:
    """Each header of `batch` on a connection of its own, 4 at once: closed unanswered unless
    it is a valid header (then greeted); the node still runs."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda d: _send(node, d + TAIL), batch))
    for data, got in zip(batch, replies, strict=True):
        try:
            valid = parse(data + TAIL) is not None
        except ProxyHeaderError:
            valid = False
        assert got == b"" or (valid and got.startswith(b"220")), (data, got)
    assert time.monotonic() - started < 30
    assert node.proc.poll() is None


def test_node_still_serves_and_logged_no_traceback(node):
    _good_client(node)
    assert "Traceback" not in node.stderr()
