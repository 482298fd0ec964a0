"""FTPS (RFC 4217) with real clients: ftplib FTP_TLS, curl and lftp, over real TLS."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from ftpwarden.net.tls import make_context
from ftpwarden.policy.config import default_config

from .conftest import ReusingFTP_TLS, client_ctx, tls_login

TIMEOUT = 30


def test_feat_advertises_tls(tls_server):
    srv = tls_server()
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        feats = ftp.sendcmd("FEAT")
    for f in ("AUTH TLS", "PBSZ", "PROT"):
        assert f" {f}" in feats


def test_ftplib_prot_p_byte_exact_both_ways(tls_server):
    srv = tls_server()
    payload = os.urandom(2_500_000)
    with tls_login(srv) as ftp:
        ftp.storbinary("STOR up.bin", io.BytesIO(payload))
        buf = io.BytesIO()
        ftp.retrbinary("RETR up.bin", buf.write)
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
    assert buf.getvalue() == payload
    assert (srv.root / "up.bin").read_bytes() == payload
    assert any(line.endswith(" hello.txt") for line in lines)


def test_data_connection_without_session_reuse_is_refused(tls_server):
    srv = tls_server()
    # plain ftplib: a fresh TLS session per data connection
    with tls_login(srv, cls=ftplib.FTP_TLS) as ftp, pytest.raises(ftplib.error_perm, match=r"^522.*require_ssl_reuse"):
        ftp.retrbinary("RETR hello.txt", lambda b: None)
    srv2 = tls_server("-o", "require_ssl_reuse=NO")
    with tls_login(srv2, cls=ftplib.FTP_TLS) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        assert buf.getvalue() == b"hello over tls\n"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")  # the setting tested
def test_tls_below_1_2_is_refused(tls_server, cert):
    """The floor is the server's own: its context (the one both modes build) accepts nothing
    below TLS 1.2 unless ssl_tlsv11/ssl_tlsv1 say so; no client is pinned to an old version."""
    files = {"ssl_enable": True, "rsa_cert_file": str(cert[0]), "rsa_private_key_file": str(cert[1])}
    assert make_context(default_config(**files)).minimum_version is ssl.TLSVersion.TLSv1_2
    assert make_context(default_config(**files, ssl_tlsv11=True)).minimum_version is ssl.TLSVersion.TLSv1_1
    # a client at its defaults gets in, at TLS 1.2 or newer
    srv = tls_server()
    ftp = ftplib.FTP_TLS(context=client_ctx(), timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    assert ftp.auth().startswith("234")
    assert ftp.sock.version() in ("TLSv1.2", "TLSv1.3")
    ftp.close()


def test_plaintext_login_refused_when_forced(tls_server):
    srv = tls_server()
    with ftplib.FTP() as ftp:
        ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
        with pytest.raises(ftplib.error_perm, match=r"^530.*encryption"):
            ftp.login("alice", "secret")
        ftp.login()  # anonymous may stay in clear (force_anon_logins_ssl=NO)


def test_prot_c_refused_when_data_tls_is_forced(tls_server):
    srv = tls_server()
    with tls_login(srv) as ftp:
        ftp.prot_c()
        with pytest.raises(ftplib.error_perm, match=r"^522"):
            ftp.retrbinary("RETR hello.txt", lambda b: None)


def test_anonymous_may_not_use_tls_unless_allowed(tls_server):
    srv = tls_server()
    ftp = ftplib.FTP_TLS(context=client_ctx(), timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.auth()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login()
    ftp.close()


def test_implicit_tls(tls_server):
    srv = tls_server("-o", "implicit_ssl=YES")  # TLS from the first byte, no AUTH
    ftp = ReusingFTP_TLS(context=client_ctx(), timeout=TIMEOUT)
    sock = ftp.context.wrap_socket(socket.create_connection((srv.host, srv.port), TIMEOUT))
    ftp.sock = sock
    ftp.af = sock.family
    ftp.file = sock.makefile("r", encoding="utf-8")
    ftp.host = srv.host
    assert ftp.getresp().startswith("220")
    ftp.login("alice", "secret")
    ftp.prot_p()
    buf = io.BytesIO()
    ftp.retrbinary("RETR hello.txt", buf.write)
    assert buf.getvalue() == b"hello over tls\n"
    ftp.quit()


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_curl_ssl_reqd_up_and_down(tls_server, tmp_path):
    srv = tls_server()
    src = tmp_path / "c.bin"
    src.write_bytes(os.urandom(1_234_567))
    # at curl's defaults (TLS 1.3 here): curl may reset the connection right
    # after its close_notify, leaving our session tickets unread; that is a clean end
    up = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:secret",
                         "-T", str(src), f"{srv.url}/c.bin"], capture_output=True, timeout=TIMEOUT)
    assert up.returncode == 0, up.stderr
    down = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:secret", f"{srv.url}/blob.bin"],
                          capture_output=True, timeout=TIMEOUT)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(down.stdout).digest() == hashlib.sha256((srv.root / "blob.bin").read_bytes()).digest()
    assert (srv.root / "c.bin").read_bytes() == src.read_bytes()


@pytest.mark.skipif(not shutil.which("lftp"), reason="scripts/test-setup installs lftp")
def test_lftp_with_ssl_forced(tls_server, tmp_path):
    srv = tls_server()
    # lftp's defaults otherwise (GnuTLS, TLS 1.3): like curl it may reset the
    # upload connection right after its close_notify, which is a clean end
    script = (f"set ssl:verify-certificate no; set ftp:ssl-force yes; set ftp:ssl-protect-data yes; "
              f"set net:max-retries 1; set net:timeout 10; set cmd:fail-exit yes; "
              f"get /blob.bin -o {tmp_path / 'l.bin'}; put {tmp_path / 'l.bin'} -o /back.bin; bye")
    r = subprocess.run(["lftp", "-u", "alice,secret", "-p", str(srv.port), "-e", script, srv.host],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "l.bin").read_bytes() == (srv.root / "blob.bin").read_bytes()
    assert (srv.root / "back.bin").read_bytes() == (srv.root / "blob.bin").read_bytes()


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_implicit_port_beside_explicit(tls_server):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = tls_server("-o", f"implicit_ssl_port={port}")
    r = subprocess.run(["curl", "-sS", "-k", "-u", "alice:secret", f"ftps://127.0.0.1:{port}/hello.txt"],
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello over tls\n"
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:secret", f"{srv.url}/hello.txt"],
                       capture_output=True, timeout=TIMEOUT)
    assert r.stdout == b"hello over tls\n"
