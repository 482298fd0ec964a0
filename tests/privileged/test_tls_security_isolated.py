"""Isolated mode: how a TLS data connection ends, seen through the TLS helper,
and the TLS security checks of tests/integration/tls_end_checks.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..integration import tls_end_checks as end
from ..integration.conftest import start_server, stop_server
from .conftest import tls_lines, write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
CRED = ("ftpw_alice", "alice-pw-1")


@pytest.fixture
def iso_tls(tmp_path_factory, accounts):
    """iso_tls(*conf_lines) -> a running isolated server with TLS; stopped after the test."""
    base = tmp_path_factory.mktemp("isotlsend")
    tls = tls_lines(base)
    home = Path(accounts["alice"].pw_dir)
    (home / "tls.txt").write_text("over the helper\n")
    os.chown(home / "tls.txt", accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    started = []

    def start(*extra: str):
        conf = write_conf(base, "write_enable=YES", "delay_failed_login=0", *tls, *extra, name=f"c{len(started)}.conf")
        srv = start_server(["--config", str(conf)], home, base)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)
    for p in home.iterdir():
        if p.name != "tls.txt" and p.is_file():
            p.unlink()


def test_close_notify_then_reset_is_a_clean_end(iso_tls):
    srv = iso_tls()
    end.check_close_notify_then_reset(srv, CRED, srv.root)


def test_reset_without_close_notify_is_426_and_never_appears(iso_tls):
    srv = iso_tls("atomic_uploads=YES")
    end.check_reset_without_close_notify(srv, CRED, srv.root)


def test_fin_without_close_notify_is_426_by_default(iso_tls):
    srv = iso_tls()
    end.check_fin_without_close_notify(srv, CRED, srv.root, strict=True)


def test_fin_accepted_with_strict_ssl_read_eof_no(iso_tls):
    srv = iso_tls("strict_ssl_read_eof=NO")
    end.check_fin_without_close_notify(srv, CRED, srv.root, strict=False)


def test_strict_ssl_write_shutdown(iso_tls):
    end.check_download_end(iso_tls(), CRED, "tls.txt", b"over the helper\n", strict=False)
    end.check_download_end(iso_tls("strict_ssl_write_shutdown=YES"), CRED, "tls.txt", b"over the helper\n",
                           strict=True)


def test_aborted_download_has_no_close_notify(iso_tls, accounts):
    srv = iso_tls()
    big = srv.root / "big.bin"
    big.write_bytes(os.urandom(64 << 20))
    os.chown(big, accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    end.check_aborted_download_has_no_close_notify(srv, CRED, "big.bin", 64 << 20)


def test_commands_injected_before_auth_tls_never_run(iso_tls):
    end.check_injection_after_auth_tls(iso_tls())


def test_clear_bytes_on_implicit_tls_never_run(iso_tls):
    srv = iso_tls("implicit_ssl=YES")
    end.check_injection_implicit(srv.host, srv.port)


# TLS 1.2 (session IDs) and 1.3 (tickets): the server's choice; the client stays at its defaults
@pytest.mark.parametrize("server_tls", [("ssl_tlsv13=NO",), ()], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_another_clients_session_is_refused_on_the_data_port(iso_tls, server_tls, implicit):
    srv = iso_tls(*(["implicit_ssl=YES"] if implicit else []), *server_tls)
    end.check_foreign_session_refused(srv, CRED, "tls.txt", implicit=implicit)


def test_half_client_hello_after_auth_tls_is_closed_in_time(iso_tls):
    srv = iso_tls("login_timeout=3", "idle_session_timeout=300")
    end.check_half_hello_explicit(srv.host, srv.port, 3)


def test_half_client_hello_on_implicit_tls_is_closed_in_time(iso_tls):
    srv = iso_tls("implicit_ssl=YES", "login_timeout=3")
    end.check_half_hello_implicit(srv.host, srv.port, 3)


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_twenty_curl_uploads_at_defaults(iso_tls, tmp_path):
    srv = iso_tls()
    assert end.curl_uploads(srv.url, CRED, srv.root, tmp_path) == 20


@pytest.mark.skipif(not shutil.which("lftp"), reason="scripts/test-setup installs lftp")
def test_lftp_put_at_defaults(iso_tls, tmp_path):
    srv = iso_tls()
    assert end.lftp_put(srv.host, srv.port, CRED, srv.root, tmp_path) == 5
