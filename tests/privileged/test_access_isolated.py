"""Isolated mode: the access options of issue 12 with real clients, decided on the privileged side.

deny_email_enable / secure_email_list_enable (the checker), userlist_log (the pre-login
process reports, the broker words and writes the line), delay_successful_login (a broker
timer), reverse_lookup_enable (PAM_RHOST, set in the checker's check child), tcp_wrappers
(the pre-login process, as root, before its namespaces).  Pooled mode:
tests/integration/test_access_options.py.
"""

from __future__ import annotations

import contextlib
import ftplib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..integration.conftest import Ctl, Server, start_server, stop_server
from .conftest import inetd_session, loopback_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20


@pytest.fixture
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("access")
    os.chmod(base, 0o755)
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    (anon / "readme.txt").write_text("public\n")
    return base


@pytest.fixture
def server(base: Path) -> Iterator:
    """server(*lines) -> an isolated server with anonymous (a password asked) and `lines`."""
    started: list[Server] = []

    def start(*lines: str) -> Server:
        conf = loopback_conf(base, "anonymous_enable=YES", f"anon_root={base / 'anon'}", "no_anon_password=NO",
                             "delay_failed_login=0", *lines, name=f"c{len(started)}.conf")
        srv = start_server(["--config", str(conf)], base, base)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)


def anon(srv: Server, password: str) -> str:
    with ftplib.FTP(timeout=TIMEOUT) as ftp:
        ftp.connect(srv.host, srv.port)
        try:
            return ftp.login("anonymous", password)
        except ftplib.error_perm as e:
            return str(e)


