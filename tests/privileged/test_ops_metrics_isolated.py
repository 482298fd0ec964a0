"""metrics_listen in isolated mode (issue 14): the broker counts every session's events
(LogRelay -> OpsSink) and sends snapshots to `ftpwarden-ops`, an unprivileged process
(nopriv_user, chrooted in secure_chroot_dir) that alone parses HTTP.

A real Prometheus scrapes it and sees the session and byte counters move with real
transfers; headless Chromium renders /status during a transfer; /status is refused
to a local user outside admin_group.
"""

from __future__ import annotations

import ftplib
import html.parser
import io
import os
import pwd
import shutil
import threading
import time
from pathlib import Path

import pytest

from ..conftest import descendants, wait_for
from ..integration.conftest import start_server, stop_server, tls_login
from ..integration.test_ops_metrics import _as_user, _get, admin_group_for_chromium
from ..services import chromium_dump_dom, chromium_screenshot, free_port, prometheus, query
from .conftest import comm, socket_fds, tcp_sockets, tls_lines, write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root")

ALICE = ("ftpw_alice", "alice-pw-1")
OPS = "ftpwarden-ops"


def value(url: str, promql: str) -> float:
    return sum(float(r["value"][1]) for r in query(url, promql))


def ops_pids(srv) -> list[int]:
    return [p for p in descendants(srv.proc.pid) if comm(p) == OPS]


@pytest.fixture
def ops_server(tmp_path: Path, accounts):
    started = []

    def start(*lines: str, mport: int | None = None):
        mport = mport or free_port()
        conf = write_conf(tmp_path, "delay_failed_login=0", f"metrics_listen=127.0.0.1:{mport}", *lines)
        srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), tmp_path)
        started.append(srv)
        assert wait_for(lambda: _get(f"http://127.0.0.1:{mport}/metrics")[0] == 200, 10), srv.stderr()
        srv.extra["mport"] = mport
        return srv
    yield start
    for srv in started:
        pids = ops_pids(srv)
        stop_server(srv)
        assert wait_for(lambda pids=pids: not [p for p in pids if comm(p) == OPS], 10), "ftpwarden-ops outlived it"


def login(srv, who=ALICE) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(srv.host, srv.port)
    ftp.login(*who)
    return ftp


