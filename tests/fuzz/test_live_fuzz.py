"""Random command sequences and random bytes against a live pooled server.

Every reply read is a well-formed FTP reply, or the server closes the
connection; the server never hangs a session, never logs a traceback, and
answers a fresh client afterwards.  After each example's input a unique
`HELP <token>` marks where its replies end (HELP answers in every state).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ftpwarden.proto.commands import COMMANDS

from ..integration.conftest import Server, start_server, stop_server

SOCKET_TIMEOUT = 2.0
REPLY_FIRST = re.compile(rb"^(\d{3})([ -])[^\r\n]*\r\n$")
# transfers wait for a data connection when PASV/PORT came first: left out after those
_DATA_SETUP = {"PASV", "EPSV", "PORT", "EPRT"}
_TRANSFERS = {"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("livefuzz")
    root = tmp / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file.txt").write_bytes(b"some text\n")
    (root / "sub" / "data.bin").write_bytes(bytes(range(256)) * 40)
    srv = start_server([str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                        "--user", "alice:secret", "-o", "delay_failed_login=0", "-o", "ban_threshold=0",
                        "-o", "accept_timeout=1", "-o", "connect_timeout=1", "-o", "data_connection_timeout=2"],
                       root, tmp)
    yield srv
    stop_server(srv)


paths = st.sampled_from(["", "file.txt", "sub", "sub/data.bin", "/", "..", "../../etc/passwd", "nope",
                         "new dir", "x" * 300, "sub/../file.txt", "*", "-la", "\u00e9t\u00e9"])
args = st.one_of(paths, st.text(max_size=40), st.sampled_from(["A", "I", "L 8", "E", "F", "S", "ON",
                                                                 "UTF8 ON", "HASH SHA-1", "CHMOD 777 file.txt",
                                                                 "UMASK 002", "IDLE 5", "0", "123",
                                                                 "20200101000000 file.txt", "TLS", "P", "C"]))
verbs = st.sampled_from(sorted(COMMANDS) + ["XYZ", "GET", "SITE HELP", "OPTS MLST", "ABOR", "noop", "Retr"])


@st.composite
def command_lines(draw) -> bytes:
    verb = draw(verbs)
    arg = draw(args)
    text = f"{verb} {arg}" if arg else verb
    return text.encode("utf-8", "surrogateescape") + b"\r\n"


inputs = st.lists(st.one_of(command_lines(), command_lines(), st.binary(min_size=1, max_size=300)),
                  min_size=1, max_size=12)


def _verb(chunk: bytes) -> str:
    return chunk.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")


def _without_waiting_transfers(chunks: list[bytes]) -> list[bytes]:
    out, prepared = [], False
    for chunk in chunks:
        verb = _verb(chunk)
        if verb in _DATA_SETUP:
            prepared = True
        elif verb in _TRANSFERS and prepared:
            continue
        if verb == "QUIT":
            prepared = False
        out.append(chunk)
    return out


class Reader:
    """Reads replies and checks their form; None once the server has closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def reply(self) -> bytes | None:
        try:
            first = self.file.readline()
        except ConnectionResetError:
            return None
        if not first:
            return None
        m = REPLY_FIRST.match(first)
        assert m, f"not an FTP reply: {first!r}"
        out = first
        if m.group(2) == b"-":
            end = m.group(1) + b" "
            while True:
                try:
                    line = self.file.readline()
                except ConnectionResetError:
                    return None
                if not line:
                    return None  # closed inside a multi-line reply: the session ended
                assert line.endswith(b"\r\n"), line
                out += line
                if line.startswith(end):
                    break
        return out


_counter = iter(range(1, 1 << 30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(chunks=inputs)
def test_random_input_to_a_logged_in_session(live, chunks):
    chunks = _without_waiting_transfers(chunks)
    sock = socket.create_connection((live.host, live.port), timeout=SOCKET_TIMEOUT)
    try:
        r = Reader(sock)
        assert r.reply().startswith(b"220")
        sock.sendall(b"USER alice\r\nPASS secret\r\n")
        assert r.reply().startswith(b"331")
        assert r.reply().startswith(b"230")
        token = f"ZQ{next(_counter)}X"
        data = b"".join(chunks)
        if not data.endswith(b"\n"):
            data += b"\r\n"
        try:
            sock.sendall(data + f"HELP {token}\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            event("closed before the marker was sent")
            return  # the server closed already (QUIT, too many errors)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                reply = r.reply()
            except TimeoutError:
                raise AssertionError(f"no reply within {SOCKET_TIMEOUT} s to {chunks!r}") from None
            if reply is None:
                event("session ended by the server")
                return  # allowed
            if token.encode() in reply:
                event("marker answered")
                return
        raise AssertionError(f"the marker's reply never came: {chunks!r}")
    finally:
        sock.close()


def test_the_server_is_well_after_the_fuzzing(live):
    """Runs after the examples above (file order): a fresh client is served, nothing was logged."""
    sock = socket.create_connection((live.host, live.port), timeout=SOCKET_TIMEOUT)
    try:
        r = Reader(sock)
        assert r.reply().startswith(b"220")
        sock.sendall(b"USER alice\r\nPASS secret\r\nNOOP\r\n")
        assert r.reply().startswith(b"331")
        assert r.reply().startswith(b"230")
        assert r.reply().startswith(b"200")
    finally:
        sock.close()
    assert live.proc.poll() is None
    err = live.stderr()
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]
