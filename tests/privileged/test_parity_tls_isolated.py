"""Issue 12's TLS options in isolated mode: the pre-login process makes the context
(before its jail) and keeps it as the session's TLS helper, so SNI, client
certificates and the ECDHE group apply there; debug_ssl lines reach the broker's
log through the session channel (LogDebug)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import ReusingFTP_TLS, client_ctx, start_server, stop_server
from ..integration.test_parity_tls import REFUSED, make_ca, negotiated, s_client
from .conftest import tls_lines, write_conf

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)"),
              pytest.mark.skipif(not shutil.which("openssl"), reason="scripts/test-setup installs openssl")]
TIMEOUT = 30


@pytest.fixture
def iso(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("paritytls")
    certs = make_ca(base)
    log = base / "v.log"
    conf = write_conf(base, "delay_failed_login=0", *tls_lines(base), "ssl_sni_hostname=localhost",
                      "debug_ssl=YES", "validate_cert=YES", f"ca_certs_file={certs['ca']}",
                      "ecdh_param_file=secp384r1", "xferlog_enable=YES", f"vsftpd_log_file={log}")
    home = Path(accounts["alice"].pw_dir)
    (home / "tls.txt").write_text("over the helper\n")
    os.chown(home / "tls.txt", accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    srv = start_server(["--config", str(conf)], home, base)
    srv.extra.update(certs, log=log)
    yield srv
    stop_server(srv)


def fetch(srv, cert: tuple[Path, Path] | None) -> bytes:
    ctx = client_ctx()
    if cert:
        ctx.load_cert_chain(*cert)
    with ReusingFTP_TLS(context=ctx, timeout=TIMEOUT) as ftp:
        ftp.connect("localhost", srv.port)
        ftp.auth()
        ftp.login("ftpw_alice", "alice-pw-1")
        ftp.prot_p()
        buf = io.BytesIO()
        ftp.retrbinary("RETR tls.txt", buf.write)
        return buf.getvalue()


def test_tls_options_apply_in_the_prelogin_process(iso):
    e = iso.extra
    assert fetch(iso, (e["good"], e["good_key"])) == b"over the helper\n"
    with pytest.raises(REFUSED):
        fetch(iso, (e["self"], e["self_key"]))  # validate_cert: the CA did not sign it
    assert not negotiated(s_client(iso, "-servername", "other.example"))  # ssl_sni_hostname
    out = s_client(iso, "-servername", "localhost")
    assert negotiated(out) and "Server Temp Key: ECDH, secp384r1, 384 bits" in out  # ecdh_param_file
    log: Path = e["log"]
    assert wait_for(lambda: "SNI rejection" in log.read_text(), TIMEOUT)
    text = log.read_text()
    assert "DEBUG: Client \"127.0.0.1\", \"control connection: SSL version: TLSv1.3" in text
    assert ", CERT PRESENTED\"" in text and "CERTIFICATE_VERIFY_FAILED" in text
    assert "'other.example', not 'localhost'" in text
