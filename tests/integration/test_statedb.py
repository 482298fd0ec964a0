"""state_db_url: bans and user_max_rate budgets shared by two pooled nodes through a real
PostgreSQL (tests/services.py), failing logins from distinct 127.0.0.x addresses."""

from __future__ import annotations

import ftplib
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..services import postgres

TIMEOUT = 10
BANNED = b"421 Too many failed logins from your address; try again later.\r\n"


def state_tables(pg) -> None:
    """The tables `ftpwarden db init` makes (ops/statedb.STATE_SCHEMA), made here directly."""
    import psycopg

    from ftpwarden.ops.statedb import STATE_SCHEMA
    with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(STATE_SCHEMA)


def node(make_server, tmp_path: Path, pg, name: str, *opts: str):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "2",
                      "--user", "alice:secret", "-o", "delay_failed_login=0", "-o", "ban_threshold=4",
                      "-o", f"vsftpd_log_file={tmp_path / name}.log", "-o", "xferlog_enable=YES",
                      "-o", f"state_db_url={pg.url}", "-o", f"node_name={name}", *opts)
    srv.extra["log"] = tmp_path / f"{name}.log"
    return srv


def greeting(srv, source: str) -> bytes:
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        return s.makefile("rb").readline()


def fail_once(srv, source: str) -> None:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("alice", "wrong-password")
    ftp.close()


def logs_in(srv, source: str) -> bool:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    ftp.login("alice", "secret")
    ok = ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    return ok


