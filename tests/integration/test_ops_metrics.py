"""metrics_listen in pooled mode: /metrics scraped by a real Prometheus, /status in headless
Chromium during a transfer, /status refused to a non-admin local user (issue 14).

Real services from tests/services.py (Prometheus 2.42, Chromium from Debian); skipped
when their binaries are missing.  Every wait has a deadline.
"""

from __future__ import annotations

import ftplib
import grp
import html.parser
import io
import os
import pwd
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..services import chromium_dump_dom, chromium_screenshot, free_port, prometheus, query
from .conftest import serve

ALLOWED_LABELS = {"__name__", "job", "instance", "class", "mode", "direction", "result", "code", "le", "kind"}


def need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (scripts/test-setup installs it)")


def ops_server(make_server, tmp_path: Path, *opts: str, workers: int = 1):
    mport = free_port()
    srv = serve(make_server, tmp_path, f"metrics_listen=127.0.0.1:{mport}", *opts, workers=workers)
    assert wait_for(lambda: _get(f"http://127.0.0.1:{mport}/metrics")[0] == 200, 10), srv.stderr()
    return srv, mport


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def login(srv) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=20)
    ftp.login("alice", "secret")
    return ftp


def value(prom_url: str, promql: str) -> float:
    rows = query(prom_url, promql)
    return sum(float(r["value"][1]) for r in rows)


def admin_group_for_chromium() -> str:
    """The group whose members may read /status: the account Chromium runs as (tests/services.py)."""
    if os.geteuid() == 0:
        return grp.getgrgid(pwd.getpwnam("ftpw_svc").pw_gid).gr_name
    return grp.getgrgid(os.getgid()).gr_name


def test_prometheus_sees_sessions_and_bytes_move(make_server, tmp_path):
    need("prometheus")
    mport = free_port()
    with prometheus([f"127.0.0.1:{mport}"]) as prom:  # first: its first scrape comes ~5 s after start
        srv = serve(make_server, tmp_path, f"metrics_listen=127.0.0.1:{mport}")
        blob = os.urandom(1_234_567)
        assert wait_for(lambda: query(prom.url, 'up{job="ftpwarden"} == 1'), 25), prom.log()
        assert value(prom.url, "sum(ftpwarden_sessions)") == 0
        before_out = value(prom.url, 'ftpwarden_transfer_bytes_total{direction="out"}')
        ftp = login(srv)
        try:
            # an open session, seen by a scrape
            assert wait_for(lambda: value(prom.url, "sum(ftpwarden_sessions)") >= 1, 15), srv.stderr()
            ftp.storbinary("STOR up.bin", io.BytesIO(blob))
            got = io.BytesIO()
            ftp.retrbinary("RETR up.bin", got.write)
            assert got.getvalue() == blob
        finally:
            ftp.quit()
        assert wait_for(lambda: value(prom.url, 'ftpwarden_transfer_bytes_total{direction="in"}') >= len(blob), 15)
        assert wait_for(lambda: value(prom.url, 'ftpwarden_transfer_bytes_total{direction="out"}')
                        >= before_out + len(blob), 15)
        assert value(prom.url, 'ftpwarden_files_total{direction="in"}') >= 1
        assert value(prom.url, 'ftpwarden_logins_total{result="ok"}') >= 1
        assert value(prom.url, 'ftpwarden_transfer_duration_seconds_count{direction="out"}') >= 1
        assert value(prom.url, 'ftpwarden_replies_total{code="2xx"}') >= 1
        assert wait_for(lambda: value(prom.url, "sum(ftpwarden_sessions)") == 0, 15)
        assert value(prom.url, "process_resident_memory_bytes") > 0
        assert value(prom.url, 'ftpwarden_memory_resident_bytes{kind="pooled"}') > 0
        # bounded cardinality: no user name or address anywhere in a label
        series = query(prom.url, '{job="ftpwarden"}')
        labels = {k for r in series for k in r["metric"]}
        assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
        values = {v for r in series for k, v in r["metric"].items() if k != "instance"}
        assert "alice" not in values and "127.0.0.1" not in values
        sample = [f'{r["metric"]["__name__"]}{{direction="{r["metric"].get("direction", "")}"}} {r["value"][1]}'
                  for r in series if r["metric"]["__name__"].startswith("ftpwarden_transfer_bytes")]
        print("scrape sample (Prometheus API):", *sample, sep="\n  ")


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.progress: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "session" in (a.get("class") or "").split():
            self.rows.append(a)
        if tag == "progress":
            self.progress.append(a)


