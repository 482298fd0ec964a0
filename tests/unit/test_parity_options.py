"""Issue 12, helper T's options at the unit level: the TLS version aliases, ftp_enable,
run_as_launching_user's mode, ecdh_param_file's curve, wc_logs_enable and log_die."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest

from ftpwarden import preflight
from ftpwarden.logs.sinks import FatalToSyslog
from ftpwarden.logs.xferlog import narrow
from ftpwarden.net.tls import TlsSetupError, ecdh_curve
from ftpwarden.policy.config import ConfigError, default_config, load_config


@pytest.fixture
def conf(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "vsftpd.conf"
        path.write_text(text)
        return str(path)
    return write


@pytest.mark.parametrize(("alias", "name"), [("ssl_tlsv1_1", "ssl_tlsv11"), ("ssl_tlsv1_2", "ssl_tlsv12"),
                                             ("ssl_tlsv1_3", "ssl_tlsv13")])
def test_man_page_names_set_the_parser_names(conf, alias, name):
    cfg, warnings = load_config(conf(f"{alias}=NO\n" if name != "ssl_tlsv11" else f"{alias}=YES\n"))
    assert getattr(cfg, name) == getattr(cfg, alias) == (name == "ssl_tlsv11")
    assert warnings == []
    cfg, _ = load_config(None, [f"{name}=NO"])  # and the other way round: one value
    assert getattr(cfg, alias) is False


def test_alias_and_name_disagreeing_is_an_error_at_both_lines(conf):
    path = conf("ssl_tlsv13=NO\nlisten=YES\nssl_tlsv1_3=YES\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}:3: ssl_tlsv1_3=YES but {path}:1 says ssl_tlsv13=NO; they are one "
                            "option (the man page's name and the parser's): give one")
    cfg, _ = load_config(conf("ssl_tlsv13=NO\nssl_tlsv1_3=NO\n"))  # agreeing: fine
    assert cfg.ssl_tlsv13 is False


def test_ftp_enable_no_is_an_error(conf):
    path = conf("listen=YES\nftp_enable=NO\nhttp_enable=YES\n")
    with pytest.raises(ConfigError, match=r"ftp_enable=NO leaves nothing to serve") as e:
        load_config(path)
    assert e.value.where == f"{path}:3"  # the last line involved
    load_config(conf("ftp_enable=YES\n"))


def test_run_as_launching_user_is_pooled_mode(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    assert preflight.isolated_mode(default_config())
    assert not preflight.isolated_mode(default_config(run_as_launching_user=True))


def test_ecdh_curve_from_a_file_or_a_name(tmp_path):
    named = tmp_path / "named.pem"
    explicit = tmp_path / "explicit.pem"
    for path, extra in ((named, []), (explicit, ["-param_enc", "explicit"])):
        r = subprocess.run(["openssl", "ecparam", "-name", "prime256v1", *extra, "-out", str(path)],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
    assert ecdh_curve(str(named)) == "prime256v1"
    assert ecdh_curve("X25519") == "X25519"
    with pytest.raises(TlsSetupError, match="only a named curve"):
        ecdh_curve(str(explicit))
    with pytest.raises(TlsSetupError, match="cannot read"):
        ecdh_curve(str(tmp_path / "missing.pem"))


def test_narrow_is_byte_wise():
    assert narrow("plain ascii") == "plain ascii"
    assert narrow("caf\u00e9") == "caf??"
    assert narrow("\u20ac\U0001f600") == "???????"  # 3 + 4 bytes
    assert narrow("bad\udcff") == "bad?"  # an undecodable byte stays one '?'


def test_fatal_errors_go_to_syslog(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(path)
        daemon.settimeout(2)
        logger = logging.getLogger("test.parity.die")
        handler = FatalToSyslog(path)
        logger.addHandler(handler)
        try:
            logger.warning("not fatal")
            logger.error("zygote died\nsecond line")
        finally:
            logger.removeHandler(handler)
        got = daemon.recv(8192).decode()
    assert got.startswith("<91>") and got.endswith("]: zygote died second line")
