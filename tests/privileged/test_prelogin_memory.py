"""Password checks are bounded across a listener's sessions (issue 18.4).

An scrypt check costs 16 MiB; unauthenticated clients must not be able to run hundreds
at once.  Each check runs in a short-lived child of the password checker (priv/checker.py,
issue 18.6) while the broker holds a slot for it; neither the listener+broker nor the
zygote ever holds the buffer.
The bound is the broker's count of checks in flight (priv/broker.py CHECKS_AT_ONCE).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ftpwarden.priv.broker import CHECKS_AT_ONCE

from ..conftest import proc_stat, process_tree
from ..integration.conftest import REPO, start_server, stop_server
from .conftest import is_checker

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
PAGE = os.sysconf("SC_PAGE_SIZE")
BIG = 10 << 20  # a root process this much above its pre-PASS RSS holds a hashing buffer


# ---------------------------------------------------------------- a real isolated server

def _root_rss(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                continue
            out[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return out


def _reply(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


@pytest.fixture
def scrypt_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("prelogin")
    os.chmod(base, 0o755)
    (base / "empty").mkdir(mode=0o755)
    data = base / "data"
    data.mkdir(mode=0o755)
    db = base / "users.db"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "ftpwarden", "user", "add", "--db", str(db), "carol",
                        "--root", str(data)], input=b"carol-pw\n", capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    conf = base / "c.conf"
    conf.write_text("\n".join([
        "listen=YES", "listen_address=127.0.0.1", "listen_port=0", "anonymous_enable=NO",
        f"user_db_file={db}", f"secure_chroot_dir={base / 'empty'}", "delay_failed_login=1",
        "ban_threshold=0", "max_per_ip=500", ""]))
    srv = start_server(["--config", str(conf)], data, base)
    yield srv
    stop_server(srv)


@needs_root
def test_parallel_failed_logins_hash_at_most_slots_at_once(scrypt_server):
    n, slots = 24, CHECKS_AT_ONCE
    conns = []
    try:
        for _ in range(n):
            s = socket.create_connection((scrypt_server.host, scrypt_server.port), timeout=60)
            conns.append(s)
            assert _reply(s).startswith(b"220")
        time.sleep(0.5)
        tree = process_tree(scrypt_server.proc.pid)
        (checker,) = [p for p in tree if is_checker(p)]
        before = _root_rss([scrypt_server.proc.pid, *(p for p in tree if p != checker)])  # listener, zygote
        base = _root_rss([checker])[checker]

        def hashing() -> int:
            """Check children (forked from the checker) this much above the checker's RSS."""
            kids = [p for p in process_tree(checker) if (st := proc_stat(p)) and st[0] == checker]
            return sum(1 for rss in _root_rss(kids).values() if rss - base > BIG)
        most, answered, errors = 0, [], []
        go = threading.Barrier(n + 1, timeout=30)

        def client(s: socket.socket, i: int) -> None:
            try:
                go.wait()
                s.sendall(b"USER carol\r\n" if i % 2 else b"USER nosuchuser\r\n")
                assert _reply(s).startswith(b"331")
                s.sendall(b"PASS wrong\r\n")
                answered.append(_reply(s))
            except Exception as e:  # reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=client, args=(s, i), daemon=True) for i, s in enumerate(conns)]
        for t in threads:
            t.start()
        go.wait()
        deadline = time.monotonic() + 60
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            most = max(most, hashing())
            time.sleep(0.01)
        for t in threads:
            t.join(5)
        assert not errors, errors[:3]
        assert len(answered) == n and all(a.startswith(b"530") for a in answered), answered[:3]
        assert 1 <= most <= slots, f"{most} checks held a hashing buffer at once (slots: {slots})"
        time.sleep(0.3)
        after = _root_rss(list(before))
        kept = [pid for pid, rss in after.items() if rss - before[pid] > BIG]
        assert not kept, f"the listener or the zygote holding a hashing buffer: {kept}"
        assert _root_rss([checker])[checker] - base < BIG, "the checker kept a hashing buffer"
    finally:
        for s in conns:
            s.close()
