"""Pooled mode: the access options of issue 12 with real clients (ftplib, curl, raw control lines).

deny_email_enable / banned_email_file, secure_email_list_enable / email_password_file,
userlist_log, delay_successful_login, tcp_wrappers (hosts.allow / hosts.deny read from
tcp_wrappers_dir).  Isolated mode: tests/privileged/test_access_isolated.py.
"""

from __future__ import annotations

import ftplib
import time
from pathlib import Path

import pytest

from .conftest import Ctl, serve

TIMEOUT = 10


def anon(srv, password: str) -> str:
    """The reply to an anonymous login with `password` (230 or the 530)."""
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        try:
            return ftp.login("anonymous", password)
        except ftplib.error_perm as e:
            return str(e)


def test_deny_email_refuses_a_listed_password(make_server, tmp_path: Path):
    banned = tmp_path / "banned"
    banned.write_text("spam@example.com\nbad@example.org\n")
    srv = serve(make_server, tmp_path, "no_anon_password=NO", "deny_email_enable=YES", f"banned_email_file={banned}")
    assert anon(srv, "bad@example.org").startswith("530")
    assert anon(srv, "bad@example.org ").startswith("230")  # exact lines only, as vsftpd
    assert anon(srv, "me@example.com").startswith("230")
    banned.write_text("me@example.com\n")  # read at each login
    assert anon(srv, "me@example.com").startswith("530")


def test_without_deny_email_the_list_is_not_read(make_server, tmp_path: Path):
    banned = tmp_path / "banned"
    banned.write_text("bad@example.org\n")
    srv = serve(make_server, tmp_path, "no_anon_password=NO", f"banned_email_file={banned}")
    assert anon(srv, "bad@example.org").startswith("230")


def test_secure_email_list_accepts_only_listed_passwords(make_server, tmp_path: Path):
    secrets = tmp_path / "emails"
    secrets.write_text("letmein\n")
    srv = serve(make_server, tmp_path, "no_anon_password=NO", "secure_email_list_enable=YES",
                f"email_password_file={secrets}")
    assert anon(srv, "letmein").startswith("230")
    assert anon(srv, "me@example.com").startswith("530")
    assert anon(srv, "").startswith("530")


def test_an_unreadable_email_list_refuses_anonymous(make_server, tmp_path: Path):
    srv = serve(make_server, tmp_path, "no_anon_password=NO", "secure_email_list_enable=YES",
                f"email_password_file={tmp_path / 'missing'}")
    assert anon(srv, "anything").startswith("530")
    with ftplib.FTP() as ftp:  # other users are not concerned
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        assert ftp.login("alice", "secret").startswith("230")


@pytest.mark.parametrize("deny, listed, text", [
    ("YES", True, "User is in the deny user list."),
    ("NO", False, "User is not in the allow user list."),
])
def test_userlist_log_logs_each_refusal_in_vsftpds_words(make_server, tmp_path: Path, deny, listed, text):
    users = tmp_path / "user_list"
    users.write_text("mallory\n" if listed else "alice\n")
    log = tmp_path / "vsftpd.log"
    srv = serve(make_server, tmp_path, "userlist_enable=YES", f"userlist_deny={deny}", f"userlist_file={users}",
                "userlist_log=YES", f"vsftpd_log_file={log}", "dual_log_enable=YES", "xferlog_enable=YES")
    c = Ctl(srv.host, srv.port)
    assert c.cmd("USER mallory").startswith(b"530 Permission denied.")
    c.close()
    deadline = time.monotonic() + TIMEOUT
    while text not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if text in x)
    assert line.endswith(f'[mallory] FAIL LOGIN: Client "127.0.0.1", "{text}"'), line


