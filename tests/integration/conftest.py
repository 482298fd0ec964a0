"""Start real ftpwarden servers on loopback for the integration tests, and the
clients and fixtures that more than one test module (pooled or isolated) uses."""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import make_cert

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int
    root: Path
    stderr_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"ftp://{h}:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


# `-o` options given to every isolated-mode server (one started with --config): tests/privileged
# runs each of its tests once per session_isolation setting through this (see its conftest).
ISOLATED_OPTIONS: list[str] = []


def start_server(args: list[str], root: Path, tmp: Path, timeout: float = 15.0) -> Server:
    if "--config" in args:
        args = [*args, *ISOLATED_OPTIONS]
    elif os.geteuid() == 0:  # quick mode as root would be isolated mode (tests/privileged/test_quick_root.py)
        args = [*args, "-o", "pooled=YES"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    err = tmp / f"server-{len(list(tmp.glob('server-*.err')))}.err"
    with open(err, "wb") as err_file:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftpwarden", "serve", *args],
            stdout=subprocess.PIPE, stderr=err_file, env=env, cwd=str(tmp),
        )
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line or proc.poll() is not None:
            break
    m = re.search(rb" on (?:\[([0-9a-f:]+)\]|([0-9.]+)):(\d+)", line)
    if not m:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"server did not start: {line!r}\n{err.read_text(errors='replace')}")
    return Server(proc, (m.group(1) or m.group(2)).decode(), int(m.group(3)), root, err)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """make_server(root, *args) -> Server; every server started is stopped after the test."""
    started: list[Server] = []

    def make(root: Path | None = None, *args: str) -> Server:
        if root is None:
            root = tmp_path / "root"
            root.mkdir(exist_ok=True)
        srv = start_server([*args], root, tmp_path)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        stop_server(srv)


@pytest.fixture
def quick_server(make_server, tmp_path: Path) -> Server:
    """Quick mode: anonymous read-only plus a writable virtual user alice:secret."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    return make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                       "--user", "alice:secret", "-o", "delay_failed_login=0")


# ---------------------------------------------------------------- a raw control connection
# (shared by test_abuse, test_load and the isolated-mode abuse tests)

RAW_TIMEOUT = 10
REPLY_START = re.compile(rb"^\d{3}[ -]")
SPARSE_SIZE = 1 << 30  # a sparse file: costs no disk, takes far longer than any test to send


class Ctl:
    """A raw control connection: bytes out, whole replies in."""

    def __init__(self, host: str, port: int, source: str = "127.0.0.1", timeout: float = RAW_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.host = host
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """One whole reply (all lines of a multi-line one); b"" at end of stream."""
        first = self.file.readline()
        if not first:
            return b""
        assert REPLY_START.match(first) and first.endswith(b"\r\n"), first
        out = first
        if first[3:4] == b"-":
            while True:
                line = self.file.readline()
                assert line, f"end of stream inside a multi-line reply: {out!r}"
                out += line
                if line.startswith(first[:3] + b" "):
                    break
        return out

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else (data + "\r\n").encode())

    def cmd(self, data: bytes | str) -> bytes:
        self.send(data)
        return self.reply()

    def login(self, user: str = "alice", password: str = "secret") -> Ctl:
        assert self.cmd(f"USER {user}").startswith(b"331")
        assert self.cmd(f"PASS {password}").startswith(b"230")
        return self

    def pasv(self) -> tuple[str, int]:
        r = self.cmd("PASV")
        assert r.startswith(b"227"), r
        n = [int(x) for x in re.search(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", r).groups()]
        return ".".join(map(str, n[:4])), n[4] * 256 + n[5]

    def closed(self, timeout: float = RAW_TIMEOUT) -> bool:
        """True when the server ends the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def data_socket(host: str, port: int, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(RAW_TIMEOUT)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def recv_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class Prober:
    """Another logged-in session answering NOOP every 50 ms while an attack runs."""

    def __init__(self, srv: Server, what: str, source: str = "127.0.0.2", user: str = "alice",
                 password: str = "secret") -> None:
        self.ctl = Ctl(srv.host, srv.port, source=source).login(user, password)
        self.what = what
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                r = self.ctl.cmd("NOOP")
                if not r.startswith(b"200"):
                    self.errors.append(repr(r))
            except OSError as e:
                self.errors.append(repr(e))
                return
            self.latencies.append(time.monotonic() - t)
            self._stop.wait(0.05)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(RAW_TIMEOUT)
        self.ctl.close()
        if exc[0] is None:
            self.check()

    def check(self) -> None:
        lat = self.latencies
        assert lat, "the prober got no answer at all"
        print(f"\nFIGURE noop-latency during {self.what}: n={len(lat)} median={statistics.median(lat) * 1000:.1f} ms "
              f"max={max(lat) * 1000:.1f} ms errors={len(self.errors)}")
        assert not self.errors, self.errors
        assert max(lat) < 2.0


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError:
            pass
    return total


def sample_tree(tmp_path: Path, root: Path | None = None) -> Path:
    root = root or tmp_path / "pub"
    root.mkdir(exist_ok=True)
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "data.bin").write_bytes(os.urandom(300_000))
    with open(root / "big.bin", "wb") as f:
        f.truncate(SPARSE_SIZE)
    return root


