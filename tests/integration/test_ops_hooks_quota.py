"""Issue 14, pooled mode: upload hooks (async, sync, refusal + quarantine) and per-user quotas
(552 at the crossing upload, usage = files on disk, SITE QUOTA, `ftpwarden quota recompute`),
with ftplib and curl at their defaults."""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ..conftest import wait_for
from .conftest import REPO

TIMEOUT = 20
IS_ROOT = os.geteuid() == 0
HOOK_USER = "nobody"


def ftpwarden(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=input,
                          capture_output=True, env=env, timeout=60)


@pytest.fixture
def hookdir() -> Path:
    """A directory the hook's user can reach (pytest's tmp_path is root's 0700): the hook
    programs, and `out/` where they write."""
    d = Path(tempfile.mkdtemp(prefix="ftpw-hooks-", dir="/tmp"))
    d.chmod(0o755)
    (d / "out").mkdir()
    (d / "out").chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def record_hook(d: Path, exit_code: int = 0) -> Path:
    """A hook that writes its environment, uid and argument to out/NAME.env (atomically)."""
    prog = d / f"record-{exit_code}.sh"
    prog.write_text(
        "#!/bin/sh\n"
        f"o={d}/out/$(basename \"$1\").env\n"
        "{ env; echo \"UID=$(id -u)\"; echo \"ARG=$1\"; } > \"$o.tmp\" && mv \"$o.tmp\" \"$o\"\n"
        "echo \"checked $1\"\n"
        f"exit {exit_code}\n")
    prog.chmod(0o755)
    return prog


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def make_site(make_server, tmp_path: Path, *, user_opts: str = "", **opts: str):
    """A pooled server from a config file: user alice (user file, `user_opts`) in an empty root."""
    root = tmp_path / "alice"
    root.mkdir()
    root.chmod(0o755)  # the hook's user reads the uploads
    db = tmp_path / "users.db"
    r = ftpwarden("user", "add", "--db", str(db), "alice", "--root", str(root), "--write", input=b"s3cret\n")
    assert r.returncode == 0, r.stderr
    if user_opts:
        db.write_text(db.read_text().rstrip("\n") + "," + user_opts + "\n")
    conf = {"listen": "YES", "listen_address": "127.0.0.1", "listen_port": "0", "anonymous_enable": "NO",
            "write_enable": "YES", "user_db_file": str(db), "local_root": str(root), "pooled": "YES",
            "delay_failed_login": "0", "worker_processes": "1", "local_umask": "022",
            "quota_state_dir": str(tmp_path / "quota")}
    if "upload_hook" in opts and IS_ROOT:
        conf["upload_hook_user"] = HOOK_USER
    conf.update(opts)
    path = tmp_path / "ftpwarden.conf"
    path.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    srv = make_server(root, "--config", str(path))
    return srv, root, path


def login(srv) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login("alice", "s3cret")
    return ftp