def _slow_download(srv, size: int, stop: threading.Event) -> threading.Thread:
    (srv.root / "big.bin").write_bytes(os.urandom(size))

    def run() -> None:
        ftp = login(srv)
        try:
            def sink(block: bytes) -> None:
                if stop.is_set():
                    raise EOFError
            ftp.retrbinary("RETR big.bin", sink)
        except (EOFError, OSError, ftplib.Error):
            pass
        finally:
            try:
                ftp.close()
            except OSError:
                pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_status_page_in_chromium_during_transfer(make_server, tmp_path):
    need("chromium")
    srv, mport = ops_server(make_server, tmp_path, "local_max_rate=200000", "anon_max_rate=200000",
                            f"admin_group={admin_group_for_chromium()}")
    stop = threading.Event()
    mover = _slow_download(srv, 8_000_000, stop)  # 40 s at the rate: the page sees it running
    url = f"http://127.0.0.1:{mport}/status"
    try:
        def running() -> bool:
            code, body = _get(url)
            return code == 200 and b"transfer-progress" in body and b"big.bin" in body
        assert wait_for(running, 15), (_get(url), srv.stderr())
        time.sleep(1.2)  # a progress event (once a second) has moved the bytes on
        assert wait_for(lambda: b'class="chart"' in _get(url)[1], 15)  # two throughput samples (every 5 s)
        dom = chromium_dump_dom(url)
        parsed = _Dom()
        parsed.feed(dom)
        assert parsed.rows, dom[:3000]
        assert parsed.progress, dom[:3000]
        assert 'class="chart"' in dom
        bar = parsed.progress[0]  # a download's size is known: a real bar, not an indeterminate one
        assert bar.get("max") == "8000000" and 0 < int(bar.get("value") or 0) < 8_000_000, bar
        assert "big.bin" in dom and "alice" in dom
        assert "secret" not in dom  # the PASS argument is never kept
        shot = chromium_screenshot(url, tmp_path / "status.png", (1280, 800))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"status page screenshot: {shot}")
    finally:
        stop.set()
        mover.join(20)


def _as_user(user: str, fn) -> int:
    """`fn()` (-> small int) in a child running as `user`; its result."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another local user")
def test_status_refused_to_non_admin_user(make_server, tmp_path):
    srv, mport = ops_server(make_server, tmp_path)
    ftp = login(srv)
    try:
        url = f"http://127.0.0.1:{mport}"
        assert wait_for(lambda: b"alice" in _get(url + "/status")[1], 10)  # root may
        codes = {"/status": 0, "/metrics": 0}
        for path in codes:
            codes[path] = _as_user("nobody", lambda p=path: {200: 2, 403: 3}.get(_get(url + p)[0], 1))
        assert codes == {"/status": 3, "/metrics": 2}, codes
    finally:
        ftp.quit()


def test_http_refuses_what_it_does_not_serve(make_server, tmp_path):
    srv, mport = ops_server(make_server, tmp_path)

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", mport), timeout=10) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
    assert raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw(b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert raw(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    head = raw(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    # a client that sends nothing is dropped after the read deadline, and the server still serves
    with socket.create_connection(("127.0.0.1", mport), timeout=10) as idle:
        assert _get(f"http://127.0.0.1:{mport}/metrics")[0] == 200
        idle.settimeout(10)
        assert idle.recv(100) == b""
    assert srv.proc.poll() is None


def test_table_never_keeps_a_password():
    from ftpwarden.ops.table import SessionTable, shown_command
    t = SessionTable("pooled")
    t.connect("1.1", "127.0.0.1")
    for line in (b"PASS hunter2\r\n", b"pass hunter2", b"  PaSs hunter2", b"ACCT hunter2", b"P\xff\xf1ASS hunter2"):
        t.command("1.1", line)
        assert "hunter2" not in t.snapshot()[0]["command"]
    assert shown_command(b"RETR a b.txt\r\n") == "RETR a b.txt"
    assert shown_command(b"STOR passwords.txt") == "STOR passwords.txt"
    assert shown_command(b"PASV") == "PASV"


def test_several_workers_summed_by_the_supervisor(make_server, tmp_path):
    srv, mport = ops_server(make_server, tmp_path, workers=2)
    url = f"http://127.0.0.1:{mport}"

    def metric(name: str) -> float:
        text = _get(url + "/metrics")[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))
    clients = [login(srv) for _ in range(4)]
    try:
        assert wait_for(lambda: metric("ftpwarden_sessions{") == 4, 10), _get(url + "/metrics")[1][:3000]
        for i, ftp in enumerate(clients):
            ftp.storbinary(f"STOR w{i}.bin", io.BytesIO(b"x" * 1000))
        assert wait_for(lambda: metric('ftpwarden_transfer_bytes_total{direction="in"}') == 4000, 10)
        body = _get(url + "/status")[1].decode()
        assert body.count('<tr class="session"') == 4, body
        pids = {row.split('id="session-', 1)[1].split(".", 1)[0] for row in body.split("<tr")[1:]
                if 'id="session-' in row}
        print(f"sessions hosted by worker pids {sorted(pids)}")
    finally:
        for ftp in clients:
            ftp.quit()
    assert wait_for(lambda: metric("ftpwarden_sessions{") == 0, 10)
    assert metric('ftpwarden_logins_total{result="ok"}') == 4
    assert metric('ftpwarden_processes{kind="pooled"}') == 2
    assert metric('ftpwarden_memory_resident_bytes{kind="pooled"}') > 0
    assert metric('ftpwarden_memory_resident_bytes{kind="supervisor"}') > 0


def test_tls_handshakes_counted(tls_server):
    from .conftest import tls_login
    mport = free_port()
    srv = tls_server("-o", f"metrics_listen=127.0.0.1:{mport}")
    url = f"http://127.0.0.1:{mport}/metrics"

    def metric(name: str) -> float:
        text = _get(url)[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
    ftp = tls_login(srv)
    ftp.quit()
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:  # a handshake that fails
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"AUTH TLS\r\n")
        assert f.readline().startswith(b"234")
        s.sendall(b"\x16\x03\x01\x00\x05hello, not TLS" * 4)
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    assert wait_for(lambda: metric('ftpwarden_tls_handshakes_total{result="ok"}') == 1, 10), _get(url)[1][:4000]
    assert wait_for(lambda: metric('ftpwarden_tls_handshakes_total{result="failed"}') == 1, 10)
