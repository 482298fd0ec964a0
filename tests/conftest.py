"""Helpers for every test directory: waiting with a deadline, a server's
process tree as /proc shows it, a test certificate."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ftpwarden.policy import passwords

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 10.0) -> T:
    """Call `pred` until it returns something true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not (value := pred()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def descendants(pid: int) -> list[int]:
    out = []
    for c in children(pid):
        out.append(c)
        out.extend(descendants(c))
    return out


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), rest[0]


def process_tree(root: int) -> list[int]:
    """Every process below `root`, found through each one's parent in /proc: also
    the children of a thread, which /proc/PID/task/PID/children does not list."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := proc_stat(int(name))) is not None:
            kids.setdefault(st[0], []).append(int(name))
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key (0600) in `d`: (cert, key)."""
    cert, key = d / "cert.pem", d / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    os.chmod(key, 0o600)
    return cert, key


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every scrypt the password code runs, as it runs them."""
    calls: list[dict[str, Any]] = []
    real = passwords.hashlib.scrypt

    def spy(*a: Any, **k: Any) -> bytes:
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(passwords.hashlib, "scrypt", spy)
    return calls
