"""FTPS in isolated mode: TLS lives in the unprivileged helper; the login user's process never holds the key."""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import descendants, wait_for
from ..integration.conftest import client_ctx, start_server, stop_server, tls_login
from .conftest import ids, is_checker, key_fragments, memory_holds, tls_lines, write_conf, zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 30


@pytest.fixture
def tls_iso(tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("isotls")
    conf = write_conf(base, "write_enable=YES", "delay_failed_login=0", *tls_lines(base))
    home = Path(accounts["alice"].pw_dir)
    (home / "tls.txt").write_text("over the helper\n")
    os.chown(home / "tls.txt", accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    srv = start_server(["--config", str(conf)], home, base)
    srv.extra["key"] = base / "key.pem"
    yield srv
    stop_server(srv)


def test_prot_p_both_ways_through_the_helper(tls_iso):
    payload = os.urandom(2_000_003)
    with tls_login(tls_iso, user="ftpw_alice", password="alice-pw-1", timeout=TIMEOUT) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR tls.txt", buf.write)
        assert buf.getvalue() == b"over the helper\n"
        ftp.storbinary("STOR iso-up.bin", io.BytesIO(payload))
        back = io.BytesIO()
        ftp.retrbinary("RETR iso-up.bin", back.write)
        assert back.getvalue() == payload
        names: list[str] = []
        ftp.retrlines("NLST", names.append)
        assert "iso-up.bin" in names
    assert (tls_iso.root / "iso-up.bin").read_bytes() == payload


def test_no_session_reuse_is_refused_with_522(tls_iso):
    ftp = ftplib.FTP_TLS(context=client_ctx(), timeout=TIMEOUT)
    ftp.connect(tls_iso.host, tls_iso.port)
    ftp.auth()
    ftp.login("ftpw_alice", "alice-pw-1")
    ftp.prot_p()
    with pytest.raises(ftplib.error_perm, match=r"^522.*require_ssl_reuse"):
        ftp.retrbinary("RETR tls.txt", lambda b: None)
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.close()


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_curl_ssl_reqd(tls_iso):
    r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-u", "ftpw_alice:alice-pw-1",
                        f"{tls_iso.url}/tls.txt"], capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"over the helper\n"


def test_the_login_users_process_never_holds_the_key(tls_iso, accounts):
    needles = key_fragments(tls_iso.extra["key"])
    alice_uid = accounts["alice"].pw_uid
    nobody_uid = accounts["nobody"].pw_uid
    with tls_login(tls_iso, user="ftpw_alice", password="alice-pw-1", timeout=TIMEOUT) as ftp:
        buf = io.BytesIO()
        ftp.retrbinary("RETR tls.txt", buf.write)  # TLS used on control and data
        procs = descendants(tls_iso.proc.pid)
        (worker,) = wait_for(lambda: [p for p in descendants(tls_iso.proc.pid) if ids(p)[0][0] == alice_uid])
        helpers = [p for p in procs if ids(p)[0][0] == nobody_uid]
        assert helpers, "the TLS helper runs as nopriv_user"
        # the search works: the helper, which does TLS, has the key in memory
        assert memory_holds(helpers[0], needles)
        assert not memory_holds(worker, needles)
        # nor does the listener or the zygote (the zygote forks the worker)
        root = [p for p in procs if ids(p)[0][0] == 0 and not is_checker(p)]
        assert zygote(tls_iso) in root
        held = {p: f for p in [*root, tls_iso.proc.pid] if (f := memory_holds(p, needles))}
        assert not held, f"the key in a root process: {held}"
