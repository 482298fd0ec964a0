"""Virtual users in a real PostgreSQL (user_db_url), isolated mode: the login is decided
by a check child of the password checker, which connects for that one check; the
database down gives 421 (checker -> broker -> pre-login process), and logins work
again once it is back.  inetd mode (a checker per session) does the same."""

from __future__ import annotations

import ftplib
import io
import json
import os
import time

import pytest

from ..integration.conftest import Ctl, start_server, stop_server
from ..integration.test_pgusers import UNAVAILABLE, ftpwarden, user
from ..services import postgres
from .conftest import ftp_over, inetd_session, loopback_conf

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 10

def login(srv, name: str, password: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(name, password)
    return ftp


def try_login(srv, name: str, password: str) -> tuple[bytes, float, bool]:
    c = Ctl(srv.host, srv.port, timeout=30)
    try:
        assert c.cmd(f"USER {name}").startswith(b"331")
        started = time.monotonic()
        reply = c.cmd(f"PASS {password}")
        return reply, time.monotonic() - started, c.closed(timeout=5)
    finally:
        c.close()


def site(base, accounts, url: str, *lines: str):
    """Anonymous (read-only) and the table's users, who run as `ftp` jailed in their root."""
    home = base / "vera"
    home.mkdir()
    os.chown(home, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    anon = base / "anon"
    anon.mkdir()
    (anon / "pub.txt").write_bytes(b"public\n")
    conf = loopback_conf(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                   f"user_db_url={url}", "guest_username=ftp", "write_enable=YES", "allow_writeable_chroot=YES",
                   *lines)
    r = user("add", "--db", url, "vera", "--root", str(home), "--write", stdin="vera-pw\n")
    assert r.returncode == 0, r.stderr
    return conf, home


def test_login_through_the_checker_and_421_while_the_database_is_down(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("pgiso")
    with postgres() as pg:
        assert ftpwarden("db", "init", "--db", pg.url).returncode == 0
        conf, home = site(base, accounts, pg.url, "ban_threshold=2", "ban_window=60", "delay_failed_login=3",
                          f"json_log_file={base / 'events.json'}")
        srv = start_server(["--config", str(conf)], home, base)
        try:
            with login(srv, "vera", "vera-pw") as ftp:
                ftp.storbinary("STOR v.txt", io.BytesIO(b"virtual"))
            assert (home / "v.txt").stat().st_uid == accounts["ftp"].pw_uid
            assert try_login(srv, "vera", "wrong")[0].startswith(b"530")
            open_session = login(srv, "vera", "vera-pw")

            pg.stop()
            times = []
            for _ in range(3):  # more than ban_threshold: a 421 is not a failed login
                reply, took, closed = try_login(srv, "vera", "vera-pw")
                assert reply == UNAVAILABLE and closed, reply
                times.append(took)
            assert max(times) < 2.5, times  # refused at once: no delay_failed_login (3 s) either
            with login(srv, "anonymous", "") as ftp:
                got = io.BytesIO()
                ftp.retrbinary("RETR pub.txt", got.write)
                assert got.getvalue() == b"public\n"
            open_session.storbinary("STOR after.bin", io.BytesIO(b"y" * 100_000))
            assert (home / "after.bin").read_bytes() == b"y" * 100_000
            open_session.quit()

            pg.start()
            deadline = time.monotonic() + 15
            while not (reply := try_login(srv, "vera", "vera-pw")[0]).startswith(b"230"):
                assert time.monotonic() < deadline, reply
                time.sleep(0.2)
        finally:
            stop_server(srv)
    err = srv.stderr()
    assert "Traceback" not in err, err
    assert "login vera from 127.0.0.1: 421, the user database cannot be reached" in err, err
    events = [json.loads(line) for line in (base / "events.json").read_text().splitlines()]
    failed = [e for e in events if e.get("event") == "login" and not e.get("ok")]
    assert sum("user database unreachable" in str(e.get("reason")) for e in failed) == 3, failed
    print(f"isolated: 421 after {', '.join(f'{t:.2f}' for t in times)} s with the database down")


def test_inetd_mode_answers_421_while_the_database_is_down(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("pginetd")
    with postgres() as pg:
        assert ftpwarden("db", "init", "--db", pg.url).returncode == 0
        conf, _ = site(base, accounts, pg.url, "delay_failed_login=0")
        with inetd_session(conf) as (_proc, client):
            ftp_over(client).login("vera", "vera-pw")
        pg.stop()
        with inetd_session(conf) as (_proc, client):
            ftp = ftp_over(client)
            ftp.sendcmd("USER vera")
            with pytest.raises(ftplib.error_temp, match=r"^421 Service not available"):
                ftp.sendcmd("PASS vera-pw")
