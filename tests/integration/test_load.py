"""200 concurrent sessions against a pooled server with two workers.

Each session logs in and waits until all 200 are in (so they are held at the
same time), then does PWD, PASV+STOR of a small random file, PASV+RETR of it
back (sha256 compared), LIST, DELE and QUIT.  Zero errors, every byte checked,
and the server's processes and open descriptors come back to where they were.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from ..conftest import descendants, wait_for
from .conftest import Ctl, Prober, data_socket, fd_count, recv_all, serve

SESSIONS = 200
BUDGET = 60.0  # seconds for the whole test


def _threads(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                total += int(line.split()[1])
    return total


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _snapshot(srv) -> tuple[list[int], int]:
    pids = [srv.proc.pid, *descendants(srv.proc.pid)]
    return pids, fd_count(pids)


def _session(srv, i: int, barrier: threading.Barrier, errors: list[str], verified: list[int]) -> None:
    ctl = None
    try:
        ctl = Ctl(srv.host, srv.port, timeout=30).login()
        barrier.wait(30)  # all sessions are logged in at once
        name = f"load-{i}.bin"
        payload = os.urandom(1024 + (i * 7919) % 65536)
        digest = hashlib.sha256(payload).hexdigest()
        assert ctl.cmd("PWD").startswith(b'257 "/"')
        assert ctl.cmd("TYPE I").startswith(b"200")
        host, port = ctl.pasv()
        d = data_socket(host, port)
        ctl.send(f"STOR {name}")
        assert ctl.reply().startswith(b"150")
        d.sendall(payload)
        d.close()
        r = ctl.reply()
        assert r.startswith(b"226"), r
        host, port = ctl.pasv()
        d = data_socket(host, port)
        ctl.send(f"RETR {name}")
        assert ctl.reply().startswith(b"150")
        back = recv_all(d)
        d.close()
        assert ctl.reply().startswith(b"226")
        assert hashlib.sha256(back).hexdigest() == digest, f"{name}: bytes differ"
        host, port = ctl.pasv()
        d = data_socket(host, port)
        ctl.send("LIST")
        assert ctl.reply().startswith(b"150")
        listing = recv_all(d)
        d.close()
        assert ctl.reply().startswith(b"226")
        assert name.encode() in listing
        assert ctl.cmd(f"DELE {name}").startswith(b"250")
        assert ctl.cmd("QUIT").startswith(b"221")
        verified.append(len(payload))
    except BaseException as e:  # every failure is counted
        errors.append(f"session {i}: {e!r}")
        barrier.abort()
    finally:
        if ctl is not None:
            ctl.close()


def test_200_concurrent_mixed_sessions(make_server, tmp_path):
    started = time.monotonic()
    srv = serve(make_server, tmp_path, "max_per_ip=0", "max_clients=0", workers=2)
    assert wait_for(lambda: len(descendants(srv.proc.pid)) == 2)
    # warm up both workers (thread pools, caches), then take the baseline
    for _ in range(8):
        Ctl(srv.host, srv.port).login().cmd("QUIT")
    time.sleep(0.5)
    pids_before, fds_before = _snapshot(srv)
    threads_before = _threads(pids_before)
    rss_before = _rss_mib(pids_before)

    barrier = threading.Barrier(SESSIONS)
    errors: list[str] = []
    verified: list[int] = []
    clients = [threading.Thread(target=_session, args=(srv, i, barrier, errors, verified), daemon=True)
               for i in range(SESSIONS)]
    with Prober(srv, f"{SESSIONS} concurrent sessions"):
        t0 = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join(max(1.0, BUDGET - (time.monotonic() - started) - 10))
        elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in clients), "sessions still running at the time limit"

    def settled() -> bool:
        pids, fds = _snapshot(srv)
        return sorted(pids) == sorted(pids_before) and fds <= fds_before
    wait_for(settled, timeout=8)
    pids_after, fds_after = _snapshot(srv)
    threads_after = _threads(pids_after)
    rss_after = _rss_mib(pids_after)
    leftovers = sorted(p.name for p in srv.root.iterdir() if p.name.startswith("load-"))
    print(f"\nFIGURE load: {SESSIONS} sessions held at once, {len(verified)} verified "
          f"({sum(verified)} bytes each way), {len(errors)} errors, {elapsed:.1f} s; "
          f"processes {len(pids_before)} -> {len(pids_after)}, fds {fds_before} -> {fds_after}, "
          f"threads {threads_before} -> {threads_after} (the executors' bounded pools), "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert not errors, errors[:5]
    assert len(verified) == SESSIONS
    assert not leftovers
    assert sorted(pids_after) == sorted(pids_before)
    assert fds_after <= fds_before
    assert "Traceback" not in srv.stderr()
    assert time.monotonic() - started < BUDGET