def until(pred, limit: float, step: float = 0.05) -> float | None:
    """Seconds until `pred()` held (polled), or None after `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if pred():
            return time.monotonic() - started
        time.sleep(step)
    return None


def bans_logged(srv) -> list[str]:
    return re.findall(r"BAN: Client \"[^\"]+\", \d+ seconds", srv.extra["log"].read_text())


@pytest.fixture
def pg():
    with postgres() as db:
        state_tables(db)
        yield db


def test_a_ban_on_one_node_holds_on_the_other(make_server, tmp_path, pg):
    a = node(make_server, tmp_path, pg, "node-a", "-o", "ban_seconds=3")
    b = node(make_server, tmp_path, pg, "node-b", "-o", "ban_seconds=3")
    bad, good = "127.0.0.9", "127.0.0.10"
    for srv in (a, b, a):
        fail_once(srv, bad)
    assert greeting(a, bad).startswith(b"220") and greeting(b, bad).startswith(b"220")  # 3 of 4
    fail_once(b, bad)  # the 4th, on b: each node counted only 2 itself
    took = until(lambda: greeting(a, bad) == BANNED, 5.0)
    print(f"the ban reached the other node in {took} s")
    assert took is not None and took < 1.5, (took, a.stderr(), b.stderr())
    assert greeting(b, bad) == BANNED
    assert logs_in(a, good) and logs_in(b, good)  # another address is untouched
    assert pg.psql("SELECT count(*) FROM ftpwarden_bans WHERE ip = '127.0.0.9'").stdout.strip() == "1"
    # the ban ends after ban_seconds, on both nodes
    ended = until(lambda: greeting(a, bad).startswith(b"220") and greeting(b, bad).startswith(b"220"), 8.0)
    print(f"the ban ended {ended} s after it was seen")
    assert ended is not None and ended < 4.5
    assert logs_in(a, bad)
    # each node logged the ban once (a learned from the database, b as well: no node had 4 itself)
    for srv in (a, b):
        assert len(bans_logged(srv)) == 1, srv.stderr()
        assert "Traceback" not in srv.stderr()


def test_the_database_down_keeps_logins_and_local_bans(make_server, tmp_path, pg):
    a = node(make_server, tmp_path, pg, "node-a")
    b = node(make_server, tmp_path, pg, "node-b")
    assert logs_in(a, "127.0.0.11")
    pg.stop()
    started = time.monotonic()
    assert logs_in(a, "127.0.0.11") and logs_in(b, "127.0.0.11")  # no hang, no 421
    for _ in range(4):  # a local ban still works: all 4 failures on a
        fail_once(a, "127.0.0.12")
    assert greeting(a, "127.0.0.12") == BANNED
    assert greeting(b, "127.0.0.12").startswith(b"220")  # not shared while the database is down
    took = time.monotonic() - started
    assert took < 8, took
    for srv in (a, b):
        assert wait_for(lambda srv=srv: "cannot be reached" in srv.stderr(), timeout=10), srv.stderr()
    # back: the failures made meanwhile were kept and the sync resumes
    pg.start()
    for srv in (a, b):
        assert wait_for(lambda srv=srv: "reachable again" in srv.stderr(), timeout=20), srv.stderr()
    assert until(lambda: greeting(b, "127.0.0.12") == BANNED, 5.0) is not None  # a's queued failures
    for srv in (b, a, b, a):
        fail_once(srv, "127.0.0.13")
    assert until(lambda: greeting(a, "127.0.0.13") == BANNED and greeting(b, "127.0.0.13") == BANNED,
                 3.0) is not None
    for srv in (a, b):
        text = srv.stderr()
        assert text.count("cannot be reached") == 2 and text.count("reachable again") == 2, text  # once per worker
        assert "Traceback" not in text


def _download(srv, source: str, name: str, user: str, password: str, counter: list[int],
              stop: threading.Event) -> None:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    with ftp.transfercmd(f"RETR {name}") as data:
        while not stop.is_set():
            chunk = data.recv(65536)
            if not chunk:
                break
            counter[0] += len(chunk)
    ftp.close()


def download_rate(clients: list, name: str = "big.bin", first: int = 20, warm: float = 1.5,
                  span: float = 3.0) -> float:
    """Bytes per second moved by one download per (server, user, password) of `clients` at once,
    after `warm` seconds; client i connects from 127.0.0.(first + i)."""
    counters = [[0] for _ in clients]
    stop = threading.Event()
    threads = [threading.Thread(target=_download, args=(srv, f"127.0.0.{first + i}", name, user, pw,
                                                       counters[i], stop))
               for i, (srv, user, pw) in enumerate(clients)]
    for t in threads:
        t.start()
    time.sleep(warm)
    before = sum(c[0] for c in counters)
    time.sleep(span)
    moved = sum(c[0] for c in counters) - before
    stop.set()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return moved / span


def test_user_max_rate_is_split_between_the_nodes(make_server, tmp_path, pg):
    rate = 300_000
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(8 * rate)
    a = node(make_server, tmp_path, pg, "node-a", "-o", f"user_max_rate={rate}")
    b = node(make_server, tmp_path, pg, "node-b", "-o", f"user_max_rate={rate}")
    single = download_rate([(a, "alice", "secret")])
    both = download_rate([(a, "alice", "secret"), (b, "alice", "secret")])
    print(f"user_max_rate {rate}: one node {single:.0f} B/s, two nodes together {both:.0f} B/s")
    assert single > 0.5 * rate
    assert both < 1.5 * single  # each node alone would give the whole rate: twice as much
    assert both > 0.5 * single
    rows = pg.psql("SELECT node FROM ftpwarden_rate_nodes WHERE account = 'alice' ORDER BY node").stdout.split()
    assert rows == ["node-a", "node-b"]


def test_old_rows_are_pruned_and_a_ban_is_one_row_per_address(pg):
    import psycopg

    from ftpwarden.ops.statedb import BanRule, StateStore
    rule = BanRule(threshold=2, seconds=60, window=600)
    with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
        store = StateStore(conn, "node-x")
        assert store.failure("127.0.0.40", 0.0, rule) == 0.0
        assert 59 < store.failure("127.0.0.40", 0.0, rule) <= 60  # the 2nd: a ban, on the DB's clock
        assert store.failure("127.0.0.40", 0.0, rule) == 0.0  # banned already: not counted, not extended
        assert [ip for ip, _ in store.bans()] == ["127.0.0.40"]
        assert store.shares(["alice"]) == {"alice": 1}
        conn.execute("INSERT INTO ftpwarden_login_failures (node, ip, at) VALUES"
                     " ('node-y', '127.0.0.41', now() - interval '11 minutes'),"
                     " ('node-y', '127.0.0.42', now() - interval '1 minute')")
        conn.execute("INSERT INTO ftpwarden_bans (ip, until, node) VALUES ('127.0.0.43', now() - interval '2 minutes',"
                     " 'node-y')")
        conn.execute("UPDATE ftpwarden_rate_nodes SET seen = now() - interval '2 minutes'")
        store.prune(600)
        left = conn.execute("SELECT host(ip) FROM ftpwarden_login_failures ORDER BY ip").fetchall()
        assert left == [("127.0.0.42",)]  # within ban_window; the ban's own failures went with it
        assert conn.execute("SELECT host(ip) FROM ftpwarden_bans").fetchall() == [("127.0.0.40",)]
        assert conn.execute("SELECT count(*) FROM ftpwarden_rate_nodes").fetchone() == (0,)
