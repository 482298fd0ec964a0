"""`ftpwarden serve --config FILE`: a typical vsftpd.conf (anonymous download + virtual users)."""

from __future__ import annotations

import ftplib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import wait_for
from .conftest import REPO


def ftpwarden(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=input,
                          capture_output=True, env=env, timeout=60)


def write_conf(path: Path, **opts: str) -> Path:
    path.write_text("# written by the test\n" + "".join(f"{k}={v}\n" for k, v in opts.items()))
    return path


@pytest.fixture
def site(tmp_path: Path):
    anon = tmp_path / "anon"
    (anon / "pub").mkdir(parents=True)
    (anon / "pub" / "readme.txt").write_text("public\n")
    (anon / "pub" / "readme.txt").chmod(0o644)
    alice = tmp_path / "alice"
    alice.mkdir()
    db = tmp_path / "users.db"
    r = ftpwarden("user", "add", "--db", str(db), "alice", "--root", str(alice), "--write", input=b"s3cret\n")
    assert r.returncode == 0, r.stderr
    r = ftpwarden("user", "add", "--db", str(db), "bob", "--root", str(alice), "--read-only", input=b"bobpw\n")
    assert r.returncode == 0, r.stderr
    conf = write_conf(
        tmp_path / "vsftpd.conf", listen="YES", listen_address="127.0.0.1", listen_port="0",
        anonymous_enable="YES", no_anon_password="YES", anon_root=str(anon), write_enable="YES",
        anon_upload_enable="NO", user_db_file=str(db), local_root=str(alice), pooled="YES",
        ftpd_banner="Welcome to the test site.", worker_processes="2", delay_failed_login="0",
        pasv_min_port="40000", pasv_max_port="40100", ssl_sslv3="YES",
    )
    return conf, anon, alice


def test_typical_vsftpd_conf(make_server, site):
    conf, anon, alice = site
    srv = make_server(anon, "--config", str(conf))
    assert "option ssl_sslv3=YES is refused" in srv.stderr()  # refused on purpose: named, not ignored
    ftp = ftplib.FTP()
    assert "Welcome to the test site." in ftp.connect(srv.host, srv.port, timeout=20)
    ftp.login("anonymous", "")
    buf = io.BytesIO()
    ftp.retrbinary("RETR pub/readme.txt", buf.write)
    assert buf.getvalue() == b"public\n"
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.storbinary("STOR pub/new.txt", io.BytesIO(b"x"))
    ftp.quit()

    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=20)
        ftp.login("alice", "s3cret")
        ftp.storbinary("STOR hi.txt", io.BytesIO(b"from alice"))
    assert (alice / "hi.txt").read_bytes() == b"from alice"

    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=20)
        ftp.login("bob", "bobpw")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.storbinary("STOR bob.txt", io.BytesIO(b"x"))
        with ftplib.FTP() as ftp2:
            ftp2.connect(srv.host, srv.port, timeout=20)
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp2.login("alice", "wrong")


def test_passive_port_range_is_honoured(make_server, site):
    conf, anon, _ = site
    srv = make_server(anon, "--config", str(conf))
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=20)
        ftp.login("anonymous", "")
        for _ in range(5):
            _host, port = ftplib.parse227(ftp.sendcmd("PASV"))
            assert 40000 <= port <= 40100


