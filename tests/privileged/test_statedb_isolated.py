"""state_db_url in isolated mode: the ftpwarden-state process (unprivileged, forked by the
broker) shares bans with a pooled node through a real PostgreSQL, holds none of the broker's
tables or files, and is started again when it dies."""

from __future__ import annotations

import ftplib
import os
import pwd
import signal
import socket
import time
from pathlib import Path

import pytest

from ..conftest import descendants, proc_stat, wait_for
from ..integration.conftest import start_server, stop_server
from ..integration.test_statedb import download_rate
from ..services import postgres
from .conftest import conf_at, ftp_over, inetd_session, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20
BANNED = b"421 Too many failed logins from your address; try again later.\r\n"
STATE = "ftpwarden-state"


@pytest.fixture
def make_nodes(tmp_path, accounts):
    """make_nodes(*options) -> (isolated node, pooled node, the database) sharing one state_db_url;
    the pooled node's quick-mode user is ftpw_alice:secret, so both nodes have that account."""
    import psycopg

    from ftpwarden.ops.statedb import STATE_SCHEMA
    started = []
    with postgres() as pg:
        with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(STATE_SCHEMA)

        def make(*extra: str):
            shared = [f"state_db_url={pg.url}", "delay_failed_login=0", "ban_threshold=4", "ban_seconds=30",
                      *extra]
            conf = write_conf(tmp_path, *shared, "node_name=iso", "xferlog_enable=YES",
                              f"vsftpd_log_file={tmp_path / 'iso.log'}")
            iso = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), tmp_path)
            started.append(iso)
            root = tmp_path / "pooled-root"
            root.mkdir(exist_ok=True)
            pooled = start_server([str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "2",
                                   "--user", "ftpw_alice:secret", "-o", "node_name=pooled",
                                   *(x for opt in shared for x in ("-o", opt))], root, tmp_path)
            started.append(pooled)
            iso.extra["log"] = tmp_path / "iso.log"
            return iso, pooled, pg
        try:
            yield make
        finally:
            for srv in started:
                stop_server(srv)


@pytest.fixture
def nodes(make_nodes):
    return make_nodes()


def greeting(srv, source: str) -> bytes:
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        return s.makefile("rb").readline()


def fail_once(srv, source: str) -> None:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("ftpw_alice", "not-her-password")
    ftp.close()


def logs_in(srv, source: str, user: str, password: str) -> bool:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    ftp.login(user, password)
    ok = ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    return ok


def banned_soon(servers, source: str, limit: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if all(greeting(srv, source) == BANNED for srv in servers):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def state_process(listener: int) -> int | None:
    found = [p for p in descendants(listener) if _comm(p) == STATE]
    return found[0] if len(found) == 1 else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_ban_is_shared_between_an_isolated_and_a_pooled_node(nodes):
    iso, pooled, _pg = nodes
    bad = "127.0.0.9"
    for srv in (iso, pooled, iso):
        fail_once(srv, bad)
    assert greeting(iso, bad).startswith(b"220") and greeting(pooled, bad).startswith(b"220")
    fail_once(pooled, bad)  # the 4th; each node counted 2 itself
    took = banned_soon([iso, pooled], bad, 5.0)
    print(f"banned on both nodes {took} s after the 4th failure")
    assert took is not None and took < 1.5, (took, iso.stderr())
    assert logs_in(iso, "127.0.0.10", "ftpw_alice", "alice-pw-1")
    assert logs_in(pooled, "127.0.0.10", "ftpw_alice", "secret")
    bans = wait_for(lambda: [line for line in iso.extra["log"].read_text().splitlines() if "BAN:" in line])
    assert len(bans) == 1 and 'BAN: Client "127.0.0.9", 30 seconds' in bans[0], bans  # learned, logged once
    # the other way round: failures mostly on the isolated node
    for srv in (pooled, iso, iso, iso):
        fail_once(srv, "127.0.0.11")
    assert banned_soon([iso, pooled], "127.0.0.11", 3.0) is not None
    assert "Traceback" not in iso.stderr()


def test_the_state_process_is_unprivileged_and_holds_nothing_of_the_broker(nodes):
    iso, _pooled, _pg = nodes
    pid = wait_for(lambda: state_process(iso.proc.pid))
    assert pid, descendants(iso.proc.pid)
    # forked by the zygote, whose heap never held a password (the broker's passes every login on)
    stat = proc_stat(pid)
    assert stat is not None and stat[0] == zygote(iso), (pid, descendants(iso.proc.pid))
    status = Path(f"/proc/{pid}/status").read_text()
    nopriv = pwd.getpwnam("nobody")  # nopriv_user's default
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(nopriv.pw_uid)] * 4, status
    assert "NoNewPrivs:\t1" in status
    assert os.stat(f"/proc/{pid}/fd").st_uid == 0  # not dumpable: its /proc files stay root's
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "ftpwarden-rates" not in maps and "/dev/shm/sem." not in maps
    assert not [line for line in maps.splitlines() if " rw-s " in line and "/dev/zero" in line], maps
    targets = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    others = {fd: t for fd, t in targets.items() if int(fd) > 2 and not t.startswith("socket:")}
    assert not others, targets  # its channel and its database connection, nothing else
    assert len(targets) <= 5, targets


