"""No process that runs as nopriv_user or as a login user holds hash material (issue 18.6).

Only the password checker (priv/checker.py) loads the user DB and runs PAM; the
listener+broker asks it and gets the account's fields, never a hash; the zygote,
which forks every unprivileged process, never asks at all.  The scan reads /proc/PID/mem as root:
every hash of the user file and every shadow hash of the test accounts.
"""

from __future__ import annotations

import dataclasses
import ftplib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from ftpwarden.priv.channel import channel_pair

from ..conftest import descendants, proc_stat, wait_for
from ..integration.conftest import REPO, start_server, stop_server, tls_login
from .conftest import ids, is_checker, memory_holds, tls_lines, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 30
SHADOW_USERS = ("ftpw_alice", "ftpw_bob", "ftpw_noshell")


def _needle(stored: str) -> bytes:
    """The digest part of a crypt-style hash (after its last '$'): in memory whether
    the line, the hash string or a copy of the digest text was kept."""
    digest = stored.rsplit("$", 1)[1]
    assert len(digest) >= 20, stored
    return digest[-22:].encode()


def _user_db(base: Path, root: Path) -> list[bytes]:
    """A user file of scrypt (`ftpwarden user add`) and bcrypt lines; the needles of its hashes."""
    db = base / "users.db"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for name in ("carol", "dave"):
        r = subprocess.run([sys.executable, "-m", "ftpwarden", "user", "add", "--db", str(db), name,
                            "--root", str(root)], input=f"{name}-pw\n".encode(), capture_output=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
    with open(db, "a") as f:
        for name in ("erin", "frank"):
            f.write(f"{name}:{bcrypt.hashpw(f'{name}-pw'.encode(), bcrypt.gensalt(4)).decode()}\n")
    os.chmod(db, 0o600)
    hashes = [line.split(":")[1] for line in db.read_text().splitlines() if line.strip()]
    assert len(hashes) == 4 and sum(h.startswith("$scrypt$") for h in hashes) == 2
    return [_needle(h) for h in hashes]


def _shadow_needles() -> list[bytes]:
    out = []
    for line in Path("/etc/shadow").read_text().splitlines():
        name, stored = line.split(":")[:2]
        if name in SHADOW_USERS:
            out.append(_needle(stored))
    assert len(out) == len(SHADOW_USERS)
    return out


@pytest.fixture
def hash_server(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("hashes")
    data = base / "virtual"
    data.mkdir(mode=0o755)
    needles = _user_db(base, data)
    conf = write_conf(base, "delay_failed_login=0", f"user_db_file={base / 'users.db'}", f"local_root={data}",
                      *tls_lines(base), "force_local_logins_ssl=NO",
                      "force_local_data_ssl=NO")  # plain and TLS logins
    home = Path(accounts["alice"].pw_dir)
    srv = start_server(["--config", str(conf)], home, base)
    srv.extra["needles"] = needles + _shadow_needles()
    srv.extra["base"] = base
    yield srv
    stop_server(srv)


def _scan(srv, login_uid: int, nobody_uid: int) -> None:
    needles = srv.extra["needles"]
    (worker,) = wait_for(lambda: [p for p in descendants(srv.proc.pid) if ids(p)[0][0] == login_uid], 10)
    procs = descendants(srv.proc.pid)
    unprivileged = [p for p in procs if ids(p)[0][0] != 0]
    assert worker in unprivileged
    held = {p: f for p in unprivileged if (f := memory_holds(p, needles))}
    assert not held, f"hash material in unprivileged processes: {held}"
    # root: the listener and the zygote hold none either; the checker does (the scan works)
    checkers = [p for p in procs if is_checker(p)]
    assert checkers, "no password checker"
    assert memory_holds(checkers[0], needles), "the scan finds the checker's user DB"
    root = [p for p in [srv.proc.pid, *procs] if p not in checkers and ids(p)[0][0] == 0]
    assert zygote(srv) in root
    root_held = {p: f for p in root if (f := memory_holds(p, needles))}
    assert not root_held, f"hash material in the listener or the zygote: {root_held}"
    assert any(ids(p)[0][0] == nobody_uid for p in procs) or login_uid != nobody_uid


def test_plain_login_leaves_no_hash_in_any_unprivileged_process(hash_server, accounts):
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(hash_server.host, hash_server.port)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("carol", "wrong")  # a failed check of a user-file account first
    ftp.login("ftpw_alice", "alice-pw-1")
    ftp.retrlines("LIST", lambda _line: None)
    _scan(hash_server, accounts["alice"].pw_uid, accounts["nobody"].pw_uid)
    ftp.quit()


def test_tls_login_leaves_no_hash_in_helper_or_worker(hash_server, accounts):
    with tls_login(hash_server, user="ftpw_alice", password="alice-pw-1", timeout=TIMEOUT) as ftp:
        buf = io.BytesIO()
        ftp.retrlines("LIST", lambda line: buf.write(line.encode()))
        procs = descendants(hash_server.proc.pid)
        assert [p for p in procs if ids(p)[0][0] == accounts["nobody"].pw_uid], "a TLS helper"
        _scan(hash_server, accounts["alice"].pw_uid, accounts["nobody"].pw_uid)


def test_virtual_user_login_works_through_the_checker(hash_server):
    for name in ("carol", "erin"):  # scrypt and bcrypt
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(hash_server.host, hash_server.port)
        assert ftp.login(name, f"{name}-pw").startswith("230")
        ftp.quit()


def _checker(srv) -> int:
    """The listener's password checker (its direct child of that name)."""
    found = wait_for(lambda: [p for p in descendants(srv.proc.pid)
                              if is_checker(p) and proc_stat(p) and proc_stat(p)[0] == srv.proc.pid], 10)
    assert len(found) == 1, found
    return found[0]


def test_a_dead_checker_refuses_then_is_replaced(hash_server):
    old = _checker(hash_server)
    waiting = ftplib.FTP(timeout=TIMEOUT)
    waiting.connect(hash_server.host, hash_server.port)  # connected while the old checker ran
    os.kill(old, signal.SIGKILL)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        waiting.login("carol", "carol-pw")  # never a grant without a checker
    waiting.close()
    new = wait_for(lambda: _checker(hash_server) if _checker(hash_server) != old else 0, 10)
    assert new and new != old
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(hash_server.host, hash_server.port)
    assert ftp.login("carol", "carol-pw").startswith("230")
    ftp.quit()


def test_sighup_reaches_the_checker(hash_server):
    """A config naming another user DB: after SIGHUP the checker knows only its users."""
    base = hash_server.extra["base"]
    conf = base / "c.conf"
    other = base / "other.db"
    other.write_text(f"gina:{bcrypt.hashpw(b'gina-pw', bcrypt.gensalt(4)).decode()}\n")
    os.chmod(other, 0o600)
    conf.write_text(conf.read_text().replace(f"user_db_file={base / 'users.db'}", f"user_db_file={other}"))
    checker = _checker(hash_server)
    os.kill(hash_server.proc.pid, signal.SIGHUP)

    def login(name: str) -> str:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(hash_server.host, hash_server.port)
        try:
            return ftp.login(name, f"{name}-pw")[:3]
        except ftplib.error_perm as e:
            return str(e)[:3]
        finally:
            ftp.close()
    assert wait_for(lambda: login("gina") == "230", 10)
    assert login("carol") == "530"
    assert _checker(hash_server) == checker  # reloaded, not restarted


def test_the_answer_carries_the_account_and_never_root():
    from ftpwarden.priv import checker
    from ftpwarden.priv.messages import CheckGranted, decode, encode
    from ftpwarden.proto.commands import Perm
    from ftpwarden.proto.principal import Principal, UserClass
    acct = Principal("carol", UserClass.GUEST, "/srv/v", frozenset({Perm.LIST, Perm.UPLOAD}), 0o022,
                     uid=1001, gid=1002, chroot=False, start_dir="/home/carol")
    msg = decode(encode(checker._granted(acct)))
    assert isinstance(msg, CheckGranted) and checker._account(msg) == acct
    with pytest.raises(ValueError):
        checker._account(dataclasses.replace(msg, uid=0))
    # a client whose checker is gone refuses, and asks no more
    mine, theirs = channel_pair()
    theirs.close()
    client = checker.CheckerClient(mine)
    assert client("carol", "carol-pw", "127.0.0.1") is None and client.chan is None
