"""vsftpd's remaining TLS options in pooled mode (issue 12), each shown with real clients
at their defaults: validate_cert, ssl_sni_hostname, dh_param_file, ecdh_param_file,
debug_ssl and the man page's ssl_tlsv1_N names.  Isolated mode: tests/privileged/test_parity_tls_isolated.py."""

from __future__ import annotations

import ftplib
import io
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from ..conftest import wait_for
from .conftest import ReusingFTP_TLS, Server, client_ctx
from .test_logs import ftpwarden

TIMEOUT = 20
needs_openssl = pytest.mark.skipif(not shutil.which("openssl"), reason="scripts/test-setup installs openssl")
needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")


def openssl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=TIMEOUT)


def s_client(srv: Server, *args: str) -> str:
    """`openssl s_client -starttls ftp` at its defaults (plus `args`); its whole output."""
    r = openssl("s_client", "-starttls", "ftp", "-connect", f"{srv.host}:{srv.port}", *args, stdin=b"QUIT\r\n")
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def negotiated(out: str) -> bool:
    return "Cipher is (NONE)" not in out and ", Cipher is " in out


def make_ca(d: Path) -> dict[str, Path]:
    """A CA, a client certificate it signed, and a self-signed client certificate (PEM files in `d`)."""
    f = {n: d / f"{n}.pem" for n in ("ca", "ca_key", "good", "good_key", "csr", "self", "self_key")}
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
         "-keyout", f["ca_key"], "-out", f["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client", "-keyout", f["good_key"], "-out", f["csr"]],
        ["x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-days", "2",
         "-out", f["good"]],
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=self",
         "-keyout", f["self_key"], "-out", f["self"]],
    ):
        r = openssl(*map(str, args))
        assert r.returncode == 0, r.stderr
    return f


def download(srv: Server, host: str | None = None, cert: tuple[Path, Path] | None = None) -> bytes:
    """ftplib over AUTH TLS + PROT P (session reuse on), optionally with a client certificate."""
    ctx = client_ctx()
    if cert:
        ctx.load_cert_chain(*cert)
    with ReusingFTP_TLS(context=ctx, timeout=TIMEOUT) as ftp:
        ftp.connect(host or srv.host, srv.port)
        ftp.auth()
        ftp.login("alice", "secret")
        ftp.prot_p()
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        return buf.getvalue()


REFUSED = (ssl.SSLError, OSError, EOFError, ftplib.Error)  # TLS 1.3: the client learns it at its next read


@needs_openssl
def test_validate_cert_refuses_a_certificate_the_ca_did_not_sign(tls_server, tmp_path):
    f = make_ca(tmp_path)
    srv = tls_server("-o", f"ca_certs_file={f['ca']}", "-o", "validate_cert=YES")
    assert download(srv, cert=(f["good"], f["good_key"])) == b"hello over tls\n"
    with pytest.raises(REFUSED):
        download(srv, cert=(f["self"], f["self_key"]))
    assert download(srv) == b"hello over tls\n"  # ssl_request_cert asks; require_cert=NO: none is fine
    assert "CertificateRequest" in s_client(srv, "-msg")
    # validate_cert=NO (vsftpd's default takes any certificate unchecked): none is asked for
    plain = tls_server("-o", f"ca_certs_file={f['ca']}")
    assert download(plain, cert=(f["self"], f["self_key"])) == b"hello over tls\n"
    assert "CertificateRequest" not in s_client(plain, "-msg")


@needs_openssl
def test_require_cert_with_validate_cert(tls_server, tmp_path):
    f = make_ca(tmp_path)
    srv = tls_server("-o", f"ca_certs_file={f['ca']}", "-o", "validate_cert=YES", "-o", "require_cert=YES")
    with pytest.raises(REFUSED):
        download(srv)
    assert download(srv, cert=(f["good"], f["good_key"])) == b"hello over tls\n"


def test_a_checked_certificate_needs_ca_certs_file(tmp_path, cert):
    conf = tmp_path / "v.conf"
    conf.write_text(f"listen=YES\nanon_root={tmp_path}\nssl_enable=YES\nrsa_cert_file={cert[0]}\n"
                    f"rsa_private_key_file={cert[1]}\nvalidate_cert=YES\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2
    assert f"{conf}:6: validate_cert: client certificates are verified against ca_certs_file" in r.stderr.decode()


@needs_openssl
@needs_curl
def test_sni_hostname_refuses_another_name_and_none(tls_server, tmp_path):
    log = tmp_path / "v.log"
    srv = tls_server("-o", "ssl_sni_hostname=localhost", "-o", "xferlog_enable=YES", "-o", f"vsftpd_log_file={log}")
    assert not negotiated(s_client(srv, "-servername", "other.example"))  # ALPACA: another name
    assert negotiated(s_client(srv, "-servername", "localhost"))
    # curl names the host it was given: by name it works, by address (no SNI) it is refused, as vsftpd
    ok = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:secret", f"ftp://localhost:{srv.port}/hello.txt"],
                        capture_output=True, timeout=TIMEOUT)
    assert ok.returncode == 0 and ok.stdout == b"hello over tls\n", ok.stderr
    no_sni = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "alice:secret", f"{srv.url}/hello.txt"],
                            capture_output=True, timeout=TIMEOUT)
    assert no_sni.returncode != 0 and not no_sni.stdout
    assert download(srv, host="localhost") == b"hello over tls\n"  # ftplib sends SNI on data connections too
    assert wait_for(lambda: "no server name sent" in log.read_text(), TIMEOUT)
    assert "'other.example', not 'localhost'" in log.read_text()
    # the control: without the option, the other name gets in
    assert negotiated(s_client(tls_server(), "-servername", "other.example"))