def test_a_killed_state_process_is_started_again(nodes):
    iso, pooled, _pg = nodes
    first = wait_for(lambda: state_process(iso.proc.pid))
    assert first
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := state_process(iso.proc.pid)) and p != first and p, timeout=10)
    assert second, iso.stderr()
    assert wait_for(lambda: f"{STATE} (pid {first}) ended" in iso.stderr())
    time.sleep(1.0)  # it connects to the database
    for _ in range(4):  # all on the pooled node: the isolated node learns it through the new process
        fail_once(pooled, "127.0.0.12")
    assert banned_soon([iso], "127.0.0.12", 5.0) is not None, iso.stderr()
    assert iso.proc.poll() is None and "Traceback" not in iso.stderr()


def test_user_max_rate_is_split_between_an_isolated_and_a_pooled_node(make_nodes, accounts, tmp_path):
    rate = 300_000
    iso, pooled, pg = make_nodes(f"user_max_rate={rate}")
    home = Path(accounts["alice"].pw_dir)
    for where in (home, tmp_path / "pooled-root"):
        with open(where / "statedb-big.bin", "wb") as f:
            f.truncate(8 * rate)
    try:
        single = download_rate([(iso, "ftpw_alice", "alice-pw-1")], "statedb-big.bin", 30)
        both = download_rate([(iso, "ftpw_alice", "alice-pw-1"), (pooled, "ftpw_alice", "secret")],
                             "statedb-big.bin", 30)
    finally:
        (home / "statedb-big.bin").unlink()
    print(f"user_max_rate {rate}: the isolated node alone {single:.0f} B/s, both nodes together {both:.0f} B/s")
    assert single > 0.5 * rate
    assert 0.5 * single < both < 1.5 * single  # without the split: about twice as much
    nodes = pg.psql("SELECT node FROM ftpwarden_rate_nodes WHERE account = 'ftpw_alice' ORDER BY node").stdout
    assert nodes.split() == ["iso", "pooled"]


def test_inetd_mode_says_it_shares_no_bans(tmp_path):
    """listen=NO serves one session per process: state_db_url is not used, and start-up says so."""
    conf = conf_at(tmp_path, "anonymous_enable=YES", f"anon_root={tmp_path}", "state_db_url=postgresql://x@127.0.0.1:1/db")
    with inetd_session(conf) as (proc, client):
        ftp = ftp_over(client)
        assert ftp.welcome.startswith("220")
        ftp.quit()
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "state_db_url is not used with listen=NO" in proc.stderr.read().decode()
