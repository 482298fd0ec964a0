"""Isolated mode (root) as a new user meets it: the README's config on a fresh machine,
one server per port, a home that cannot be entered, -v."""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ftpwarden import preflight
from ftpwarden.policy.config import ConfigError, load_config

from ..integration.conftest import REPO, start_server, stop_server
from .conftest import conf_at

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20


def ftpwarden(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI; one that has not ended in `timeout` (a server that started) is killed
    with every process it forked, and the test fails."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "ftpwarden", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"ftpwarden {' '.join(args)} still running after {timeout}s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def accounts():
    r = subprocess.run([str(REPO / "scripts" / "test-accounts")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return {"alice": pwd.getpwnam("ftpw_alice"), "ftp": pwd.getpwnam("ftp")}


# ---------------------------------------------------------------- the README example, as root

README_EXAMPLE = """\
# /etc/ftpwarden.conf
listen=YES
listen_port=21
anonymous_enable=YES
anon_root=/srv/ftp
no_anon_password=YES
write_enable=YES
# virtual users (our option): one line per user, name:hash[:options]
user_db_file=/etc/ftpwarden/users.db
local_root=/srv/ftp/incoming
pasv_min_port=40000
pasv_max_port=40100
ftpd_banner=Welcome.
"""


def _fresh_default_jail() -> None:
    """As on a fresh machine: our default secure_chroot_dir absent (removed only if empty)."""
    for d in (preflight.SECURE_DIR, os.path.dirname(preflight.SECURE_DIR)):
        try:
            os.rmdir(d)
        except (FileNotFoundError, OSError):
            pass


def test_readme_example_starts_as_root_on_a_fresh_machine(tmp_path_factory, accounts):
    readme = (REPO / "README.md").read_text()
    assert README_EXAMPLE in readme  # the test runs what the README shows
    base = tmp_path_factory.mktemp("readme")
    os.chmod(base, 0o755)
    srv_ftp = base / "srv-ftp"
    (srv_ftp / "incoming").mkdir(parents=True)
    for d in (srv_ftp, srv_ftp / "incoming"):  # root's, as a jail's top must be
        os.chmod(d, 0o755)
    for f in (srv_ftp / "hello.txt", srv_ftp / "incoming" / "note.txt"):
        f.write_text(f"{f.name}\n")
        os.chmod(f, 0o644)
    db = base / "users.db"
    assert ftpwarden("user", "add", "--db", str(db), "alice", stdin=b"alice-pw\n").returncode == 0
    conf = base / "ftpwarden.conf"
    conf.write_text(README_EXAMPLE.replace("/srv/ftp", str(srv_ftp))
                    .replace("/etc/ftpwarden/users.db", str(db))
                    .replace("listen_port=21", "listen_port=0")
                    .replace("pasv_min_port=40000", "pasv_min_port=0")
                    .replace("pasv_max_port=40100", "pasv_max_port=0")
                    + "listen_address=127.0.0.1\n")
    _fresh_default_jail()

    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "serve would run isolated mode" in r.stdout.decode()
    assert f"secure_chroot_dir: {preflight.SECURE_DIR} (the default: root's, empty, 0755" in r.stdout.decode()

    srv = start_server(["--config", str(conf)], srv_ftp, base)
    try:
        st = os.lstat(preflight.SECURE_DIR)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
        assert os.listdir(preflight.SECURE_DIR) == []
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            assert ftp.connect(srv.host, srv.port) == "220 Welcome."
            ftp.login()
            buf = io.BytesIO()
            ftp.retrbinary("RETR hello.txt", buf.write)
            assert buf.getvalue() == b"hello.txt\n"
        with ftplib.FTP(timeout=TIMEOUT) as ftp:  # a virtual user, jailed in local_root
            ftp.connect(srv.host, srv.port)
            ftp.login("alice", "alice-pw")
            assert ftp.nlst() == ["note.txt"]
    finally:
        stop_server(srv)
    assert "Traceback" not in srv.stderr()
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 0 and "serve creates it" not in r.stdout.decode()  # it exists now


def _default_jail_cfg(tmp_path: Path, monkeypatch) -> object:
    monkeypatch.setattr(preflight, "SECURE_DIR", str(tmp_path / "ftpwarden" / "empty"))
    cfg, _ = load_config(None)
    return cfg


def test_default_jail_is_made_root_owned_empty_0755(tmp_path, monkeypatch):
    cfg = _default_jail_cfg(tmp_path, monkeypatch)
    assert preflight.secure_dir_problem(cfg) is None  # missing: to be made
    preflight.prepare_secure_dir(cfg)
    for d in (tmp_path / "ftpwarden", tmp_path / "ftpwarden" / "empty"):
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    assert preflight.secure_dir_problem(cfg) is None


@pytest.mark.parametrize("spoil, words", [
    (lambda d: (d / "planted").write_text("x"), "must be empty, owned by root"),
    (lambda d: os.chown(d, 65534, 65534), "must be empty, owned by root"),
    (lambda d: os.chmod(d, 0o777), "must be empty, owned by root"),
    (lambda d: (d.rmdir(), d.symlink_to("/tmp")), "must be an existing empty directory"),
])
def test_default_jail_that_exists_but_is_unsafe_is_refused(tmp_path, monkeypatch, spoil, words):
    cfg = _default_jail_cfg(tmp_path, monkeypatch)
    preflight.prepare_secure_dir(cfg)
    spoil(tmp_path / "ftpwarden" / "empty")
    assert words in (preflight.secure_dir_problem(cfg) or "")
    preflight.prepare_secure_dir(cfg)  # exists: left alone, still refused by the check


def test_default_jail_in_someone_elses_directory_is_refused(tmp_path, monkeypatch):
    cfg = _default_jail_cfg(tmp_path, monkeypatch)
    (tmp_path / "ftpwarden").mkdir(mode=0o755)
    os.chown(tmp_path / "ftpwarden", 65534, 65534)  # could swap "empty" for anything
    assert "owned by root" in (preflight.secure_dir_problem(cfg) or "")
    with pytest.raises(ConfigError, match="owned by root"):
        preflight.prepare_secure_dir(cfg)


# ---------------------------------------------------------------- one server per port

def test_a_second_isolated_server_cannot_share_the_port(tmp_path_factory):
    base = tmp_path_factory.mktemp("port")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES")
    first = start_server(["--config", str(conf)], anon, base)
    try:
        second = ftpwarden("serve", "--config", str(conf), "--port", str(first.port))
        assert second.returncode == 2
        err = second.stderr.decode()
        assert f"ftpwarden: cannot listen on 127.0.0.1:{first.port}: Address already in use" in err
        assert "Traceback" not in err
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            ftp.connect(first.host, first.port)
            ftp.login()
    finally:
        stop_server(first)


# ---------------------------------------------------------------- a home that cannot be entered

@pytest.mark.parametrize("chroot, state", [("YES", "missing"), ("NO", "missing"), ("YES", "unreadable")])
def test_home_that_cannot_be_entered_gets_500_oops(tmp_path_factory, accounts, chroot, state):
    base = tmp_path_factory.mktemp("home")
    homes = base / "homes"
    homes.mkdir(mode=0o755)
    home = homes / "ftpw_alice"
    if state == "unreadable":
        home.mkdir(mode=0o000)  # root's, mode 000: alice may not enter it
    conf = conf_at(base, "anonymous_enable=NO", "local_enable=YES", f"chroot_local_user={chroot}",
                   "pam_service_name=ftpwarden", "user_sub_token=$USER", f"local_root={homes}/$USER")
    srv = start_server(["--config", str(conf)], base, base)
    try:
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            ftp.connect(srv.host, srv.port)
            ftp.sendcmd("USER ftpw_alice")
            with pytest.raises(ftplib.error_perm) as e:
                ftp.sendcmd("PASS alice-pw-1")
        assert str(e.value) == f"500 OOPS: cannot change directory:{home}"
    finally:
        stop_server(srv)
    err = srv.stderr()
    # not chrooted, the user walks the whole path: pytest's 0700 directories may stop it first
    reason = "No such file or directory" if state == "missing" and chroot == "YES" else \
        "Permission denied" if chroot == "YES" else "(No such file or directory|Permission denied)"
    assert re.search(f"login ftpw_alice: cannot change directory to {re.escape(str(home))}: {reason}", err), err
    assert "Traceback" not in err


# ---------------------------------------------------------------- -v

def test_verbose_logs_isolated_sessions_to_stderr(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("verbose")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    (anon / "a.txt").write_text("anon file\n")
    os.chmod(anon / "a.txt", 0o644)
    incoming = anon / "incoming"
    incoming.mkdir()
    os.chown(incoming, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                   "write_enable=YES", "anon_upload_enable=YES", "anon_other_write_enable=YES")
    srv = start_server(["--config", str(conf), "-v"], anon, base)
    try:
        with ftplib.FTP(timeout=TIMEOUT) as ftp:
            ftp.connect(srv.host, srv.port)
            ftp.login()
            ftp.retrbinary("RETR a.txt", lambda b: None)
            ftp.storbinary("STOR incoming/up.txt", io.BytesIO(b"12345"))
            ftp.delete("incoming/up.txt")
    finally:
        stop_server(srv)
    err = srv.stderr()
    for expected in ['CONNECT: Client "127.0.0.1"', '[anonymous] OK LOGIN: Client "127.0.0.1"',
                     '[anonymous] OK DOWNLOAD: Client "127.0.0.1", "/a.txt", 10 bytes',
                     '[anonymous] OK UPLOAD: Client "127.0.0.1", "/incoming/up.txt", 5 bytes',
                     '[anonymous] OK DELETE: Client "127.0.0.1", "/incoming/up.txt"']:
        assert expected in err, (expected, err)
    shutil.rmtree(incoming, ignore_errors=True)
