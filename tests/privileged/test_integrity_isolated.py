"""Issues 10 and 17 in isolated mode (root listener+broker, unprivileged pre-login
processes and identity workers): the same checks as tests/integration/integrity_checks.py and
newuser_checks.py, run as the real user ftpw_alice jailed in her home."""

from __future__ import annotations

import ftplib
import os
from pathlib import Path

import pytest

from ..integration import integrity_checks as I
from ..integration import newuser_checks as C
from ..integration.conftest import start_server, stop_server
from .conftest import write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
ALICE = ("ftpw_alice", "alice-pw-1")


def serve(base: Path, home: Path, *lines: str, delay: int = 0):
    conf = write_conf(base, "write_enable=YES", f"delay_failed_login={delay}", "ban_threshold=0", "max_per_ip=200",
                      "max_login_fails=3", *lines)
    return start_server(["--config", str(conf)], home, base)


@pytest.fixture(scope="module")
def iso_site(tmp_path_factory, accounts, session_isolation):  # a server per setting
    home = Path(accounts["alice"].pw_dir)
    srv = serve(tmp_path_factory.mktemp("integrity"), home)
    yield I.Site(srv.host, srv.port, *ALICE, home)
    stop_server(srv)


@pytest.fixture
def site(iso_site):
    site = I.Site(iso_site.host, iso_site.port, iso_site.user, iso_site.password, iso_site.local)
    yield site
    if site.base:  # what a check made in alice's home goes with it
        import shutil
        shutil.rmtree(site.path(""), ignore_errors=True)


def test_rest_survives_pasv(site):
    I.check_rest_survives_pasv(site)


def test_rest_then_appe_appends_and_stor_keeps_the_tail(site):
    I.check_rest_then_appe_and_stor(site)


def test_rest_past_the_end_is_554_with_position_and_size(site):
    I.check_rest_past_end(site)


def test_rest_past_the_end_of_an_upload_is_554(site):
    I.check_rest_past_end_of_upload(site)


def test_nlst_prints_names_as_given_and_expands_globs(site):
    I.check_nlst_names_and_globs(site)


def test_trailing_slash_on_a_file_name_is_550(site):
    I.check_trailing_slash(site)


def test_last_login_failure_gets_its_530(tmp_path_factory, accounts):
    # delay_failed_login as by default: the pre-login process then answers a moment
    # after the broker's refusal (a monitor once killed it before it could)
    srv = serve(tmp_path_factory.mktemp("fails"), Path(accounts["alice"].pw_dir), delay=1)
    try:
        site = I.Site(srv.host, srv.port, *ALICE, Path(accounts["alice"].pw_dir))
        for _ in range(2):
            I.check_last_login_failure_is_answered(site, 3)
    finally:
        stop_server(srv)


@pytest.mark.parametrize("login", [False, True], ids=["pre-login", "post-login"])
def test_long_line_without_newline_is_answered(site, login):
    if not login:
        I.check_long_line_is_answered(site)
        return
    with site.connect() as ftp:  # the post-login worker reads this one
        ftp.sock.sendall(b"X" * (1 << 20))
        ftp.sock.settimeout(10)
        assert ftp.file.readline().rstrip("\r\n") == "500 Command line too long."
        ftp.sock.sendall(b"\r\n")
        assert ftp.voidcmd("NOOP").startswith("200")


def test_banner_file_replaces_ftpd_banner(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("banner")
    banner = base / "banner.txt"
    banner.write_text("Welcome from the banner file.\n")
    os.chmod(banner, 0o644)
    srv = serve(base, Path(accounts["alice"].pw_dir), f"banner_file={banner}", "ftpd_banner=Not this one.")
    try:
        ftp = ftplib.FTP(timeout=I.TIMEOUT)
        try:
            welcome = ftp.connect(srv.host, srv.port)
        finally:
            ftp.close()
    finally:
        stop_server(srv)
    assert "Welcome from the banner file." in welcome and "Not this one." not in welcome


@C.needs("tnftp")
def test_tnftp_mget_plain_and_glob(site, tmp_path):
    C.check_tnftp_mget(site, tmp_path)


@C.needs("ncftpget")
def test_ncftpget_glob(site, tmp_path):
    C.check_ncftpget_glob(site, tmp_path)


@C.needs("lftp")
def test_lftp_mirror_recreates_symlinks(site, tmp_path):
    C.check_lftp_mirror_keeps_symlinks(site, tmp_path)


@C.needs("lftp")
def test_lftp_mirror_upload_of_a_tree(site, tmp_path):
    C.check_lftp_mirror_upload(site, tmp_path)
