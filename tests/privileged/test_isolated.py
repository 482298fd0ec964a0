"""Isolated mode, started as root: who runs what, where it is jailed, and what survives what.

Everything is read from /proc of the real processes; nothing is mocked.
"""

from __future__ import annotations

import ftplib
import io
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import REPO, Server, start_server, stop_server
from .conftest import (
    conf_at,
    everyone,
    ftp_over,
    holders,
    ids,
    inetd_session,
    loopback_conf,
    session_processes,
    socket_inode,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20


# ---------------------------------------------------------------- /proc helpers

def root_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/root")


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def isolated(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("iso")
    os.chmod(base, 0o755)
    empty = base / "empty"
    empty.mkdir(mode=0o755)
    anon = base / "anon"
    (anon / "pub").mkdir(parents=True)
    (anon / "pub" / "readme.txt").write_text("public file\n")
    for p in (anon, anon / "pub", anon / "pub" / "readme.txt"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    incoming = anon / "incoming"
    incoming.mkdir()
    os.chown(incoming, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    home = Path(accounts["alice"].pw_dir)
    (home / "mine.txt").write_text("alice's file\n")
    os.chown(home / "mine.txt", accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    conf = base / "vsftpd.conf"
    conf.write_text("\n".join([
        "listen=YES", "listen_address=127.0.0.1", "listen_port=0",
        "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
        "anon_upload_enable=YES", "write_enable=YES",
        "local_enable=YES", "chroot_local_user=YES", "pam_service_name=ftpwarden",
        "allow_writeable_chroot=YES",  # homes belong to their users
        f"secure_chroot_dir={empty}", "connect_from_port_20=YES",
        "delay_failed_login=0", "max_per_ip=200", "max_clients=300",
        "pasv_min_port=41000", "pasv_max_port=41999", "",
    ]))
    srv = start_server(["--config", str(conf)], anon, base)
    srv.extra["conf"] = conf
    yield srv
    stop_server(srv)


def login(srv: Server, user: str = "anonymous", password: str = "") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    if user:
        ftp.login(user, password)
    return ftp


# ---------------------------------------------------------------- tests

def test_prelogin_worker_is_nopriv_in_the_empty_jail(isolated, accounts):
    ftp = login(isolated, user="")
    try:
        inode = socket_inode(ftp.sock)
        procs = wait_for(lambda: [p for p in session_processes(isolated) if ids(p)[0][0] != 0])
        nobody = accounts["nobody"]
        (worker,) = procs
        assert ids(worker) == ((nobody.pw_uid,) * 3, (nobody.pw_gid,) * 3)
        assert root_of(worker) == str(isolated.root.parent / "empty")
        # it alone holds the client socket: the listener and the zygote passed it on and closed it
        assert wait_for(lambda: holders(inode, everyone(isolated)) == [worker], timeout=5), \
            holders(inode, everyone(isolated))
    finally:
        ftp.close()


def test_real_user_runs_as_itself_jailed_at_home(isolated, accounts):
    alice = accounts["alice"]
    with login(isolated, "ftpw_alice", "alice-pw-1") as ftp:
        inode = socket_inode(ftp.sock)
        assert ftp.pwd() == "/"
        buf = io.BytesIO()
        ftp.retrbinary("RETR mine.txt", buf.write)
        assert buf.getvalue() == b"alice's file\n"
        ftp.storbinary("STOR up.txt", io.BytesIO(b"uploaded"))
        workers = wait_for(lambda: [p for p in session_processes(isolated) if ids(p)[0][0] == alice.pw_uid])
        (worker,) = workers
        assert ids(worker) == ((alice.pw_uid,) * 3, (alice.pw_gid,) * 3)
        assert root_of(worker) == alice.pw_dir
        readers = holders(inode, everyone(isolated))
        assert readers == [worker]  # no process holding the client socket runs as root
    st = os.stat(Path(alice.pw_dir) / "up.txt")
    assert (st.st_uid, st.st_gid) == (alice.pw_uid, alice.pw_gid)


def test_anonymous_runs_as_ftp_in_anon_root(isolated, accounts):
    ftp_user = accounts["ftp"]
    with login(isolated) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR pub/readme.txt", buf.write)
        assert buf.getvalue() == b"public file\n"
        ftp.storbinary("STOR incoming/drop.bin", io.BytesIO(b"drop"))
        (worker,) = wait_for(lambda: [p for p in session_processes(isolated) if ids(p)[0][0] == ftp_user.pw_uid])
        assert root_of(worker) == str(isolated.root)
    assert (isolated.root / "incoming" / "drop.bin").read_bytes() == b"drop"


def test_bad_password_and_unknown_user_look_alike(isolated):
    replies = []
    for user, pw in (("ftpw_alice", "wrong"), ("no_such_user_x", "wrong")):
        ftp = login(isolated, user="")
        with pytest.raises(ftplib.error_perm) as e:
            ftp.login(user, pw)
        replies.append(str(e.value))
        ftp.close()
    assert replies[0] == replies[1] and replies[0].startswith("530")


def test_chroot_escapes_fail(isolated, accounts):
    home = Path(accounts["alice"].pw_dir)
    link = home / "etc-link"
    if link.is_symlink():
        link.unlink()
    os.symlink("/etc", link)
    with login(isolated, "ftpw_alice", "alice-pw-1") as ftp:
        for path in ("../../etc/shadow", "/etc/shadow", "etc-link/shadow", "../../../../etc/passwd"):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.retrbinary(f"RETR {path}", lambda b: None)
        ftp.cwd("/../../..")
        assert ftp.pwd() == "/"
        assert "mine.txt" in ftp.nlst()


def test_active_mode_data_comes_from_port_20(isolated):
    with login(isolated) as ftp:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        ftp.sendcmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}")
        ftp.putcmd("RETR pub/readme.txt")
        conn, peer = listener.accept()
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        conn.close()
        listener.close()
        assert ftp.getresp().startswith("150")
        assert ftp.voidresp().startswith("226")
        assert peer[1] == 20
        assert data == b"public file\n"


def test_killing_one_worker_leaves_the_rest(isolated, accounts):
    a = login(isolated)
    b = login(isolated, "ftpw_alice", "alice-pw-1")
    try:
        alice_uid = accounts["alice"].pw_uid
        (victim,) = wait_for(lambda: [p for p in session_processes(isolated) if ids(p)[0][0] == alice_uid])
        os.kill(victim, signal.SIGKILL)
        assert a.sendcmd("NOOP").startswith("200")
        with pytest.raises((EOFError, ConnectionError, ftplib.error_temp, OSError)):
            b.sendcmd("NOOP")
        with login(isolated) as c:
            assert c.sendcmd("NOOP").startswith("200")
        with login(isolated, "ftpw_alice", "alice-pw-1") as d:  # the killed identity logs in again
            assert d.sendcmd("NOOP").startswith("200")
        assert isolated.proc.poll() is None
    finally:
        a.close()
        b.close()


def test_pipelined_commands_after_pass_are_not_lost(isolated):
    with socket.create_connection((isolated.host, isolated.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"USER ftpw_alice\r\nPASS alice-pw-1\r\nPWD\r\nSYST\r\nQUIT\r\n")
        lines = [f.readline() for _ in range(5)]
    assert [line[:3] for line in lines] == [b"331", b"230", b"257", b"215", b"221"], lines


def test_userlist_refuses_at_user_before_a_password(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("ul")
    ulist = base / "user_list"
    ulist.write_text("ftpw_bob\n")
    conf = loopback_conf(base, "anonymous_enable=NO", "local_enable=YES", "chroot_local_user=YES",
                         "pam_service_name=ftpwarden", "delay_failed_login=0", "userlist_enable=YES",
                         f"userlist_file={ulist}", "userlist_deny=YES")
    srv = start_server(["--config", str(conf)], base, base)
    try:
        ftp = login(srv, user="")
        assert ftp.sendcmd("USER ftpw_alice").startswith("331")
        ftp.close()
        ftp = login(srv, user="")
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.sendcmd("USER ftpw_bob")  # refused before any password is asked
        ftp.close()
    finally:
        stop_server(srv)


def test_virtual_user_runs_as_the_guest_account(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("guest")
    root = base / "v"
    root.mkdir()
    os.chown(root, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    db = base / "users.db"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([os.sys.executable, "-m", "ftpwarden", "user", "add", "--db", str(db), "vera",
                        "--root", str(root), "--write"], input=b"vera-pw\n", capture_output=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    conf = conf_at(base, "anonymous_enable=NO", f"user_db_file={db}", "guest_username=ftp", "write_enable=YES",
                   "allow_writeable_chroot=YES")
    srv = start_server(["--config", str(conf)], base, base)
    try:
        with login(srv, "vera", "vera-pw") as ftp:
            ftp.storbinary("STOR v.txt", io.BytesIO(b"virtual"))
            ftp_uid = accounts["ftp"].pw_uid
            (worker,) = wait_for(lambda: [p for p in session_processes(srv) if ids(p)[0][0] == ftp_uid])
            assert ids(worker)[0] == (ftp_uid,) * 3
            assert root_of(worker) == str(root)
        assert (root / "v.txt").stat().st_uid == ftp_uid
    finally:
        stop_server(srv)


def test_chown_uploads_through_the_broker(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("chown")
    anon = base / "anon"
    (anon / "in").mkdir(parents=True)
    os.chown(anon / "in", accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                   "write_enable=YES", "anon_upload_enable=YES", "chown_uploads=YES",
                   "chown_username=ftpw_bob", "chown_upload_mode=0640")
    srv = start_server(["--config", str(conf)], anon, base)
    try:
        with login(srv) as ftp:
            ftp.storbinary("STOR in/given.bin", io.BytesIO(b"x" * 1000))
        st = os.stat(anon / "in" / "given.bin")
        assert st.st_uid == accounts["bob"].pw_uid
        assert st.st_mode & 0o777 == 0o640
    finally:
        stop_server(srv)


def test_max_per_ip_in_isolated_mode(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES", "max_per_ip=2")
    srv = start_server(["--config", str(conf)], anon, base)
    held = []
    try:
        for _ in range(2):
            held.append(login(srv))
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            login(srv)
        other = ftplib.FTP(timeout=TIMEOUT)
        assert other.connect(srv.host, srv.port, source_address=("127.0.0.2", 0)).startswith("220")
        other.close()
        held.pop().close()
        assert wait_for(lambda: _can_connect(srv), timeout=10)
    finally:
        for f in held:
            f.close()
        stop_server(srv)


def _can_connect(srv: Server) -> bool:
    try:
        with login(srv, user="") as ftp:
            return ftp.welcome.startswith("220")
    except ftplib.error_temp:
        return False


def test_sighup_rereads_the_config_for_new_sessions(tmp_path_factory):
    base = tmp_path_factory.mktemp("hup")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                   "ftpd_banner=before reload")
    srv = start_server(["--config", str(conf)], anon, base)
    try:
        with login(srv, user="") as ftp:
            assert "before reload" in ftp.welcome
        conf.write_text(conf.read_text().replace("before reload", "after reload"))
        os.kill(srv.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "after reload" in login(srv, user="").welcome, timeout=10)
    finally:
        stop_server(srv)
    assert srv.proc.returncode == 0


def test_inetd_mode_serves_one_session_on_stdin(tmp_path_factory):
    base = tmp_path_factory.mktemp("inetd")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    (anon / "f.txt").write_text("inetd\n")
    os.chmod(anon / "f.txt", 0o644)
    conf = conf_at(base, "listen_ipv6=NO", "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES")
    with inetd_session(conf) as (proc, client):
        ftp = ftp_over(client, TIMEOUT)
        assert ftp.welcome.startswith("220")
        ftp.login()
        buf = io.BytesIO()
        ftp.retrbinary("RETR f.txt", buf.write)
        assert buf.getvalue() == b"inetd\n"
        ftp.quit()
        assert proc.wait(10) == 0


def test_writable_chroot_root_is_refused_unless_allowed(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("wr")
    conf = conf_at(base, "anonymous_enable=NO", "local_enable=YES", "chroot_local_user=YES",
                   "pam_service_name=ftpwarden")
    srv = start_server(["--config", str(conf)], base, base)
    try:
        ftp = login(srv, user="")
        ftp.sendcmd("USER ftpw_alice")
        with pytest.raises(ftplib.error_perm, match=r"^500 OOPS.*allow_writeable_chroot"):
            ftp.sendcmd("PASS alice-pw-1")
        ftp.close()
    finally:
        stop_server(srv)


def test_jailed_sessions_write_the_logs(tmp_path_factory, accounts):
    """xferlog and the vsftpd log from real, guest and anonymous sessions, all jailed."""
    base = tmp_path_factory.mktemp("logs")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    (anon / "a.txt").write_text("anon file\n")
    os.chmod(anon / "a.txt", 0o644)
    vroot = base / "v"
    vroot.mkdir()
    os.chown(vroot, accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    db = base / "users.db"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([os.sys.executable, "-m", "ftpwarden", "user", "add", "--db", str(db), "gina",
                        "--root", str(vroot), "--write"], input=b"gina-pw\n", capture_output=True, env=env,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    logs = base / "logs"
    logs.mkdir(mode=0o700)  # nothing in a jail can reach this directory
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                   "local_enable=YES", "chroot_local_user=YES", "allow_writeable_chroot=YES",
                   "pam_service_name=ftpwarden", "write_enable=YES", f"user_db_file={db}",
                   "xferlog_enable=YES", "xferlog_std_format=YES", f"xferlog_file={logs / 'xferlog'}",
                   "dual_log_enable=YES", f"vsftpd_log_file={logs / 'vsftpd.log'}")
    srv = start_server(["--config", str(conf)], anon, base)
    try:
        with login(srv) as ftp:
            ftp.retrbinary("RETR a.txt", lambda b: None)
        with login(srv, "ftpw_alice", "alice-pw-1") as ftp:
            ftp.storbinary("STOR logged.bin", io.BytesIO(b"x" * 1234))
        with login(srv, "gina", "gina-pw") as ftp:
            ftp.storbinary("STOR g.bin", io.BytesIO(b"y" * 99))
        with pytest.raises(ftplib.error_perm):
            login(srv, "ftpw_alice", "not-the-password")
    finally:
        stop_server(srv)
    lines = [line.split() for line in (logs / "xferlog").read_text().splitlines()]
    # date (5 fields), time, host, size, name, type, flag, direction, mode, user, service, auth, id, status
    by_mode = {f[12]: f for f in lines}
    assert set(by_mode) == {"a", "r", "g"}, lines
    assert by_mode["a"][7] == "10" and by_mode["a"][11] == "o"
    assert by_mode["r"][7] == "1234" and by_mode["r"][11] == "i" and by_mode["r"][13] == "ftpw_alice"
    assert by_mode["g"][7] == "99" and by_mode["g"][13] == "gina"
    assert all(f[-1] == "c" for f in lines)
    vlog = (logs / "vsftpd.log").read_text()
    assert "OK UPLOAD" in vlog and "FAIL LOGIN" in vlog and "[ftpw_alice]" in vlog
    assert "not-the-password" not in vlog + (logs / "xferlog").read_text()