@needs_openssl
def test_dh_param_file_enables_dhe(tls_server, tmp_path):
    dh = tmp_path / "dh.pem"
    assert openssl("genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "dh_param:ffdhe2048",
                   "-out", str(dh)).returncode == 0
    dhe_only = ("-o", "ssl_ciphers=DHE-RSA-AES256-GCM-SHA384", "-o", "ssl_tlsv13=NO")
    out = s_client(tls_server(*dhe_only, "-o", f"dh_param_file={dh}"))
    assert "Cipher is DHE-RSA-AES256-GCM-SHA384" in out and "Server Temp Key: DH, 2048 bits" in out
    assert not negotiated(s_client(tls_server(*dhe_only)))  # OpenSSL 3 has no DH group without it


def test_dh_param_file_is_checked_at_start(tmp_path, cert):
    conf = tmp_path / "dh.conf"
    conf.write_text(f"listen=YES\nanon_root={tmp_path}\nssl_enable=YES\nrsa_cert_file={cert[0]}\n"
                    f"rsa_private_key_file={cert[1]}\ndh_param_file={cert[0]}\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2
    assert f"{conf}:6: dh_param_file: cannot load {cert[0]}" in r.stderr.decode()


@needs_openssl
def test_ecdh_param_file_as_a_file_or_a_curve_name(tls_server, tmp_path):
    ec = tmp_path / "ec.pem"
    assert openssl("ecparam", "-name", "secp384r1", "-out", str(ec)).returncode == 0
    assert "Server Temp Key: ECDH, secp384r1, 384 bits" in s_client(tls_server("-o", f"ecdh_param_file={ec}"))
    assert "Server Temp Key: ECDH, secp521r1, 521 bits" in s_client(tls_server("-o", "ecdh_param_file=secp521r1"))
    assert "Server Temp Key: X25519" in s_client(tls_server())  # the control: OpenSSL's choice


def test_ecdh_param_file_is_checked_at_start(tmp_path, cert):
    conf = tmp_path / "ec.conf"
    conf.write_text(f"listen=YES\nanon_root={tmp_path}\nssl_enable=YES\nrsa_cert_file={cert[0]}\n"
                    f"rsa_private_key_file={cert[1]}\necdh_param_file={cert[0]}\n")
    r = ftpwarden("check-config", str(conf))
    assert r.returncode == 2
    assert f"{conf}:6: ecdh_param_file: {cert[0]} holds no EC PARAMETERS block" in r.stderr.decode()


def test_debug_ssl_logs_handshakes_and_never_secrets(tls_server, tmp_path, cert):
    log = tmp_path / "v.log"
    logging = ("-o", "xferlog_enable=YES", "-o", f"vsftpd_log_file={log}")
    srv = tls_server(*logging, "-o", "debug_ssl=YES")
    assert download(srv) == b"hello over tls\n"
    assert wait_for(lambda: "data connection: SSL version" in log.read_text(), TIMEOUT)
    text = log.read_text()
    assert "DEBUG: Client \"127.0.0.1\", \"control connection: SSL version: TLSv1.3, SSL cipher: " in text
    assert ", reused, no cert\"" in text  # the data connection resumed the control's session
    key_body = "".join(cert[1].read_text().splitlines()[1:-1])
    for secret in (key_body[:40], key_body[-40:], "PRIVATE", "secret"):  # "secret" is alice's password
        assert secret not in text
    quiet_log = tmp_path / "q.log"
    quiet = tls_server("-o", "xferlog_enable=YES", "-o", f"vsftpd_log_file={quiet_log}")
    assert download(quiet) == b"hello over tls\n"
    assert wait_for(lambda: "OK DOWNLOAD" in quiet_log.read_text(), TIMEOUT)
    assert "DEBUG" not in quiet_log.read_text()


@needs_openssl
def test_man_page_version_names_are_aliases(tls_server):
    assert "New, TLSv1.2, Cipher is" in s_client(tls_server("-o", "ssl_tlsv1_3=NO"))
    assert "New, TLSv1.3, Cipher is" in s_client(tls_server("-o", "ssl_tlsv1_3=YES"))
