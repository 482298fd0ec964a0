"""Virtual users in a real PostgreSQL (user_db_url), pooled mode: `ftpwarden db init`,
`ftpwarden user ... --db postgresql://...`, logins on two nodes sharing the table, and
the database going down mid-run (421 for the logins that need it, nothing else stops)."""

from __future__ import annotations

import concurrent.futures
import ftplib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import process_tree
from ..services import free_port, postgres
from .conftest import REPO, Ctl

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 10
UNAVAILABLE = b"421 Service not available: the user database cannot be reached.\r\n"
DOWN_BOUND = 8.0  # seconds a login may take to get its 421 once the database is down


def ftpwarden(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout)


def user(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return ftpwarden("user", *args, stdin=stdin)


def node(make_server, tmp_path: Path, url: str, name: str, **opts: str):
    """A pooled server whose virtual users are in `url` (default root: tmp_path/default)."""
    default = tmp_path / "default"
    default.mkdir(exist_ok=True)
    anon = tmp_path / "anon"
    anon.mkdir(exist_ok=True)
    (anon / "pub.txt").write_bytes(b"public\n")
    base = dict(listen="YES", listen_address="127.0.0.1", listen_port="0", pooled="YES", worker_processes="1",
                anonymous_enable="YES", anon_root=str(anon), no_anon_password="YES", local_root=str(default),
                write_enable="YES", delay_failed_login="0", user_db_url=url)
    base.update(opts)
    conf = tmp_path / f"{name}.conf"
    conf.write_text("".join(f"{k}={v}\n" for k, v in base.items()))
    return make_server(default, "--config", str(conf))


def login(srv, name: str, password: str) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
    ftp.login(name, password)
    return ftp


def try_login(srv, name: str, password: str) -> tuple[bytes, float, bool]:
    """(the reply to PASS, seconds it took, whether the server closed the connection after it)."""
    c = Ctl(srv.host, srv.port, timeout=30)
    try:
        assert c.cmd(f"USER {name}").startswith(b"331")
        started = time.monotonic()
        reply = c.cmd(f"PASS {password}")
        took = time.monotonic() - started
        return reply, took, c.closed(timeout=5)
    finally:
        c.close()


def tables(pg) -> set[str]:
    out = pg.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'ftpwarden_%'").stdout
    return set(out.split())


def test_db_init_is_idempotent_and_user_commands_edit_the_table(tmp_path):
    with postgres() as pg:
        for _ in range(2):  # again on a ready database: nothing changes, no error
            r = ftpwarden("db", "init", "--db", pg.url)
            assert r.returncode == 0, r.stderr
        assert {"ftpwarden_users", "ftpwarden_bans", "ftpwarden_login_failures"} <= tables(pg)

        r = user("add", "--db", pg.url, "bob", "--root", str(tmp_path), "--write", "--umask", "027",
                 stdin="bob-pw\n")
        assert r.returncode == 0, r.stderr
        r = user("add", "--db", pg.url, "bob", stdin="other\n")
        assert r.returncode == 1 and "already exists" in r.stderr, r
        for bad in (["x/y"], ["anonymous"], ["x", "--umask", "999"], ["x", "--root", "rel"]):
            r = user("add", *bad, "--db", pg.url, stdin="pw\n")
            assert r.returncode == 1 and "Traceback" not in r.stderr, (bad, r)
        r = user("add", "--db", pg.url, "carol", "--read-only", stdin="carol-pw\n")
        assert r.returncode == 0, r.stderr
        r = user("list", "--db", pg.url)
        assert r.returncode == 0 and r.stdout.splitlines() == [f"bob\t{tmp_path}\tyes\t027", "carol\t-\tno\t-"], r

        old = pg.psql("SELECT hash FROM ftpwarden_users WHERE name = 'bob'").stdout
        assert old.startswith("$") and "bob-pw" not in old
        assert user("passwd", "--db", pg.url, "bob", stdin="bob-pw-2\n").returncode == 0
        row = pg.psql("SELECT hash, root, write, umask FROM ftpwarden_users WHERE name = 'bob'").stdout.strip()
        assert row.split("|")[0] != old.strip() and row.split("|")[1:] == [str(tmp_path), "t", "23"]  # options kept
        r = user("passwd", "--db", pg.url, "nobody", stdin="x\n")
        assert r.returncode == 1 and "no such user" in r.stderr

        assert user("del", "--db", pg.url, "carol").returncode == 0
        r = user("del", "--db", pg.url, "carol")
        assert r.returncode == 1 and "no such user" in r.stderr
        assert user("list", "--db", pg.url).stdout.splitlines() == [f"bob\t{tmp_path}\tyes\t027"]

        pg.psql("DROP TABLE ftpwarden_users")
        r = user("list", "--db", pg.url)
        assert r.returncode == 1 and "db init" in r.stderr and "Traceback" not in r.stderr, r

        pg.stop()
        started = time.monotonic()
        for args in (["user", "list", "--db", pg.url], ["db", "init", "--db", pg.url]):
            r = ftpwarden(*args)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r
            assert "127.0.0.1" in r.stderr and "refused" in r.stderr.lower(), r.stderr
        assert time.monotonic() - started < 20
    r = ftpwarden("db", "init", "--db", "mysql://h/db")
    assert r.returncode == 2 and "postgresql://" in r.stderr and "Traceback" not in r.stderr, r


def test_a_user_added_with_the_cli_logs_in_on_two_pooled_nodes(make_server, tmp_path):
    home = tmp_path / "bob-home"
    home.mkdir()
    (home / "mine.txt").write_bytes(b"bob's\n")
    with postgres() as pg:
        assert ftpwarden("db", "init", "--db", pg.url).returncode == 0
        n1 = node(make_server, tmp_path, pg.url, "n1")
        n2 = node(make_server, tmp_path, pg.url, "n2")  # same table, another process and port
        # added after both nodes started: nothing is cached, each login asks the table
        r = user("add", "--db", pg.url, "bob", "--root", str(home), "--write", "--umask", "027", stdin="bob-pw\n")
        assert r.returncode == 0, r.stderr
        assert user("add", "--db", pg.url, "carol", "--read-only", stdin="carol-pw\n").returncode == 0

        with login(n1, "bob", "bob-pw") as ftp:
            assert sorted(ftp.nlst()) == ["mine.txt"]  # root= honoured
            ftp.storbinary("STOR up.bin", io.BytesIO(b"x" * 100_000))
        assert (home / "up.bin").stat().st_mode & 0o777 == 0o640  # umask=027 honoured
        with login(n2, "bob", "bob-pw") as ftp:
            got = io.BytesIO()
            ftp.retrbinary("RETR up.bin", got.write)
            assert got.getvalue() == b"x" * 100_000

        for srv in (n1, n2):
            # no root=: the default root (local_root); write=no honoured
            with login(srv, "carol", "carol-pw") as ftp, pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.storbinary("STOR no.txt", io.BytesIO(b"no"))
            for name, password in (("bob", "wrong"), ("nobody", "bob-pw")):
                reply, _, _ = try_login(srv, name, password)
                assert reply.startswith(b"530"), reply

        assert user("passwd", "--db", pg.url, "bob", stdin="bob-pw-2\n").returncode == 0
        assert try_login(n2, "bob", "bob-pw")[0].startswith(b"530")
        login(n2, "bob", "bob-pw-2").quit()
        assert user("del", "--db", pg.url, "bob").returncode == 0
        assert try_login(n1, "bob", "bob-pw-2")[0].startswith(b"530")
    for srv in (n1, n2):
        assert "Traceback" not in srv.stderr(), srv.stderr()


def test_database_down_gives_421_and_nothing_else_stops(make_server, tmp_path):
    home = tmp_path / "bob-home"
    home.mkdir()
    with postgres() as pg:
        assert ftpwarden("db", "init", "--db", pg.url).returncode == 0
        assert user("add", "--db", pg.url, "bob", "--root", str(home), "--write", stdin="bob-pw\n").returncode == 0
        # a ban after 2 failures and a 3 s delay after each: a 421 must do neither
        srv = node(make_server, tmp_path, pg.url, "n1", ban_threshold="2", ban_window="60", delay_failed_login="3")
        login(srv, "bob", "bob-pw").quit()  # the node's pool is up
        open_session = login(srv, "bob", "bob-pw")

        pg.stop()
        times = []
        for _ in range(3):
            reply, took, closed = try_login(srv, "bob", "bob-pw")
            assert reply == UNAVAILABLE and closed, reply
            times.append(took)
        assert max(times) < 2.5, times  # refused at once: no delay_failed_login (3 s) either
        assert try_login(srv, "nobody-here", "x")[0] == UNAVAILABLE  # unknown names are asked of the table too
        # not counted toward a ban, and the rest of the server is unaffected
        with login(srv, "anonymous", "") as ftp:
            got = io.BytesIO()
            ftp.retrbinary("RETR pub.txt", got.write)
            assert got.getvalue() == b"public\n"
        # the session opened before the database went down goes on
        open_session.storbinary("STOR after.bin", io.BytesIO(b"y" * 200_000))
        got = io.BytesIO()
        open_session.retrbinary("RETR after.bin", got.write)
        assert got.getvalue() == b"y" * 200_000
        open_session.quit()

        pg.start()
        deadline = time.monotonic() + 15
        while (reply := try_login(srv, "bob", "bob-pw")[0]) != b"230 Login successful.\r\n":
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        login(srv, "bob", "bob-pw").quit()
        assert try_login(srv, "bob", "wrong")[0].startswith(b"530")
    err = srv.stderr()
    assert "Traceback" not in err, err
    assert "login bob from 127.0.0.1: 421, the user database cannot be reached" in err, err
    print(f"421 after {', '.join(f'{t:.2f}' for t in times)} s with the database down")


def test_a_hung_database_costs_a_bounded_wait(make_server, tmp_path):
    """A server that stops answering (SIGSTOP: the kernel still accepts and acknowledges)
    would block a query or a connect forever: the socket is cut after a deadline."""
    with postgres() as pg:
        assert ftpwarden("db", "init", "--db", pg.url).returncode == 0
        assert user("add", "--db", pg.url, "bob", stdin="bob-pw\n").returncode == 0
        srv = node(make_server, tmp_path, pg.url, "n1")
        login(srv, "bob", "bob-pw").quit()  # the node's pool is up: its connection will hang
        stopped = [pg.proc.pid, *process_tree(pg.proc.pid)]
        try:
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            times = []
            for _ in range(2):  # a pooled connection that hangs; then at once (the database is taken as hung)
                reply, took, closed = try_login(srv, "bob", "bob-pw")
                assert reply == UNAVAILABLE and closed, reply
                times.append(took)
            assert max(times) < DOWN_BOUND, times
            assert times[1] < 1.0, times
            # many logins of database users at once do not queue the others behind them
            # (one password thread per process: each would hold it for seconds)
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                waits = [pool.submit(try_login, srv, "bob", "bob-pw") for _ in range(5)]
                time.sleep(0.3)
                started = time.monotonic()
                with login(srv, "anonymous", "") as ftp:
                    anonymous = time.monotonic() - started
                    assert ftp.nlst() == ["pub.txt"]
                answers = [w.result(timeout=60) for w in waits]
            assert all(a[0] == UNAVAILABLE for a in answers), answers
            assert anonymous < DOWN_BOUND, f"an anonymous login waited {anonymous:.1f} s behind database users"
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while not (reply := try_login(srv, "bob", "bob-pw")[0]).startswith(b"230"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
    assert "Traceback" not in srv.stderr(), srv.stderr()
    print(f"421 after {', '.join(f'{t:.2f}' for t in times)} s with the database hung")


def test_the_server_starts_with_the_database_down_and_check_config_reads_the_url(make_server, tmp_path):
    """A database down is a runtime condition (421), not a config error; a URL of
    another kind is one, at its line."""
    dead = f"postgresql://ftpw@127.0.0.1:{free_port()}/ftpwarden"  # nothing listens there
    srv = node(make_server, tmp_path, dead, "n1")
    reply, took, closed = try_login(srv, "bob", "bob-pw")
    assert reply == UNAVAILABLE and closed and took < DOWN_BOUND, (reply, took)
    with login(srv, "anonymous", "") as ftp:
        assert ftp.nlst() == ["pub.txt"]
    assert "Traceback" not in srv.stderr(), srv.stderr()

    conf = tmp_path / "n1.conf"
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 0, r.stderr
    for bad in ("mysql://h/db", "postgresql:/no-host", "postgresql://h:99999/db"):
        r = ftpwarden("check-config", str(conf), "-o", f"user_db_url={bad}")
        assert r.returncode == 2 and "user_db_url" in r.stderr and "Traceback" not in r.stderr, r
        r = ftpwarden("serve", "--config", str(conf), "-o", f"user_db_url={bad}", timeout=30)
        assert r.returncode == 2 and "user_db_url" in r.stderr and "Traceback" not in r.stderr, r
