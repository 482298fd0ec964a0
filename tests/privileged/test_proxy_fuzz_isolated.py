"""Fuzzed PROXY headers against a live isolated-mode node (root broker, ftpwarden-proxy
reading the headers): each connection is closed unanswered unless its header is valid,
the node never stops, and a good client is served after every batch.  The parser's own
properties and the pooled node are in tests/fuzz/test_proxy_fuzz.py."""

from __future__ import annotations

import ftplib
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..fuzz.test_proxy_fuzz import SEEDS, check_batch, headers
from ..integration.conftest import Server, start_server, stop_server
from .conftest import loopback_conf

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node(session_isolation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("proxyfuzz-iso")
    anon = base / "anon"
    anon.mkdir()
    (anon / "file.txt").write_bytes(b"some text\n")
    conf = loopback_conf(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                         "delay_failed_login=0", "ban_threshold=0", "proxy_protocol_enable=YES",
                         "proxy_protocol_from=127.0.0.1")
    srv = start_server(["--config", str(conf)], anon, base)
    yield srv
    stop_server(srv)


def _good_client(srv: Server) -> None:
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall(SEEDS[0])
    ftp = ftplib.FTP(timeout=10)
    ftp.sock, ftp.af, ftp.host = s, s.family, srv.host
    ftp.file = s.makefile("r", encoding="utf-8")
    assert ftp.getresp().startswith("220")
    ftp.login("anonymous", "")
    ftp.voidcmd("TYPE I")
    assert ftp.size("file.txt") == 10
    ftp.quit()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(headers, min_size=1, max_size=10))
def test_isolated_node_survives_fuzzed_headers(node: Server, batch: list[bytes]) -> None:
    check_batch(node, batch)
    _good_client(node)


def test_isolated_node_logged_no_traceback(node: Server) -> None:
    _good_client(node)
    assert "Traceback" not in node.stderr(), node.stderr()[-3000:]
