"""The real services of tests/services.py start, answer, can be seen failing, and
leave nothing behind: one quick test each (PostgreSQL, HAProxy with PROXY v2,
Prometheus scraping a tiny exporter, headless Chromium)."""

from __future__ import annotations

import html.parser
import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..services import (
    chromium_dump_dom,
    chromium_screenshot,
    free_port,
    haproxy,
    listening,
    postgres,
    processes_in,
    prometheus,
    query,
)

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@contextmanager
def http_server(body: Callable[[str], tuple[str, bytes] | None]) -> Iterator[int]:
    """A stdlib HTTP server on a free loopback port: body(path) gives (content type, bytes),
    None for 404.  Yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got = body(self.path)
            if got is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", got[0])
            self.send_header("Content-Length", str(len(got[1])))
            self.end_headers()
            self.wfile.write(got[1])

        def log_message(self, *args: object) -> None:  # keep pytest's output clean
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.mark.timeout(60)
def test_postgres_answers_sql_and_goes_away() -> None:
    with postgres() as pg:
        assert pg.url == f"postgresql://ftpw@127.0.0.1:{pg.port}/ftpwarden"
        assert pg.psql("SELECT 1").stdout.strip() == "1"
        assert pg.psql("SELECT current_database(), current_user").stdout.strip() == "ftpwarden|ftpw"
        bad = pg.psql("SELECT no_such_column", check=False)
        assert bad.returncode != 0 and "no_such_column" in bad.stderr
        assert listening(pg.port, "127.0.0.1")
        if socket.has_ipv6:  # listen_addresses=127.0.0.1: nothing on ::1 or the wildcard
            assert not listening(pg.port, "::1")
        pg.stop()  # the database going down mid-test, and back
        assert pg.psql("SELECT 1", check=False).returncode != 0
        pg.start()
        assert pg.psql("SELECT 2").stdout.strip() == "2"
        work, proc = pg.work, pg.proc
    assert proc.returncode is not None and not processes_in(work) and not work.exists()


@pytest.mark.timeout(60)
def test_postgres_with_a_password_refuses_a_wrong_one() -> None:
    with postgres(password="s3cret/x") as pg:
        assert pg.url == f"postgresql://ftpw:s3cret%2Fx@127.0.0.1:{pg.port}/ftpwarden"
        assert pg.psql("SELECT 1").stdout.strip() == "1"
        pg.password = "wrong"
        r = pg.psql("SELECT 1", check=False)
        assert r.returncode != 0 and "password authentication failed" in r.stderr


def _proxy_backend(port_box: list[int], got: dict[str, bytes]) -> threading.Thread:
    """A backend on a free port that reads one PROXY v2 header, then echoes what follows
    (anything else: it keeps the first 16 bytes and closes)."""
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(20)
    port_box.append(ls.getsockname()[1])

    def serve() -> None:
        with ls:
            conn, _ = ls.accept()
        with conn:
            conn.settimeout(10)
            head = b""
            while len(head) < 16:
                head += conn.recv(16 - len(head)) or b"!" * 16
            got["header"] = head
            if head[:12] != PROXY_V2_SIGNATURE:
                return
            (length,) = struct.unpack("!H", head[14:16])
            rest = b""
            while len(rest) < length:
                rest += conn.recv(length - len(rest)) or b"!" * length
            got["addresses"] = rest
            while data := conn.recv(4096):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(60)
def test_haproxy_forwards_with_proxy_v2() -> None:
    port_box: list[int] = []
    got: dict[str, bytes] = {}
    backend = _proxy_backend(port_box, got)
    front = free_port()
    cfg = f"""
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend control
    bind 127.0.0.1:{front}
    default_backend nodes
backend nodes
    server node1 127.0.0.1:{port_box[0]} send-proxy-v2