def test_ops_process_is_unprivileged_and_jailed(ops_server, tmp_path):
    srv = ops_server()
    (pid,) = wait_for(lambda: ops_pids(srv), 5)
    status = Path(f"/proc/{pid}/status").read_text()
    nobody = pwd.getpwnam("nobody")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(map(int, uids)) == {nobody.pw_uid}, status
    assert os.readlink(f"/proc/{pid}/root") == str(tmp_path / "empty")
    assert "Seccomp:\t2" in status  # the pooled worker's allow-list
    # it holds the metrics listener, never the FTP listener (nor any file but stdio)
    tcp = tcp_sockets()
    held = {tcp[i][0] for i in socket_fds(pid) if i in tcp}
    assert held == {srv.extra["mport"]}, held
    files = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    others = [f for f in files if f.startswith("/") and f != "/dev/null" and not f.endswith(".err")]
    assert sorted(others) == [f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"], files  # files: no way out by ".."


def test_prometheus_sees_isolated_sessions_and_bytes(ops_server):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed")
    mport = free_port()
    with prometheus([f"127.0.0.1:{mport}"]) as prom:
        # the server takes the port Prometheus already scrapes
        srv = ops_server("write_enable=YES", mport=mport)
        assert srv.extra["mport"] == mport
        assert wait_for(lambda: query(prom.url, 'up{job="ftpwarden"} == 1'), 25), prom.log()
        blob = os.urandom(777_777)
        with pytest.raises(ftplib.error_perm):
            login(srv, ("ftpw_alice", "wrong"))
        ftp = login(srv)
        try:
            assert wait_for(lambda: value(prom.url, 'sum(ftpwarden_sessions{mode="isolated"})') >= 1, 15)
            ftp.storbinary("STOR ops-up.bin", io.BytesIO(blob))
            got = io.BytesIO()
            ftp.retrbinary("RETR ops-up.bin", got.write)
            assert got.getvalue() == blob
            ftp.delete("ops-up.bin")
        finally:
            ftp.quit()
        assert wait_for(lambda: value(prom.url, 'ftpwarden_transfer_bytes_total{direction="in"}') >= len(blob), 15)
        assert wait_for(lambda: value(prom.url, 'ftpwarden_transfer_bytes_total{direction="out"}') >= len(blob), 15)
        assert value(prom.url, 'ftpwarden_logins_total{result="failed"}') >= 1
        assert value(prom.url, 'ftpwarden_logins_total{result="ok"}') >= 1
        assert wait_for(lambda: value(prom.url, "sum(ftpwarden_sessions)") == 0, 15)
        for kind in ("broker", "zygote", "checker", "ops"):  # each process kind's memory, counted by the broker
            assert value(prom.url, f'ftpwarden_memory_resident_bytes{{kind="{kind}"}}') > 0, kind
            assert value(prom.url, f'ftpwarden_processes{{kind="{kind}"}}') == 1, kind
        labels = {k for r in query(prom.url, '{job="ftpwarden"}') for k in r["metric"]}
        assert labels <= {"__name__", "job", "instance", "class", "mode", "direction", "result", "code", "le", "kind"}


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.progress = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.rows += tag == "tr" and "session" in (a.get("class") or "").split()
        self.progress += tag == "progress" and a.get("max") == "8000000"  # the download's size came through


def test_isolated_status_page_in_chromium_and_refused_to_others(ops_server, tmp_path, accounts):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed")
    srv = ops_server("local_max_rate=200000", f"admin_group={admin_group_for_chromium()}")
    url = f"http://127.0.0.1:{srv.extra['mport']}/status"
    home = Path(accounts["alice"].pw_dir)
    big = home / "ops-big.bin"
    big.write_bytes(os.urandom(8_000_000))
    os.chown(big, accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    stop = threading.Event()

    def run() -> None:
        ftp = login(srv)
        try:
            def sink(_block: bytes) -> None:
                if stop.is_set():
                    raise EOFError
            ftp.retrbinary("RETR ops-big.bin", sink)
        except (EOFError, OSError, ftplib.Error):
            pass
        finally:
            ftp.close()
    mover = threading.Thread(target=run, daemon=True)
    mover.start()
    try:
        assert wait_for(lambda: b"transfer-progress" in _get(url)[1], 15), (_get(url), srv.stderr())
        time.sleep(1.2)
        dom = chromium_dump_dom(url)
        parsed = _Dom()
        parsed.feed(dom)
        assert parsed.rows >= 1 and parsed.progress >= 1, dom[:3000]
        assert "ops-big.bin" in dom and "ftpw_alice" in dom and "alice-pw-1" not in dom
        shot = chromium_screenshot(url, tmp_path / "status-isolated.png", (1280, 800))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"isolated status page screenshot: {shot}")
        # a local user outside admin_group: refused; /metrics is public on its address
        assert _as_user("ftpw_bob", lambda: {200: 2, 403: 3}.get(_get(url)[0], 1)) == 3
        assert _as_user("ftpw_bob", lambda: {200: 2, 403: 3}.get(_get(url.replace("/status", "/metrics"))[0], 1)) == 2
    finally:
        stop.set()
        mover.join(20)
        big.unlink(missing_ok=True)


def test_isolated_tls_handshakes_counted(ops_server, tmp_path):
    """The pre-login process does the handshake; its LogTlsHandshake reaches the broker's counters."""
    srv = ops_server(*tls_lines(tmp_path))
    url = f"http://127.0.0.1:{srv.extra['mport']}/metrics"

    def metric(name: str) -> float:
        text = _get(url)[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
    with tls_login(srv, user="ftpw_alice", password="alice-pw-1", timeout=20) as ftp:
        assert ftp.sendcmd("NOOP").startswith("200")
    assert wait_for(lambda: metric('ftpwarden_tls_handshakes_total{result="ok"}') == 1, 10), _get(url)[1][:4000]