def curl_put(srv, local: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-T", str(local), f"ftp://alice:s3cret@{srv.host}:{srv.port}/{name}"],
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- hooks

def test_async_hook_records_environment(make_server, tmp_path, hookdir):
    srv, root, _ = make_site(make_server, tmp_path, upload_hook=str(record_hook(hookdir)))
    with login(srv) as ftp:
        resp = ftp.storbinary("STOR up.bin", io.BytesIO(b"x" * 12345))
        assert resp.startswith("226")
    env = read_env(wait_for(lambda: (p := hookdir / "out" / "up.bin.env").exists() and p, 15))
    assert env["FTPW_USER"] == "alice"
    assert env["FTPW_CLASS"] == "guest"
    assert env["FTPW_PATH"] == env["ARG"] == str(root.resolve() / "up.bin")
    assert env["FTPW_VPATH"] == "/up.bin"
    assert env["FTPW_SIZE"] == "12345"
    assert env["FTPW_CLIENT"] == "127.0.0.1"
    # nothing of the server's environment leaks in
    assert not {k for k in env if k not in ("PWD", "SHLVL", "_", "UID", "ARG", "PATH")
                and not k.startswith("FTPW_")}, env
    if IS_ROOT:
        assert int(env["UID"]) == pwd.getpwnam(HOOK_USER).pw_uid  # never root by accident
    assert (root / "up.bin").stat().st_size == 12345


def test_sync_hook_runs_before_226(make_server, tmp_path, hookdir):
    srv, _root, _ = make_site(make_server, tmp_path, upload_hook=str(record_hook(hookdir)),
                              upload_hook_sync="YES")
    with login(srv) as ftp:
        resp = ftp.storbinary("STOR a.txt", io.BytesIO(b"hello\n"))
        assert resp.startswith("226")
        assert (hookdir / "out" / "a.txt.env").exists()  # the 226 came after the hook
    r = curl_put(srv, Path(__file__), "b.py")  # curl at its defaults
    assert r.returncode == 0, r.stderr
    assert read_env(hookdir / "out" / "b.py.env")["FTPW_SIZE"] == str(Path(__file__).stat().st_size)


def test_sync_hook_refusal_quarantines(make_server, tmp_path, hookdir):
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    srv, root, _ = make_site(make_server, tmp_path, upload_hook=str(record_hook(hookdir, 1)),
                             upload_hook_sync="YES", upload_quarantine_dir=str(quarantine))
    with login(srv) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.storbinary("STOR bad.exe", io.BytesIO(b"MZ evil"))
        assert "bad.exe" not in ftp.nlst()
        ftp.voidcmd("NOOP")  # the session goes on
    assert not (root / "bad.exe").exists()
    moved = list(quarantine.iterdir())
    assert len(moved) == 1 and moved[0].name.endswith("-bad.exe") and moved[0].read_bytes() == b"MZ evil"
    r = curl_put(srv, Path(__file__), "bad2.py")
    assert r.returncode != 0 and "550" in r.stderr, (r.returncode, r.stderr)
    assert not (root / "bad2.py").exists() and len(list(quarantine.iterdir())) == 2
    assert "upload hook: failed (exit 1)" in srv.stderr()


def test_sync_hook_timeout_refuses(make_server, tmp_path, hookdir):
    prog = hookdir / "slow.sh"
    prog.write_text("#!/bin/sh\nsleep 30\n")
    prog.chmod(0o755)
    srv, root, _ = make_site(make_server, tmp_path, upload_hook=str(prog), upload_hook_sync="YES",
                             upload_hook_timeout="1")
    with login(srv) as ftp, pytest.raises(ftplib.error_perm, match=r"^550.*timed out"):
        ftp.storbinary("STOR slow.txt", io.BytesIO(b"x"))
    assert not (root / "slow.txt").exists()  # removed (no quarantine dir)


@pytest.mark.skipif(not IS_ROOT, reason="upload_hook_user is checked when started as root")
def test_hook_needs_a_user_as_root(tmp_path, hookdir):
    conf = tmp_path / "c.conf"
    conf.write_text(f"listen_port=0\nlisten_address=127.0.0.1\npooled=YES\nanon_root={tmp_path}\n"
                    f"upload_hook={record_hook(hookdir)}\n")
    r = ftpwarden("serve", "--config", str(conf))
    assert r.returncode == 2 and b"upload_hook_user" in r.stderr


# ---------------------------------------------------------------- quotas

def usage_file(tmp_path: Path) -> Path:
    return tmp_path / "quota" / "alice.usage"


def on_disk(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def test_byte_quota_552_and_usage_matches_disk(make_server, tmp_path):
    srv, root, _ = make_site(make_server, tmp_path, user_opts="quota_bytes=1000000")
    with login(srv) as ftp:
        assert ftp.storbinary("STOR one.bin", io.BytesIO(os.urandom(600_000))).startswith("226")
        with pytest.raises((ftplib.error_perm, OSError)) as e:  # the data connection may be cut first
            ftp.storbinary("STOR two.bin", io.BytesIO(os.urandom(600_000)))
            if not isinstance(e.value, ftplib.error_perm):
                ftp.getresp()
        if not isinstance(e.value, ftplib.error_perm):
            with pytest.raises(ftplib.error_perm, match=r"^552"):
                ftp.getresp()
        else:
            assert str(e.value).startswith("552")
        assert "two.bin" not in ftp.nlst()  # nothing half-written
        # an overwrite gets the replaced bytes back
        assert ftp.storbinary("STOR one.bin", io.BytesIO(b"y" * 900_000)).startswith("226")
        quota_reply = ftp.sendcmd("SITE QUOTA")
        assert quota_reply.startswith("200") and "900000 of 1000000" in quota_reply
        assert "QUOTA" in ftp.sendcmd("SITE HELP")
    assert on_disk(root) == (900_000, 1)
    assert usage_file(tmp_path).read_text().split() == ["900000", "1"]
    # curl at its defaults: the crossing upload fails with 552
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(200_000))
    r = curl_put(srv, big, "big.bin")
    assert r.returncode == 70, (r.returncode, r.stderr)  # CURLE_REMOTE_DISK_FULL: curl's name for 552
    assert on_disk(root) == (900_000, 1)
    assert usage_file(tmp_path).read_text().split() == ["900000", "1"]
    # a deletion gives the room back
    with login(srv) as ftp:
        ftp.delete("one.bin")
    assert usage_file(tmp_path).read_text().split() == ["0", "0"]
    assert curl_put(srv, big, "big.bin").returncode == 0
    assert usage_file(tmp_path).read_text().split() == ["200000", "1"] and on_disk(root) == (200_000, 1)


def test_file_quota_from_config_default(make_server, tmp_path):
    srv, root, _ = make_site(make_server, tmp_path, quota_files="2")
    with login(srv) as ftp:
        ftp.storbinary("STOR a", io.BytesIO(b"1"))
        ftp.storbinary("STOR b", io.BytesIO(b"22"))
        with pytest.raises(ftplib.error_perm, match=r"^552"):
            ftp.storbinary("STOR c", io.BytesIO(b"333"))
        assert ftp.storbinary("STOR a", io.BytesIO(b"4444")).startswith("226")  # an overwrite adds no file
        assert ftp.storbinary("APPE b", io.BytesIO(b"55")).startswith("226")
    assert on_disk(root) == (8, 2)
    assert usage_file(tmp_path).read_text().split() == ["8", "2"]


def test_quota_recompute_repairs_usage(make_server, tmp_path):
    srv, root, conf = make_site(make_server, tmp_path, user_opts="quota_bytes=100000")
    with login(srv) as ftp:
        ftp.storbinary("STOR a.bin", io.BytesIO(b"a" * 30_000))
    (root / "sub").mkdir()
    (root / "sub" / "behind.bin").write_bytes(b"b" * 20_000)  # changed behind the server's back
    os.symlink("/etc/passwd", root / "link")  # not followed
    usage_file(tmp_path).write_text("99999 7\n")  # wrong
    with login(srv) as ftp, pytest.raises(ftplib.error_perm, match=r"^552"):
        ftp.storbinary("STOR c.bin", io.BytesIO(b"c" * 10))
    r = ftpwarden("quota", "recompute", "alice", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert b"50000 bytes in 2 files" in r.stdout and b"was 99999 bytes in 7 files" in r.stdout
    assert usage_file(tmp_path).read_text().split() == ["50000", "2"]
    with login(srv) as ftp:
        assert ftp.storbinary("STOR c.bin", io.BytesIO(b"c" * 10)).startswith("226")
    assert usage_file(tmp_path).read_text().split() == ["50010", "3"]
    r = ftpwarden("quota", "show", "alice", "--config", str(conf))
    assert r.returncode == 0 and b"50010 bytes in 3 files" in r.stdout


@pytest.mark.parametrize("atomic", ["NO", "YES"])
def test_crossing_append_and_overwrite_leave_nothing_counted(make_server, tmp_path, atomic):
    srv, root, _ = make_site(make_server, tmp_path, user_opts="quota_bytes=100000", atomic_uploads=atomic)
    with login(srv) as ftp:
        ftp.storbinary("STOR a.bin", io.BytesIO(b"a" * 60_000))
        for cmd in ("APPE a.bin", "STOR b.bin"):  # each would cross: 552, the file as it was
            try:
                ftp.storbinary(cmd, io.BytesIO(b"b" * 50_000))
                raise AssertionError(f"{cmd} crossed the quota")
            except ftplib.error_perm as e:
                assert str(e).startswith("552"), e
            except OSError:
                with pytest.raises(ftplib.error_perm, match=r"^552"):
                    ftp.getresp()
        assert ftp.storbinary("STOR a.bin", io.BytesIO(b"c" * 90_000)).startswith("226")  # replaces 60000
    assert sorted(p.name for p in root.iterdir()) == ["a.bin"]
    assert (root / "a.bin").read_bytes() == b"c" * 90_000
    assert usage_file(tmp_path).read_text().split() == ["90000", "1"]


def test_rename_over_a_file_gives_its_room_back(make_server, tmp_path):
    srv, root, _ = make_site(make_server, tmp_path, user_opts="quota_bytes=100000")
    with login(srv) as ftp:
        ftp.storbinary("STOR a", io.BytesIO(b"a" * 1000))
        ftp.storbinary("STOR b", io.BytesIO(b"b" * 3000))
        ftp.rename("a", "b")
        ftp.rename("b", "b")  # onto itself: nothing changes
    assert on_disk(root) == (1000, 1)
    assert usage_file(tmp_path).read_text().split() == ["1000", "1"]