def serve(make_server, tmp_path: Path, *opts: str, workers: int = 1, root: Path | None = None) -> Server:
    """Quick mode with alice:secret (write access) and the given `-o` options."""
    root = sample_tree(tmp_path, root)
    args = [str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", str(workers),
            "--user", "alice:secret", "-o", "delay_failed_login=0", "-o", "ban_threshold=0"]
    for o in opts:
        args += ["-o", o]
    return make_server(root, *args)


# ---------------------------------------------------------------- FTPS (test_tls, test_tls_end, isolated mode)

@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def tls_server(make_server, tmp_path, cert):
    root = tmp_path / "tlsroot"
    root.mkdir()
    (root / "hello.txt").write_text("hello over tls\n")
    (root / "blob.bin").write_bytes(os.urandom(3_000_001))

    def start(*extra: str) -> Server:
        return make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                           "--user", "alice:secret", "-o", "delay_failed_login=0", "-o", "ssl_enable=YES",
                           "-o", f"rsa_cert_file={cert[0]}", "-o", f"rsa_private_key_file={cert[1]}", *extra)
    return start


def client_ctx(**kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib does not resume the control session on data connections; this one does."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def tls_login(srv: Server, cls: type[ftplib.FTP_TLS] = ReusingFTP_TLS, user: str = "alice", password: str = "secret",
              timeout: float = 30, **ctx_kw: object) -> ftplib.FTP_TLS:
    """Logged in over AUTH TLS with PROT P; `ctx_kw` are set on the client's SSLContext."""
    ftp = cls(context=client_ctx(**ctx_kw), timeout=timeout)
    ftp.connect(srv.host, srv.port)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


# ---------------------------------------------------------------- a user's view of a server (issues 10 and 17)
# Each check of integrity_checks.py takes a `Site`, so isolated mode runs the same checks.

SITE_TIMEOUT = 20


@dataclass
class Site:
    host: str
    port: int
    user: str
    password: str
    local: Path  # the user's "/" on disk
    base: str = ""  # a fresh directory for one check, made by `fresh`

    def connect(self, login: bool = True) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=SITE_TIMEOUT)
        ftp.connect(self.host, self.port)
        if login:
            ftp.login(self.user, self.password)
        return ftp

    def fresh(self) -> ftplib.FTP:
        """Log in, make a new directory and change into it."""
        ftp = self.connect()
        self.base = "/t-" + uuid.uuid4().hex[:10]
        ftp.mkd(self.base)
        ftp.cwd(self.base)
        return ftp

    def path(self, name: str) -> Path:
        return self.local / self.base.lstrip("/") / name


def put(ftp: ftplib.FTP, name: str, data: bytes, rest: int | None = None, cmd: str = "STOR") -> str:
    return ftp.storbinary(f"{cmd} {name}", io.BytesIO(data), rest=rest)


@pytest.fixture
def site(make_server, tmp_path: Path) -> Site:
    root = tmp_path / "pub"
    root.mkdir()
    srv: Server = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                              "--user", "alice:secret", "-o", "delay_failed_login=0",
                              "-o", "max_login_fails=3")
    return Site(srv.host, srv.port, "alice", "secret", root)