def test_without_userlist_log_no_line(make_server, tmp_path: Path):
    users = tmp_path / "user_list"
    users.write_text("mallory\n")
    log = tmp_path / "vsftpd.log"
    srv = serve(make_server, tmp_path, "userlist_enable=YES", f"userlist_file={users}",
                f"vsftpd_log_file={log}", "dual_log_enable=YES", "xferlog_enable=YES")
    c = Ctl(srv.host, srv.port)
    assert c.cmd("USER mallory").startswith(b"530")
    assert c.cmd("QUIT").startswith(b"221")
    c.close()
    time.sleep(0.2)
    assert "user list" not in (log.read_text() if log.exists() else "")


@pytest.mark.parametrize("seconds", [0, 1])
def test_delay_successful_login(make_server, tmp_path: Path, seconds):
    srv = serve(make_server, tmp_path, f"delay_successful_login={seconds}")
    c = Ctl(srv.host, srv.port)
    assert c.cmd("USER alice").startswith(b"331")
    started = time.monotonic()
    assert c.cmd("PASS secret").startswith(b"230")
    took = time.monotonic() - started
    assert (seconds <= took < seconds + 0.8) if seconds else took < 0.5, took
    c.close()


def hosts(tmp_path: Path, allow: str, deny: str) -> Path:
    d = tmp_path / "wrappers"
    d.mkdir(exist_ok=True)
    (d / "hosts.allow").write_text(allow)
    (d / "hosts.deny").write_text(deny)
    return d


def greeting(srv) -> bytes:
    c = Ctl(srv.host, srv.port)
    try:
        return c.greeting
    finally:
        c.close()


@pytest.mark.parametrize("allow, deny, admitted", [
    ("", "", True),
    ("", "ALL: ALL\n", False),
    ("ftpwarden: 127.0.0.1\n", "ALL: ALL\n", True),
    ("vsftpd: 127.0.0.0/255.0.0.0\n", "ALL: ALL\n", True),           # a migrated vsftpd line
    ("sshd: ALL\n", "ALL: ALL\n", False),
    ("ALL: 127.0.0.1: deny\n", "", False),
    ("ALL: ALL EXCEPT 127.0.0.1\n", "ALL: ALL\n", False),
    ("ftpwarden: localhost\n", "ALL: ALL\n", True),                   # by name: reverse lookup of 127.0.0.1
    ("ftpwarden: LOCAL\n", "ALL: ALL\n", True),
    ("ftpwarden: .example.com\n", "ALL: ALL\n", False),
    ("ftpwarden: 127.0.0.1: setenv VSFTPD_LOAD_CONF /dev/null\n", "", False),  # refused: never another config
])
def test_tcp_wrappers(make_server, tmp_path: Path, allow, deny, admitted):
    d = hosts(tmp_path, allow, deny)
    srv = serve(make_server, tmp_path, "tcp_wrappers=YES", f"tcp_wrappers_dir={d}")
    reply = greeting(srv)
    if admitted:
        assert reply.startswith(b"220"), reply
        with ftplib.FTP() as ftp:
            ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
            assert ftp.login("alice", "secret").startswith("230")
    else:
        assert reply == b"421 Service not available.\r\n"


def test_tcp_wrappers_off_reads_no_file(make_server, tmp_path: Path):
    d = hosts(tmp_path, "", "ALL: ALL\n")
    srv = serve(make_server, tmp_path, f"tcp_wrappers_dir={d}")
    assert greeting(srv).startswith(b"220")


def test_tcp_wrappers_denial_is_logged(make_server, tmp_path: Path):
    d = hosts(tmp_path, "", "ALL: 127.0.0.1\n")
    log = tmp_path / "vsftpd.log"
    srv = serve(make_server, tmp_path, "tcp_wrappers=YES", f"tcp_wrappers_dir={d}",
                f"vsftpd_log_file={log}", "dual_log_enable=YES", "xferlog_enable=YES")
    assert greeting(srv) == b"421 Service not available.\r\n"
    deadline = time.monotonic() + TIMEOUT
    while "tcp_wrappers" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'CONNECT: Client "127.0.0.1", "Connection refused: tcp_wrappers denial."' in log.read_text()
