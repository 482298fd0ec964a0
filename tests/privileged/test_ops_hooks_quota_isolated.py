"""Issue 14, isolated mode: the broker runs upload_hook (session processes may not execve)
and keeps the quota usage; a virtual user (guest_username=ftp) with quotas in the user file."""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import REPO, start_server, stop_server
from ..integration.test_ops_hooks_quota import hookdir, read_env, record_hook  # noqa: F401 (fixture)
from .conftest import conf_at

TIMEOUT = 20


def ftpwarden(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=input, capture_output=True,
                          env=env, timeout=60)


@pytest.fixture
def vsite(tmp_path_factory, accounts):
    """start(*lines) -> (server, root, conf): vera (user file, quota_bytes=1000000) as ftp in `root`."""
    base = tmp_path_factory.mktemp("hq")
    root = base / "v"
    root.mkdir()
    os.chown(root, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    db = base / "users.db"
    r = ftpwarden("user", "add", "--db", str(db), "vera", "--root", str(root), "--write", input=b"vera-pw\n")
    assert r.returncode == 0, r.stderr
    db.write_text(db.read_text().rstrip("\n") + ",quota_bytes=1000000\n")
    started = []

    def start(*lines: str):
        conf = conf_at(base, "anonymous_enable=NO", f"user_db_file={db}", "guest_username=ftp",
                       "write_enable=YES", "allow_writeable_chroot=YES", f"quota_state_dir={base / 'quota'}",
                       *lines)
        srv = start_server(["--config", str(conf)], base, base)
        started.append(srv)
        return srv, root, conf

    yield start
    for srv in started:
        stop_server(srv)


def login(srv) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login("vera", "vera-pw")
    return ftp


def test_async_hook_runs_from_the_broker(vsite, hookdir):  # noqa: F811
    srv, root, _ = vsite(f"upload_hook={record_hook(hookdir)}", "upload_hook_user=nobody")
    with login(srv) as ftp:
        assert ftp.storbinary("STOR up.bin", io.BytesIO(b"z" * 4321)).startswith("226")
    env = read_env(wait_for(lambda: (p := hookdir / "out" / "up.bin.env").exists() and p, 15))
    assert env["FTPW_USER"] == "vera" and env["FTPW_CLASS"] == "guest"
    assert env["FTPW_PATH"] == str(root / "up.bin") and env["FTPW_SIZE"] == "4321"
    assert env["FTPW_CLIENT"] == "127.0.0.1"
    assert int(env["UID"]) == pwd.getpwnam("nobody").pw_uid


def test_sync_hook_refusal_quarantines(vsite, hookdir, tmp_path):  # noqa: F811
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    srv, root, _ = vsite(f"upload_hook={record_hook(hookdir, 1)}", "upload_hook_user=nobody",
                         "upload_hook_sync=YES", f"upload_quarantine_dir={quarantine}")
    with login(srv) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.storbinary("STOR bad.exe", io.BytesIO(b"MZ evil"))
        ftp.voidcmd("NOOP")
    assert (hookdir / "out" / "bad.exe.env").exists()
    assert not (root / "bad.exe").exists()
    (moved,) = quarantine.iterdir()
    assert moved.read_bytes() == b"MZ evil"
    r = subprocess.run(["curl", "-sS", "-T", __file__, f"ftp://vera:vera-pw@{srv.host}:{srv.port}/b.py"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "550" in r.stderr, r.stderr


def test_quota_kept_by_the_broker(vsite, tmp_path):
    srv, root, conf = vsite()
    with login(srv) as ftp:
        assert ftp.storbinary("STOR one.bin", io.BytesIO(os.urandom(600_000))).startswith("226")
        try:
            ftp.storbinary("STOR two.bin", io.BytesIO(os.urandom(600_000)))
            raise AssertionError("the upload crossing the quota succeeded")
        except ftplib.error_perm as e:
            assert str(e).startswith("552")
        except OSError:  # the data connection was cut first: the reply follows
            with pytest.raises(ftplib.error_perm, match=r"^552"):
                ftp.getresp()
        assert "two.bin" not in ftp.nlst()
        assert "600000 of 1000000" in ftp.sendcmd("SITE QUOTA")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(500_000))
    r = subprocess.run(["curl", "-sS", "-T", str(big), f"ftp://vera:vera-pw@{srv.host}:{srv.port}/big.bin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 70, r.stderr  # curl's CURLE_REMOTE_DISK_FULL: the 552
    files = [p for p in root.rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["one.bin"]
    usage = Path(conf).parent / "quota" / "vera.usage"
    assert usage.read_text().split() == ["600000", "1"]
    assert oct(usage.stat().st_mode & 0o777) == "0o600" and usage.stat().st_uid == 0  # the broker's
    usage.write_text("1 1\n")
    r = ftpwarden("quota", "recompute", "vera", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert usage.read_text().split() == ["600000", "1"]
    with login(srv) as ftp:
        ftp.delete("one.bin")
    assert usage.read_text().split() == ["0", "0"]