def test_config_errors_name_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("listen=YES\nanonymous_enabel=YES\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode != 0
    err = r.stderr.decode()
    assert f"{conf}:2:" in err and "anonymous_enable" in err
    r = ftpwarden("serve", "--config", str(conf))
    assert r.returncode != 0 and f"{conf}:2:" in r.stderr.decode()
    conf.write_text("anon_umask=abc\n")
    assert f"{conf}:1:" in ftpwarden("check-config", str(conf)).stderr.decode()
    r = ftpwarden("check-config", str(conf), "-o", "anon_umask=022")
    assert r.returncode != 0  # the file's bad line still stops it


def test_check_config_ok_and_tunables(tmp_path):
    conf = write_conf(tmp_path / "ok.conf", anonymous_enable="NO", local_umask="022")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 0, r.stderr
    r = ftpwarden("tunables")
    out = r.stdout.decode()
    assert r.returncode == 0
    for name in ("anon_upload_enable", "pasv_min_port", "user_db_file", "worker_processes"):
        assert name in out


def test_max_per_ip_and_max_clients_across_workers(make_server, tmp_path):
    root = tmp_path / "lim"
    root.mkdir()
    conf = write_conf(tmp_path / "lim.conf", listen_address="127.0.0.1", listen_port="0", anon_root=str(root),
                      no_anon_password="YES", pooled="YES", worker_processes="2", max_per_ip="3", max_clients="5")
    srv = make_server(root, "--config", str(conf))
    held = []
    try:
        for _ in range(3):
            f = ftplib.FTP()
            f.connect(srv.host, srv.port, timeout=20)
            held.append(f)
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            ftplib.FTP().connect(srv.host, srv.port, timeout=20)
        # another address still gets in, up to max_clients in total
        for _ in range(2):
            f = ftplib.FTP()
            f.connect(srv.host, srv.port, timeout=20, source_address=("127.0.0.2", 0))
            held.append(f)
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            ftplib.FTP().connect(srv.host, srv.port, timeout=20, source_address=("127.0.0.2", 0))
    finally:
        for f in held:
            f.close()
    # slots come back when sessions end
    def welcomed() -> bool:
        try:
            with ftplib.FTP() as ftp:
                return ftp.connect(srv.host, srv.port, timeout=20).startswith("220")
        except ftplib.error_temp:
            return False
    assert wait_for(welcomed), "no session slot came back after the sessions ended"


@pytest.mark.parametrize("args, words", [
    (["serve", "/no/such/dir", "--port", "0"], "not a directory"),
    (["serve", "--port", "0", "--user", "nopassword"], "NAME:PASSWORD"),
    (["serve", "--config", "/no/such.conf"], "cannot read"),
])
def test_startup_errors_are_messages_not_tracebacks(args, words):
    r = ftpwarden(*args)
    err = r.stderr.decode()
    assert r.returncode == 2 and words in err and "Traceback" not in err, err


def test_port_in_use_is_a_message(tmp_path):
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        r = ftpwarden("serve", str(tmp_path), "--bind", "127.0.0.1", "--port", str(busy.getsockname()[1]),
                      "--workers", "1")
    finally:
        busy.close()
    err = r.stderr.decode()
    assert r.returncode == 2 and "cannot listen" in err and "Traceback" not in err, err


def test_check_config_reports_all_that_serve_refuses_at_once(tmp_path):
    """The issue's four: each named at its FILE:LINE, in one run; serve refuses with the same lines."""
    (tmp_path / "bad.db").write_text("alice\n")
    conf = tmp_path / "four.conf"
    lines = ["listen=YES", "listen_address=127.0.0.1", "listen_port=0",
             f"anon_root={tmp_path}/missing", "ssl_enable=YES", f"rsa_cert_file={tmp_path}/none.pem",
             "nopriv_user=nosuchuser_ftpw", f"user_db_file={tmp_path}/bad.db", f"local_root={tmp_path}"]
    conf.write_text("\n".join(lines) + "\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2 and r.stdout == b""
    errors = [line for line in r.stderr.decode().splitlines() if line.startswith("ftpwarden: ")]
    expected = [(4, "anon_root: "), (8, "user_db_file: "), (6, "rsa_cert_file/rsa_private_key_file: cannot load")]
    if os.geteuid() == 0:  # started as root, serve would run isolated mode and need nopriv_user
        expected.append((7, "nopriv_user: no such system user 'nosuchuser_ftpw'"))
    assert len(errors) == len(expected), errors
    for line, start in expected:
        assert any(e.startswith(f"ftpwarden: {conf}:{line}: {start}") for e in errors), (line, errors)
    served = ftpwarden("serve", "--config", str(conf))
    assert served.returncode == 2
    assert [line for line in served.stderr.decode().splitlines() if line.startswith("ftpwarden: ")] == errors