"""
    with haproxy(cfg) as hap:
        with socket.create_connection(("127.0.0.1", front), timeout=10, source_address=("127.0.0.3", 0)) as c:
            client_port = c.getsockname()[1]
            c.sendall(b"hello\r\n")
            reply = c.recv(100)
        backend.join(10)
        work = hap.work
    head, addresses = got.get("header", b""), got.get("addresses", b"")
    assert head[:12] == PROXY_V2_SIGNATURE
    assert reply == b"hello\r\n"
    assert head[12] == 0x21 and head[13] == 0x11  # version 2 PROXY command; TCP over IPv4
    src, dst, sport, dport = struct.unpack("!4s4sHH", addresses[:12])
    assert (ipaddress.IPv4Address(src), sport) == (ipaddress.IPv4Address("127.0.0.3"), client_port)
    assert (ipaddress.IPv4Address(dst), dport) == (ipaddress.IPv4Address("127.0.0.1"), front)
    assert not processes_in(work) and not work.exists() and not listening(front)


def test_haproxy_shows_why_a_config_is_refused() -> None:
    bad = "frontend f\n    bind 127.0.0.1:1\n    no_such_keyword on\n"
    with pytest.raises(RuntimeError, match=r"haproxy -c: exit status \d+:(.|\n)*no_such_keyword"), haproxy(bad):
        pass


@pytest.mark.timeout(60)
def test_prometheus_scrapes_a_tiny_exporter() -> None:
    metrics = b"# TYPE ftpw_harness_probe gauge\nftpw_harness_probe 42\n"
    with http_server(lambda path: ("text/plain; version=0.0.4", metrics) if path == "/metrics" else None) as mport:
        dead = free_port()  # nobody listens here: its `up` must be 0
        with prometheus([f"127.0.0.1:{mport}", f"127.0.0.1:{dead}"]) as prom:
            got = wait_for(lambda: query(prom.url, "ftpw_harness_probe"), timeout=20)
            assert [r["value"][1] for r in got] == ["42"], prom.log()
            ups = wait_for(lambda: len(r := query(prom.url, "up")) == 2 and r, timeout=20)
            assert ups, prom.log()
            assert {r["metric"]["instance"]: r["value"][1] for r in ups} == {
                f"127.0.0.1:{mport}": "1", f"127.0.0.1:{dead}": "0"}
            assert query(prom.url, "ftpw_no_such_metric") == []
            with pytest.raises(RuntimeError, match="HTTP 400"):
                query(prom.url, "sum(")
            work = prom.work
    assert not processes_in(work) and not work.exists()


class _Elements(html.parser.HTMLParser):
    """The ids and tag names of the elements of an HTML text (script text is not elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.ids.update(v for k, v in attrs if k == "id" and v)


PAGE = b"""<!doctype html><html><head><title>status</title>
<style>body{font-family:sans-serif;background:#fff} td{padding:4px}</style></head><body>
<table id="sessions"><tr class="session"><td>alice</td>
<td><progress id="xfer-1" value="30" max="100">30%</progress></td></tr></table>
<script>document.body.insertAdjacentHTML("beforeend", '<p id="by-script">ran</p>')</script>
</body></html>"""


@pytest.mark.timeout(90)
def test_chromium_dom_and_screenshot(tmp_path: Path) -> None:
    with http_server(lambda path: ("text/html; charset=utf-8", PAGE) if path == "/" else None) as port:
        url = f"http://127.0.0.1:{port}/"
        found = _Elements()
        found.feed(chromium_dump_dom(url))
        assert {"sessions", "xfer-1"} <= found.ids and "progress" in found.tags
        assert "by-script" in found.ids  # a browser's DOM: the script ran
        missing = _Elements()
        missing.feed(chromium_dump_dom(f"http://127.0.0.1:{port}/nothing-here"))
        assert "sessions" not in missing.ids
        png = chromium_screenshot(url, tmp_path / "status.png", (640, 480))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack("!II", data[16:24]) == (640, 480)  # IHDR: width, height


@pytest.mark.timeout(60)
def test_chromium_on_a_page_that_never_answers_is_stopped_in_time() -> None:
    ls = socket.create_server(("127.0.0.1", 0))  # connections complete (the backlog); nobody answers
    with ls, pytest.raises(RuntimeError, match="no result after 3s") as err:
        chromium_dump_dom(f"http://127.0.0.1:{ls.getsockname()[1]}/", timeout=3)
    m = re.search(r"ran in (\S+),", str(err.value))
    assert m and not processes_in(Path(m.group(1))) and not Path(m.group(1)).exists()
