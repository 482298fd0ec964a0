"""How a TLS data connection ends, and the TLS security checks, as functions of a running
server: test_tls_end.py runs them against pooled mode, tests/privileged/test_tls_security_isolated.py
against isolated mode."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ReusingFTP_TLS, Server, client_ctx

TIMEOUT = 20


# ---------------------------------------------------------------- a raw TLS client


def _ctx() -> ssl.SSLContext:
    """The client at its defaults (the TLS 1.2 cases set the server's ssl_tlsv13=NO instead)."""
    return client_ctx()


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """Implicit FTPS: TLS from the first byte, no AUTH."""

    def connect(self, host: str = "", port: int = 0, timeout: float = TIMEOUT, source_address=None) -> str:
        self.host, self.port = host, port
        self.sock = self.context.wrap_socket(socket.create_connection((host, port), timeout))
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding="utf-8")
        return self.getresp()

    def auth(self) -> str:
        return "234 already protected"


def connect(srv: Server, *, implicit: bool = False) -> ReusingFTP_TLS:
    ftp = (ImplicitFTP_TLS if implicit else ReusingFTP_TLS)(context=_ctx(), timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.auth()
    return ftp


def login(srv: Server, user: str, password: str, *, implicit: bool = False) -> ReusingFTP_TLS:
    ftp = connect(srv, implicit=implicit)
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


class RawTlsData:
    """The client side of a TLS data connection, every byte under our control."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext, session: ssl.SSLSession | None,
                 *, burst: bool = False) -> None:
        """`burst`: hold our last handshake message and the data back, so that they
        leave with close_notify in one write, the reset right after (as curl's
        small uploads do)."""
        self.burst = burst
        self.sock = socket.create_connection(addr, TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, session=session)
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert time.monotonic() < deadline, "handshake took too long"
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("server closed during the handshake") from None
                self.inc.write(chunk)
        if not burst:
            self._flush()

    def _flush(self) -> None:
        if self.out.pending:
            self.sock.sendall(self.out.read())

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        if not self.burst:
            self._flush()

    def close_notify(self) -> None:
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is written; the server's is not read (on purpose)
        self._flush()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), leaving whatever the server sent unread.

        First wait until the server's kernel has every byte we sent (a reset
        drops what is still in our send queue: no server could store that)."""
        deadline = time.monotonic() + TIMEOUT
        while struct.unpack("i", fcntl.ioctl(self.sock, termios.TIOCOUTQ, b"\0" * 4))[0]:
            assert time.monotonic() < deadline, "the server never took our bytes"
            time.sleep(0.01)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def fin(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (a download it need not see confirmed)

    def read_all(self) -> tuple[bytes, bool]:
        """Plaintext until the end, and whether the server's close_notify ended it."""
        got = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    return bytes(got), True
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(got), True
            try:
                raw = self.sock.recv(65536)
            except ConnectionResetError:
                raw = b""
            if not raw:
                return bytes(got), False
            self.inc.write(raw)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the server and its session processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    return found


@contextlib.contextmanager
def frozen(srv: Server) -> Iterator[None]:
    """The server's processes stopped meanwhile: what we send arrives all at once,
    before the server can read any of it or answer."""
    pids = _tree(srv.proc.pid)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)


def start_transfer(ftp: ReusingFTP_TLS, cmd: str, *, burst: bool = False) -> RawTlsData:
    """PASV, the command, the data connection resuming the control's session, the 150."""
    addr = ftp.makepasv()
    ftp.putcmd(cmd)
    data = RawTlsData(addr, ftp.context, ftp.sock.session, burst=burst)
    assert ftp.getline().startswith("150")
    return data


def final_reply(ftp: ReusingFTP_TLS) -> str:
    return ftp.getline()


# ---------------------------------------------------------------- checks shared with isolated mode
# Each takes the server, a (user, password) and the directory the user's files land in.


def check_close_notify_then_reset(srv: Server, cred: tuple[str, str], root: Path) -> None:
    # small ones arrive with their close_notify and the reset in one go, as curl's do;
    # a large one: the reset finds bytes the server has not read yet
    for i, size in enumerate([10_000] * 6 + [4_000_001]):
        payload = os.urandom(size)
        with login(srv, *cred) as ftp:
            data = start_transfer(ftp, f"STOR cnr{i}.bin", burst=size < 100_000)
            if data.burst:
                # the client's Finished, data, close_notify and reset all wait for the
                # server, whose session tickets then meet a reset connection
                with frozen(srv):
                    data.send(payload)
                    data.close_notify()
                    data.reset()
            else:
                data.send(payload)
                data.close_notify()
                data.reset()
            reply = final_reply(ftp)
        assert reply.startswith("226"), reply
        assert hashlib.sha256((root / f"cnr{i}.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()


def check_reset_without_close_notify(srv: Server, cred: tuple[str, str], root: Path) -> None:
    """Needs atomic_uploads=YES on the server: the name never appears."""
    with login(srv, *cred) as ftp:
        data = start_transfer(ftp, "STOR cut.bin")
        data.send(os.urandom(300_000))
        time.sleep(0.2)  # the bytes are in; only the end is missing
        data.reset()
        reply = final_reply(ftp)
        assert reply.startswith("426"), reply
        assert ftp.sendcmd("NOOP").startswith("200")
    assert not (root / "cut.bin").exists()


def check_fin_without_close_notify(srv: Server, cred: tuple[str, str], root: Path, *, strict: bool) -> None:
    payload = os.urandom(200_003)
    with login(srv, *cred) as ftp:
        data = start_transfer(ftp, "STOR fin.bin")
        data.send(payload)
        data.fin()
        reply = final_reply(ftp)
        data.sock.close()
    if strict:
        assert reply.startswith("426"), reply
    else:  # strict_ssl_read_eof=NO: a bare FIN ends the upload, as in vsftpd
        assert reply.startswith("226"), reply
        assert (root / "fin.bin").read_bytes() == payload


def check_download_end(srv: Server, cred: tuple[str, str], name: str, content: bytes, *, strict: bool) -> None:
    """strict_ssl_write_shutdown=YES: a download is whole only when the client confirms with close_notify."""
    for confirm in (True, False):
        with login(srv, *cred) as ftp:
            data = start_transfer(ftp, f"RETR {name}")
            got, server_closed = data.read_all()
            assert got == content and server_closed  # our close_notify ends every download
            if confirm:
                try:
                    data.close_notify()
                except OSError:
                    pass  # as in fin()
            data.fin()
            reply = final_reply(ftp)
            data.sock.close()
        if confirm or not strict:
            assert reply.startswith("226"), reply
        else:
            assert reply.startswith("426"), reply


def check_aborted_download_has_no_close_notify(srv: Server, cred: tuple[str, str], name: str, size: int) -> None:
    """ABOR in the middle of a download: the stream must not end as if whole."""
    with login(srv, *cred) as ftp:
        data = start_transfer(ftp, f"RETR {name}")
        data.sock.settimeout(TIMEOUT)
        time.sleep(0.3)  # we read nothing meanwhile: the server is blocked on a full socket
        ftp.sock.sendall(b"ABOR\r\n")
        got, clean = data.read_all()
        data.sock.close()
        replies = [ftp.getline(), ftp.getline()]
        assert len(got) < size
        assert not clean, "an aborted download ended with close_notify, as if whole"
        assert replies[0].startswith("426") and replies[1].startswith("226"), replies
        assert ftp.sendcmd("NOOP").startswith("200")


def check_injection_after_auth_tls(srv: Server) -> None:
    """`AUTH TLS` and `USER` in one clear packet: USER must never run inside TLS."""
    sock = socket.create_connection((srv.host, srv.port), TIMEOUT)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"AUTH TLS\r\nUSER injected\r\n")
    assert f.readline().startswith(b"234")
    try:
        tsock = client_ctx().wrap_socket(sock)
        tsock.settimeout(TIMEOUT)
        tsock.sendall(b"PWD\r\n")
        answer = tsock.recv(4096)
    except (ssl.SSLError, OSError):
        answer = b""  # the session ended: what we want
    assert not answer.startswith(b"331"), answer
    assert answer == b"", f"the session went on after clear bytes were injected: {answer!r}"


def check_injection_implicit(host: str, port: int) -> None:
    """Implicit TLS: clear bytes before the handshake are never read as commands."""
    sock = socket.create_connection((host, port), TIMEOUT)
    sock.sendall(b"USER injected\r\nPASS x\r\n")
    sock.settimeout(TIMEOUT)
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    assert b"331" not in answer and b"230" not in answer, answer
    sock.close()
    # a well-behaved client still gets in
    tsock = client_ctx().wrap_socket(socket.create_connection((host, port), TIMEOUT))
    tsock.settimeout(TIMEOUT)
    assert tsock.recv(4096).startswith(b"220")
    tsock.close()


def check_foreign_session_refused(srv: Server, cred: tuple[str, str], name: str, *, implicit: bool = False) -> None:
    """Another client (never logged in) resumes its own TLS session on the victim's data port."""
    attacker = connect(srv, implicit=implicit)
    attacker.sendcmd("NOOP")  # TLS 1.3: the session tickets have arrived
    stolen = attacker.sock.session
    assert stolen is not None
    with login(srv, *cred, implicit=implicit) as victim:
        addr = victim.makepasv()
        victim.putcmd(f"RETR {name}")
        try:
            thief = RawTlsData(addr, attacker.context, stolen)
            got, _ = thief.read_all()
            thief.sock.close()
        except (ssl.SSLError, OSError):
            got = b""
        assert got == b"", f"another client's session received {len(got)} bytes of the victim's file"
        reply = victim.getline()
        if reply.startswith("150"):
            reply = victim.getline()
        assert reply[:1] in "45", reply
        assert victim.sendcmd("NOOP").startswith("200")
    attacker.close()


def half_client_hello() -> bytes:
    """The first half of a real ClientHello."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx().wrap_bio(inc, out)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    return hello[: len(hello) // 2]


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long the server took to close `sock` (fails after `seconds`)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"session still open after {seconds} s")
    return time.monotonic() - started


def check_half_hello_explicit(host: str, port: int, deadline: float) -> None:
    sock = socket.create_connection((host, port), TIMEOUT)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"234")
    sock.sendall(half_client_hello())
    closed_within(sock, deadline + 3)
    sock.close()


def check_half_hello_implicit(host: str, port: int, deadline: float) -> None:
    sock = socket.create_connection((host, port), TIMEOUT)
    sock.sendall(half_client_hello())
    closed_within(sock, deadline + 3)
    sock.close()


def curl_uploads(url: str, cred: tuple[str, str], root: Path, tmp: Path, n: int = 20) -> int:
    """`n` small uploads with curl at its defaults (TLS 1.3 here); how many were byte-exact with a 0 exit."""
    exact = 0
    for i in range(n):
        src = tmp / f"curl{i}.bin"
        src.write_bytes(os.urandom(10_000 + i))
        r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", ":".join(cred), "-T", str(src),
                            f"{url}/curl{i}.bin"], capture_output=True, timeout=TIMEOUT)
        if r.returncode == 0 and (root / f"curl{i}.bin").read_bytes() == src.read_bytes():
            exact += 1
    return exact


def lftp_put(host: str, port: int, cred: tuple[str, str], root: Path, tmp: Path, n: int = 5) -> int:
    """lftp (GnuTLS) at its defaults: `n` puts in one session; how many landed byte-exact."""
    puts = []
    for i in range(n):
        (tmp / f"lftp{i}.bin").write_bytes(os.urandom(100_000 + i))
        puts.append(f"put {tmp / f'lftp{i}.bin'} -o lftp{i}.bin")
    script = (f"set ssl:verify-certificate no; set net:max-retries 1; set net:timeout 10; "
              f"set cmd:fail-exit yes; {'; '.join(puts)}; bye")
    r = subprocess.run(["lftp", "-u", ",".join(cred), "-p", str(port), "-e", script, host],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return sum((root / f"lftp{i}.bin").read_bytes() == (tmp / f"lftp{i}.bin").read_bytes() for i in range(n))