def wait_text(path: Path, text: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def test_deny_email_refuses_a_listed_password(server, base: Path):
    banned = base / "banned"
    banned.write_text("bad@example.org\n")
    srv = server("deny_email_enable=YES", f"banned_email_file={banned}")
    assert anon(srv, "bad@example.org").startswith("530")
    assert anon(srv, "me@example.com").startswith("230")


def test_secure_email_list_accepts_only_listed_passwords(server, base: Path):
    secrets = base / "emails"
    secrets.write_text("letmein\n")
    srv = server("secure_email_list_enable=YES", f"email_password_file={secrets}")
    assert anon(srv, "letmein").startswith("230")
    assert anon(srv, "me@example.com").startswith("530")


def test_userlist_log_is_written_by_the_broker(server, base: Path):
    users = base / "user_list"
    users.write_text("mallory\n")
    log = base / "vsftpd.log"
    srv = server("userlist_enable=YES", "userlist_deny=YES", f"userlist_file={users}", "userlist_log=YES",
                 f"vsftpd_log_file={log}", "dual_log_enable=YES", "xferlog_enable=YES")
    c = Ctl(srv.host, srv.port)
    assert c.cmd("USER mallory").startswith(b"530 Permission denied.")
    assert c.cmd("USER anonymous").startswith(b"331")  # not listed: asked for a password
    c.close()
    lines = [x for x in wait_text(log, "user list").splitlines() if "user list" in x]
    assert len(lines) == 1 and lines[0].endswith(
        '[mallory] FAIL LOGIN: Client "127.0.0.1", "User is in the deny user list."'), lines


@pytest.mark.parametrize("seconds", [0, 1])
def test_delay_successful_login_is_a_broker_timer(server, seconds):
    srv = server(f"delay_successful_login={seconds}")
    slow = Ctl(srv.host, srv.port)
    assert slow.cmd("USER anonymous").startswith(b"331")
    started = time.monotonic()
    slow.send("PASS me@example.com")
    if seconds:  # meanwhile the broker serves others: a new client is greeted and asked at once
        other = Ctl(srv.host, srv.port)
        assert other.greeting.startswith(b"220")
        assert other.cmd("USER anonymous").startswith(b"331")
        other.close()
        assert time.monotonic() - started < seconds
    assert slow.reply().startswith(b"230")
    took = time.monotonic() - started
    assert (seconds <= took < seconds + 1.5) if seconds else took < 0.8, took
    slow.close()


@pytest.fixture
def pam_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway PAM service whose auth records PAM_RHOST (pam_exec), then permits; removed after."""
    out = tmp_path / "rhost"
    script = tmp_path / "rhost.sh"
    script.write_text(f'#!/bin/sh\necho "$PAM_RHOST" > {out}\n')
    script.chmod(0o755)
    name = f"ftpwarden-test-{uuid.uuid4().hex[:8]}"
    service = Path("/etc/pam.d") / name
    service.write_text(f"auth required pam_exec.so {script}\nauth required pam_permit.so\n"
                       "account required pam_permit.so\n")
    try:
        yield name, out
    finally:
        service.unlink()


@pytest.mark.parametrize("setting, expected", [("YES", "localhost"), ("NO", "127.0.0.1")])
def test_reverse_lookup_sets_pam_rhost(server, base: Path, accounts, pam_service, setting, expected):
    name, out = pam_service
    srv = server("local_enable=YES", "chroot_local_user=YES", "allow_writeable_chroot=YES",
                 f"pam_service_name={name}", f"reverse_lookup_enable={setting}")
    with ftplib.FTP(timeout=TIMEOUT) as ftp:
        ftp.connect(srv.host, srv.port)
        assert ftp.login("ftpw_alice", "anything: pam_permit decides").startswith("230")
    assert out.read_text().strip() == expected


def wrappers(base: Path, allow: str, deny: str) -> Path:
    d = base / "wrappers"
    d.mkdir(exist_ok=True)
    (d / "hosts.allow").write_text(allow)
    (d / "hosts.deny").write_text(deny)
    return d


@pytest.mark.parametrize("allow, deny, admitted", [
    ("", "ALL: ALL\n", False),
    ("ftpwarden: 127.0.0.1\n", "ALL: ALL\n", True),
    ("vsftpd: localhost\n", "ALL: ALL\n", True),          # a name rule: the lookup runs before the namespaces
    ("ALL: .example.com\n", "ALL: ALL\n", False),
    ("", "ALL: 127.0.0.1: allow\n", True),
    ("ftpwarden: 127.0.0.1: setenv VSFTPD_LOAD_CONF /dev/null\n", "", False),  # refused: never another config
])
def test_tcp_wrappers(server, base: Path, allow, deny, admitted):
    log = base / "vsftpd.log"
    srv = server("tcp_wrappers=YES", f"tcp_wrappers_dir={wrappers(base, allow, deny)}",
                 f"vsftpd_log_file={log}", "dual_log_enable=YES", "xferlog_enable=YES")
    c = Ctl(srv.host, srv.port)
    if admitted:
        assert c.greeting.startswith(b"220"), c.greeting
        c.close()
        assert anon(srv, "me@example.com").startswith("230")
        return
    assert c.greeting == b"421 Service not available.\r\n"
    assert c.closed()
    c.close()
    assert 'CONNECT: Client "127.0.0.1", "Connection refused: tcp_wrappers denial."' in wait_text(log, "tcp_wrappers")


@contextlib.contextmanager
def inetd_ctl(base: Path, *lines: str) -> Iterator[tuple[Ctl, subprocess.Popen[bytes]]]:
    """listen=NO: one session on the server's stdin, as inetd (or systemd Accept=yes) starts it."""
    conf = loopback_conf(base, "listen_ipv6=NO", "anonymous_enable=YES", f"anon_root={base / 'anon'}",
                         "no_anon_password=NO", "delay_failed_login=0", *lines, name="inetd.conf")
    with inetd_session(conf, stderr=subprocess.DEVNULL) as (proc, client):
        ctl = Ctl.__new__(Ctl)  # the connection is made already: Ctl's reading half only
        ctl.sock, ctl.file, ctl.host = client, client.makefile("rb"), "127.0.0.1"
        ctl.greeting = ctl.reply()
        try:
            yield ctl, proc
        finally:
            ctl.close()


def test_inetd_delay_successful_login(base: Path):
    with inetd_ctl(base, "delay_successful_login=1") as (ctl, proc):
        assert ctl.greeting.startswith(b"220")
        assert ctl.cmd("USER anonymous").startswith(b"331")
        started = time.monotonic()
        assert ctl.cmd("PASS me@example.com").startswith(b"230")
        assert 1 <= time.monotonic() - started < 2.5
        assert ctl.cmd("QUIT").startswith(b"221")
        assert proc.wait(10) == 0


def test_inetd_tcp_wrappers_denial(base: Path):
    with inetd_ctl(base, "tcp_wrappers=YES", f"tcp_wrappers_dir={wrappers(base, '', 'ALL: ALL')}") as (ctl, proc):
        assert ctl.greeting == b"421 Service not available.\r\n"
        assert proc.wait(10) == 0
