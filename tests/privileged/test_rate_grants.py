"""user_max_rate in isolated mode: budgets on the privileged side, grants to the workers (issue 18.8).

The identity worker never maps the shared table (nor does the zygote that forks
it); the broker books bytes for the account of the session whose channel asks,
and answers how long to wait.  The server tests read
/proc of the real processes and measure real downloads; the table's clamps are
checked directly, without root.
"""

from __future__ import annotations

import ftplib
import os
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpwarden.net import limits
from ftpwarden.priv.channel import channel_pair
from ftpwarden.priv.messages import ChannelError, RateGrant, RateWait, decode, encode
from ftpwarden.priv.monitor import Monitor

from ..conftest import wait_for
from ..integration.conftest import Server, start_server, stop_server
from .conftest import ids, session_processes, shared_writable, write_conf, zygote

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
RATE = 500_000  # bytes/s, user_max_rate and local_max_rate
TIMEOUT = 10


# ---------------------------------------------------------------- the table, no root

def test_a_bad_table_entry_cannot_stall_a_grant():
    rates = limits.AccountRates(RATE)
    try:
        reserve = rates.reserve_for("someone")
        reserve(1)  # the account now has its slot
        # what a process holding the table could write: every slot booked for ages
        rates._mem[:] = struct.pack("=Id", 0xFFFFFFFF, 1e12) * (len(rates._mem) // 12)
        wait = reserve(limits.grant_size(RATE))
        assert 0 < wait <= limits.MAX_WAIT
    finally:
        rates.detach()


def test_grants_follow_the_rate_and_are_bounded():
    rates = limits.AccountRates(RATE)
    try:
        reserve = rates.reserve_for("someone")
        size = limits.grant_size(RATE)
        assert size <= limits.max_grant(RATE)
        waits = [reserve(size) for _ in range(5)]
        assert waits[-1] == pytest.approx(5 * size / RATE, abs=0.05)  # booked back to back
        assert size / RATE <= 0.25  # a transfer asks a few times a second, not once per many seconds
    finally:
        rates.detach()


def test_the_monitor_books_only_bounded_grants():
    rates = limits.AccountRates(RATE)
    mine, theirs = channel_pair()
    try:
        monitor = SimpleNamespace(account_rates=rates)  # all _rate_grant reads of the monitor
        reserve = rates.reserve_for("ftpw_alice")
        Monitor._rate_grant(monitor, mine, RateGrant(limits.grant_size(RATE)), reserve)  # type: ignore[arg-type]
        msg, _ = theirs.recv(RateWait)
        assert isinstance(msg, RateWait) and 0 < msg.micros <= limits.MAX_WAIT * 1e6
        for n in (0, -1, limits.max_grant(RATE) + 1, 1 << 62):  # a broken worker: the session ends
            with pytest.raises(ChannelError):
                Monitor._rate_grant(monitor, mine, RateGrant(n), reserve)  # type: ignore[arg-type]
        with pytest.raises(ChannelError):  # user_max_rate off: nothing to ask for
            Monitor._rate_grant(monitor, mine, RateGrant(1000), None)  # type: ignore[arg-type]
    finally:
        mine.close()
        theirs.close()
        rates.detach()


def test_grant_messages_round_trip():
    assert decode(encode(RateGrant(65536))) == RateGrant(65536)
    assert decode(encode(RateWait(120_000))) == RateWait(120_000)


# ---------------------------------------------------------------- isolated servers

def _homes(base: Path, accounts) -> tuple[Path, Path]:
    """Private roots for alice and bob (local_root=base/$USER): other tests use their real homes."""
    out = []
    for key in ("alice", "bob"):
        pw = accounts[key]
        d = base / pw.pw_name
        d.mkdir(mode=0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        out.append(d)
    return out[0], out[1]


def _file(d: Path, name: str, size: int) -> Path:
    p = d / name
    p.write_bytes(os.urandom(size))
    os.chmod(p, 0o644)
    return p


def _rooted(base: Path, *lines: str) -> Path:
    return write_conf(base, f"local_root={base}/$USER", "user_sub_token=$USER", *lines)


@pytest.fixture
def rated(tmp_path_factory, accounts):
    """An isolated server with user_max_rate; 1 MB for bob, 20 MB for alice."""
    base = tmp_path_factory.mktemp("rate")
    alice, bob = _homes(base, accounts)
    _file(alice, "a.bin", 20 << 20)
    _file(bob, "b.bin", 1_000_000)
    srv = start_server(["--config", str(_rooted(base, f"user_max_rate={RATE}", "max_per_ip=20"))], base, base)
    yield srv
    stop_server(srv)


def _login(srv: Server, user: str, password: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(user, password)
    return ftp


def _workers_of(srv: Server, uid: int) -> list[int]:
    return [p for p in session_processes(srv) if ids(p)[0][0] == uid]


def _poison(pid: int) -> None:
    """Do what a compromised worker could do with a table it maps: book every slot for ages."""
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        for line in shared_writable(pid):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            mem.seek(start)
            mem.write(struct.pack("=Id", 0xFFFFFFFF, 1e12) * ((end - start) // 12))


class Downloads:
    """`n` sessions of one account, each reading a big file; counts the bytes received."""

    def __init__(self, srv: Server, user: str, password: str, name: str, n: int) -> None:
        self.ftps = [_login(srv, user, password) for _ in range(n)]
        self.conns = []
        for ftp in self.ftps:
            ftp.voidcmd("TYPE I")
            self.conns.append(ftp.transfercmd(f"RETR {name}"))
        self.got = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(c,), daemon=True) for c in self.conns]
        for t in self.threads:
            t.start()

    def _read(self, conn) -> None:
        conn.settimeout(1.0)
        while not self.stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.got += len(data)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for c in self.conns:
            c.close()
        for ftp in self.ftps:
            ftp.close()


@needs_root
def test_postlogin_worker_does_not_map_the_rate_table(rated, accounts):
    with _login(rated, "ftpw_alice", "alice-pw-1") as ftp:
        ftp.voidcmd("NOOP")
        (worker,) = wait_for(lambda: _workers_of(rated, accounts["alice"].pw_uid))
        assert shared_writable(rated.proc.pid), "the broker keeps the table: the test can see one"
        assert shared_writable(worker) == []
        assert shared_writable(zygote(rated)) == []


@needs_root
def test_one_users_sessions_cannot_slow_another_users_download(rated, accounts):
    a = Downloads(rated, "ftpw_alice", "alice-pw-1", "a.bin", 3)
    try:
        for pid in wait_for(lambda: _workers_of(rated, accounts["alice"].pw_uid)):
            _poison(pid)
        time.sleep(0.3)
        with _login(rated, "ftpw_bob", "bob-pw-2") as ftp:
            started = time.monotonic()
            got = bytearray()
            ftp.retrbinary("RETR b.bin", got.extend)
            took = time.monotonic() - started
        assert len(got) == 1_000_000
        # bob's own budget: 2 s at RATE; alice's three sessions must not stretch it much
        assert 1_000_000 / RATE * 0.7 <= took <= 1_000_000 / RATE * 2.5
    finally:
        a.close()


@needs_root
def test_one_users_sessions_together_stay_at_user_max_rate(rated):
    a = Downloads(rated, "ftpw_alice", "alice-pw-1", "a.bin", 4)
    try:
        time.sleep(0.5)  # past the first chunks and socket buffers
        with a.lock:
            before, t0 = a.got, time.monotonic()
        time.sleep(3.0)
        with a.lock:
            after, t1 = a.got, time.monotonic()
    finally:
        a.close()
    rate = (after - before) / (t1 - t0)
    assert RATE * 0.5 <= rate <= RATE * 1.4, rate  # four sessions, one budget


@needs_root
def test_local_max_rate_still_limits_each_session(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("lrate")
    _alice, bob = _homes(base, accounts)
    f = _file(bob, "l.bin", 1_000_000)
    srv = start_server(["--config", str(_rooted(base, f"local_max_rate={RATE}"))], base, base)
    try:
        with _login(srv, "ftpw_bob", "bob-pw-2") as ftp:
            started = time.monotonic()
            got = bytearray()
            ftp.retrbinary("RETR l.bin", got.extend)
            took = time.monotonic() - started
        assert bytes(got) == f.read_bytes()
        assert 1_000_000 / RATE * 0.8 <= took <= 1_000_000 / RATE * 3
    finally:
        stop_server(srv)
