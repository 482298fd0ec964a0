"""Start real ftpwarden servers on loopback for the integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

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


def start_server(args: list[str], root: Path, tmp: Path, timeout: float = 15.0) -> Server:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    err = tmp / f"server-{len(list(tmp.glob('server-*.err')))}.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftpwarden", "serve", *args],
        stdout=subprocess.PIPE, stderr=open(err, "wb"), env=env, cwd=str(tmp),
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
