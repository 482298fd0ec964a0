"""How a TLS data connection ends decides the reply (pooled mode; the isolated
mode runs the same checks in tests/privileged/test_tls_security_isolated.py).

A raw TLS client (ssl.SSLObject over memory buffers) ends uploads exactly as
the case needs: close_notify then a reset (what curl, lftp and rclone do on
TLS 1.3 when they leave the server's session tickets unread), a reset or a
FIN without close_notify (a truncation).  Also here: commands injected in
clear before the handshake, another client's TLS session resumed on a
victim's data port, and a handshake that never completes.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .tls_end_checks import (
    check_aborted_download_has_no_close_notify,
    check_close_notify_then_reset,
    check_download_end,
    check_fin_without_close_notify,
    check_foreign_session_refused,
    check_half_hello_explicit,
    check_half_hello_implicit,
    check_injection_after_auth_tls,
    check_injection_implicit,
    check_reset_without_close_notify,
    curl_uploads,
    lftp_put,
)

# ---------------------------------------------------------------- pooled mode

CRED = ("alice", "secret")


def test_close_notify_then_reset_is_a_clean_end(tls_server):
    srv = tls_server()
    check_close_notify_then_reset(srv, CRED, srv.root)


def test_reset_without_close_notify_is_426_and_never_appears(tls_server):
    srv = tls_server("-o", "atomic_uploads=YES")
    check_reset_without_close_notify(srv, CRED, srv.root)


def test_fin_without_close_notify_is_426_by_default(tls_server):
    srv = tls_server()
    check_fin_without_close_notify(srv, CRED, srv.root, strict=True)


def test_fin_accepted_with_strict_ssl_read_eof_no(tls_server):
    srv = tls_server("-o", "strict_ssl_read_eof=NO")
    check_fin_without_close_notify(srv, CRED, srv.root, strict=False)


def test_strict_ssl_write_shutdown(tls_server):
    srv = tls_server()
    check_download_end(srv, CRED, "hello.txt", b"hello over tls\n", strict=False)
    srv = tls_server("-o", "strict_ssl_write_shutdown=YES")
    check_download_end(srv, CRED, "hello.txt", b"hello over tls\n", strict=True)


def test_aborted_download_has_no_close_notify(tls_server):
    srv = tls_server()
    (srv.root / "big.bin").write_bytes(os.urandom(64 << 20))
    check_aborted_download_has_no_close_notify(srv, CRED, "big.bin", 64 << 20)


def test_commands_injected_before_auth_tls_never_run(tls_server):
    check_injection_after_auth_tls(tls_server())


def test_clear_bytes_on_implicit_tls_never_run(tls_server):
    srv = tls_server("-o", "implicit_ssl=YES")
    check_injection_implicit(srv.host, srv.port)


# TLS 1.2 (session IDs) and 1.3 (tickets): the server's choice; the client stays at its defaults
SERVER_TLS = pytest.mark.parametrize("server_tls", [("-o", "ssl_tlsv13=NO"), ()], ids=["tls1.2", "tls1.3"])


@SERVER_TLS
def test_another_clients_session_is_refused_on_the_data_port(tls_server, server_tls):
    srv = tls_server(*server_tls)
    check_foreign_session_refused(srv, CRED, "hello.txt")


@SERVER_TLS
def test_another_clients_session_is_refused_on_implicit_tls(tls_server, server_tls):
    srv = tls_server("-o", "implicit_ssl=YES", *server_tls)
    check_foreign_session_refused(srv, CRED, "hello.txt", implicit=True)


def test_half_client_hello_after_auth_tls_is_closed_in_time(tls_server):
    srv = tls_server("-o", "login_timeout=3", "-o", "idle_session_timeout=300")
    check_half_hello_explicit(srv.host, srv.port, 3)


def test_half_client_hello_on_implicit_tls_is_closed_in_time(tls_server):
    srv = tls_server("-o", "implicit_ssl=YES", "-o", "login_timeout=3")
    check_half_hello_implicit(srv.host, srv.port, 3)


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_twenty_curl_uploads_at_defaults(tls_server, tmp_path):
    srv = tls_server()
    assert curl_uploads(srv.url, CRED, srv.root, tmp_path) == 20


@pytest.mark.skipif(not shutil.which("lftp"), reason="scripts/test-setup installs lftp")
def test_lftp_put_at_defaults(tls_server, tmp_path):
    srv = tls_server()
    assert lftp_put(srv.host, srv.port, CRED, srv.root, tmp_path) == 5
