"""Pooled mode behind the real HAProxy with the PROXY protocol (issue 13).

HAProxy listens on 127.0.0.2 (the balancer's public address) and connects to the
node on 127.0.0.1 from 127.0.0.1, the one address in proxy_protocol_from.  Clients
bind distinct 127.0.0.x source addresses, so the node can only know them from the
headers.  The node's passive range is forwarded by a second frontend (same ports,
send-proxy-v2), so data connections arrive from HAProxy with a header too.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..services import free_port, free_port_range, haproxy
from .conftest import Ctl, Server, serve

pytestmark = pytest.mark.skipif(not shutil.which("haproxy", path="/usr/sbin:/usr/bin"),
                                reason="scripts/test-setup installs haproxy")

TIMEOUT = 15
FRONT_HOST = "127.0.0.2"
PASV_COUNT = 8


def _hap_cfg(node: Server, pasv: int, fronts: dict[str, tuple[int, int, str]]) -> str:
    """HAProxy: each front (name -> (front port, node port, send-proxy option)), and the passive range."""
    text = ("global\n maxconn 512\n"
            "defaults\n mode tcp\n timeout connect 3s\n timeout client 30s\n timeout server 30s\n")
    for name, (front, port, send) in fronts.items():
        text += (f"frontend {name}\n bind {FRONT_HOST}:{front}\n default_backend {name}_b\n"
                 f"backend {name}_b\n server n1 127.0.0.1:{port} {send}\n")
    text += (f"frontend pasv\n bind {FRONT_HOST}:{pasv}-{pasv + PASV_COUNT - 1}\n default_backend pasv_b\n"
             f"backend pasv_b\n server n1 127.0.0.1 send-proxy-v2\n")  # no port: the client's own
    return text


def _node(make_server, tmp_path: Path, *opts: str, workers: int = 1) -> tuple[Server, int, Path]:
    pasv = free_port_range(PASV_COUNT, ("127.0.0.1", FRONT_HOST))
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    srv = serve(make_server, tmp_path, "proxy_protocol_enable=YES", "proxy_protocol_from=127.0.0.1",
                f"pasv_min_port={pasv}", f"pasv_max_port={pasv + PASV_COUNT - 1}",
                "xferlog_enable=YES", "dual_log_enable=YES", "xferlog_std_format=YES",
                f"xferlog_file={logs / 'xferlog'}", f"vsftpd_log_file={logs / 'vsftpd.log'}",
                f"json_log_file={logs / 'events.json'}", *opts, workers=workers)
    return srv, pasv, logs


def _ftp(port: int, source: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT, source_address=(source, 0))
    ftp.connect(FRONT_HOST, port)
    return ftp


def _closed_silently(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing (None: still open after `within` seconds)."""
    sock.settimeout(within)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return got


def _wait_for(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------- control and data through HAProxy

def test_clients_are_seen_with_their_own_addresses(make_server, tmp_path):
    srv, pasv, logs = _node(make_server, tmp_path)
    v2, v1 = free_port(FRONT_HOST), free_port(FRONT_HOST)
    cfg = _hap_cfg(srv, pasv, {"v2": (v2, srv.port, "send-proxy-v2"), "v1": (v1, srv.port, "send-proxy")})
    data = (srv.root / "data.bin").read_bytes()
    with haproxy(cfg) as hap:
        for port, source in ((v2, "127.0.0.7"), (v1, "127.0.0.8")):
            with _ftp(port, source) as ftp:
                ftp.login("alice", "secret")
                ftp.set_pasv(True)
                r = ftp.sendcmd("PASV")  # no pasv_address: the balancer's address, from the header
                assert "(127,0,0,2," in r, r
                buf = io.BytesIO()
                ftp.retrbinary("RETR data.bin", buf.write)
                assert buf.getvalue() == data, hap.log()
                up = os.urandom(500_000)
                ftp.storbinary(f"STOR up-{source}.bin", io.BytesIO(up))
                assert (srv.root / f"up-{source}.bin").read_bytes() == up
                ftp.quit()
    vsftpd = _wait_for(lambda: 'Client "127.0.0.8"' in _read(logs / "vsftpd.log") and _read(logs / "vsftpd.log"))
    assert 'CONNECT: Client "127.0.0.7"' in vsftpd and 'CONNECT: Client "127.0.0.8"' in vsftpd, vsftpd
    assert 'OK DOWNLOAD: Client "127.0.0.7"' in vsftpd and 'OK UPLOAD: Client "127.0.0.8"' in vsftpd, vsftpd
    assert '"127.0.0.1"' not in vsftpd, vsftpd  # never the balancer's address
    xfer = _read(logs / "xferlog").splitlines()
    hosts = sorted({line.split()[6] for line in xfer})
    assert hosts == ["127.0.0.7", "127.0.0.8"], xfer
    events = [json.loads(x) for x in _read(logs / "events.json").splitlines()]
    assert {e.get("client") for e in events if e.get("event") == "connect"} == {"127.0.0.7", "127.0.0.8"}


def test_max_per_ip_and_bans_count_the_real_client(make_server, tmp_path):
    srv, pasv, _ = _node(make_server, tmp_path, "max_per_ip=2", "ban_threshold=2", "ban_window=60",
                         "ban_seconds=60", workers=2)  # counted across the worker processes
    front = free_port(FRONT_HOST)
    with haproxy(_hap_cfg(srv, pasv, {"ctl": (front, srv.port, "send-proxy-v2")})):
        first = [Ctl(FRONT_HOST, front, source="127.0.0.7") for _ in range(2)]
        assert all(c.greeting.startswith(b"220") for c in first)
        third = Ctl(FRONT_HOST, front, source="127.0.0.7")
        assert third.greeting.startswith(b"421"), third.greeting  # the client's third, not HAProxy's
        other = Ctl(FRONT_HOST, front, source="127.0.0.8")
        assert other.greeting.startswith(b"220")
        for c in (*first, third, other):
            c.close()
        # two failed logins ban 127.0.0.9, and only it
        for _ in range(2):
            bad = Ctl(FRONT_HOST, front, source="127.0.0.9")
            bad.cmd("USER alice")
            assert bad.cmd("PASS wrong").startswith(b"530")
            bad.close()
        banned = _wait_for(lambda: Ctl(FRONT_HOST, front, source="127.0.0.9").greeting.startswith(b"421"))
        assert banned
        ok = Ctl(FRONT_HOST, front, source="127.0.0.10").login()
        ok.close()


def test_tcp_wrappers_decide_on_the_declared_client(make_server, tmp_path):
    rules = tmp_path / "hosts"
    rules.mkdir()
    (rules / "hosts.allow").write_text("ftpwarden: 127.0.0.7\n")
    (rules / "hosts.deny").write_text("ALL: ALL\n")  # the balancer's 127.0.0.1 included
    srv, pasv, _ = _node(make_server, tmp_path, "tcp_wrappers=YES", f"tcp_wrappers_dir={rules}")
    front = free_port(FRONT_HOST)
    with haproxy(_hap_cfg(srv, pasv, {"ctl": (front, srv.port, "send-proxy-v2")})):
        allowed = Ctl(FRONT_HOST, front, source="127.0.0.7")
        assert allowed.greeting.startswith(b"220")
        allowed.login()
        allowed.close()
        denied = Ctl(FRONT_HOST, front, source="127.0.0.8")
        assert denied.greeting == b"421 Service not available.\r\n"
        denied.close()


def test_passive_peer_check_uses_the_declared_address(make_server, tmp_path):
    srv, pasv, _ = _node(make_server, tmp_path)
    front = free_port(FRONT_HOST)
    data = (srv.root / "data.bin").read_bytes()
    with haproxy(_hap_cfg(srv, pasv, {"ctl": (front, srv.port, "send-proxy-v2")})):
        ctl = Ctl(FRONT_HOST, front, source="127.0.0.7").login()
        host, port = ctl.pasv()
        assert host == FRONT_HOST
        thief = socket.create_connection((host, port), timeout=TIMEOUT, source_address=("127.0.0.9", 0))
        time.sleep(0.3)  # HAProxy has passed it on: it waits in the node's backlog first
        mine = socket.create_connection((host, port), timeout=TIMEOUT, source_address=("127.0.0.7", 0))
        ctl.send("RETR data.bin")
        assert ctl.reply().startswith(b"150")
        assert _closed_silently(thief, TIMEOUT) == b""  # through HAProxy: its declared 127.0.0.9 was refused
        got = b""
        while chunk := mine.recv(65536):
            got += chunk
        assert ctl.reply().startswith(b"226")
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        thief.close()
        mine.close()
        ctl.close()


# ---------------------------------------------------------------- refusals

def test_untrusted_source_and_missing_header_are_closed_without_reply(make_server, tmp_path):
    srv, _, logs = _node(make_server, tmp_path)
    # a client that is not the balancer, straight to the node: closed at once
    t = time.monotonic()
    direct = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=("127.0.0.9", 0))
    direct.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 1234 21\r\n")  # a forged header changes nothing
    assert _closed_silently(direct, 3) == b""
    assert time.monotonic() - t < 3
    direct.close()
    # the balancer's address without a header: FTP bytes are not a header
    bare = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=("127.0.0.1", 0))
    bare.sendall(b"USER alice\r\n")
    assert _closed_silently(bare, 3) == b""
    bare.close()
    # ... and silence: closed at the header's deadline (5 s), still without a word
    t = time.monotonic()
    silent = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=("127.0.0.1", 0))
    assert _closed_silently(silent, 9) == b""
    assert 4 < time.monotonic() - t < 9
    silent.close()
    assert srv.proc.poll() is None
    err = srv.stderr()
    assert "127.0.0.9: connection refused: not in proxy_protocol_from" in err, err
    assert "127.0.0.1: connection refused: PROXY header: no PROXY header" in err, err
    assert "127.0.0.1: connection refused: no whole PROXY header within 5 s" in err, err
    vsftpd = _read(logs / "vsftpd.log")
    assert 'CONNECT: Client "127.0.0.9", "refused: not in proxy_protocol_from"' in vsftpd, vsftpd


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_half_open_connections_do_not_stop_accepting(make_server, tmp_path):
    """Hundreds of trusted connections that never send a header: the node keeps accepting
    and serving through HAProxy meanwhile, and drops each one at its deadline."""
    srv, pasv, _ = _node(make_server, tmp_path)
    front = free_port(FRONT_HOST)
    with haproxy(_hap_cfg(srv, pasv, {"ctl": (front, srv.port, "send-proxy-v2")})):
        Ctl(FRONT_HOST, front, source="127.0.0.7").login().close()  # warm
        before = _rss_kib(srv.proc.pid)
        silent = [socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=("127.0.0.1", 0))
                  for _ in range(300)]
        t = time.monotonic()
        ok = Ctl(FRONT_HOST, front, source="127.0.0.7").login()
        served = time.monotonic() - t
        ok.close()
        during = _rss_kib(srv.proc.pid)
        assert served < 2.0, served
        for s in silent:
            assert _closed_silently(s, 10) == b""
            s.close()
        print(f"\nFIGURE proxy half-open: 300 silent connections, login meanwhile in {served * 1000:.0f} ms, "
              f"RSS {before} -> {during} KiB")
        assert during - before < 20_000
    assert srv.proc.poll() is None


def test_header_split_over_packets_and_pipelined_bytes(make_server, tmp_path):
    """Exact consumption: the FTP bytes sent in the header's own packet stay for the session."""
    srv, _, _ = _node(make_server, tmp_path)
    s = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT, source_address=("127.0.0.1", 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    line = b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\r\n"
    s.sendall(line[:9])
    time.sleep(0.2)
    s.sendall(line[9:] + b"USER alice\r\nPASS secret\r\n")
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    assert f.readline().startswith(b"331")
    assert f.readline().startswith(b"230")
    s.sendall(b"EPRT |1|192.0.2.7|40000|\r\n")  # PORT to the declared client is its own address
    assert f.readline().startswith(b"200")
    s.sendall(b"EPRT |1|127.0.0.1|40000|\r\n")  # ... and the balancer's is a bounce
    assert f.readline().startswith(b"500 Illegal EPRT")
    s.close()


@pytest.mark.skipif(not shutil.which("curl"), reason="scripts/test-setup installs curl")
def test_implicit_tls_behind_haproxy(make_server, tmp_path, cert):
    tls_port = free_port()
    srv, pasv, logs = _node(make_server, tmp_path, "ssl_enable=YES", f"rsa_cert_file={cert[0]}",
                            f"rsa_private_key_file={cert[1]}", f"implicit_ssl_port={tls_port}")
    front = free_port(FRONT_HOST)
    up = tmp_path / "up.bin"
    up.write_bytes(os.urandom(700_000))
    with haproxy(_hap_cfg(srv, pasv, {"tls": (front, tls_port, "send-proxy-v2")})) as hap:
        url = f"ftps://{FRONT_HOST}:{front}"
        r = subprocess.run(["curl", "-sS", "-k", "--interface", "127.0.0.7", "-u", "alice:secret",
                            f"{url}/data.bin"], capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0, (r.stderr, hap.log(), srv.stderr())
        assert r.stdout == (srv.root / "data.bin").read_bytes()
        r = subprocess.run(["curl", "-sS", "-k", "--interface", "127.0.0.7", "-u", "alice:secret",
                            "-T", str(up), f"{url}/up.bin"], capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0, (r.stderr, srv.stderr())
        assert (srv.root / "up.bin").read_bytes() == up.read_bytes()
    vsftpd = _read(logs / "vsftpd.log")
    assert 'OK UPLOAD: Client "127.0.0.7"' in vsftpd, vsftpd


# ---------------------------------------------------------------- configuration

def _ftpwarden(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("lines,expected", [
    (["proxy_protocol_enable=YES"], "proxy_protocol_from: no address given"),
    (["proxy_protocol_enable=YES", "proxy_protocol_from=127.0.0.1, 10.0.0.300"],
     "proxy_protocol_from: '10.0.0.300' is not an address or CIDR range"),
    (["proxy_protocol_enable=YES", "proxy_protocol_from=127.0.0.1", "listen=NO", "pooled=NO"],
     "proxy_protocol_enable=YES: not supported with listen=NO"),  # inetd mode (isolated, as root)
])
def test_bad_proxy_settings_stop_check_config_and_serve(tmp_path, lines, expected):
    root = tmp_path / "root"
    root.mkdir()
    conf = tmp_path / "ftpwarden.conf"
    conf.write_text("\n".join(["listen=YES", "listen_address=127.0.0.1", "listen_port=0", "pooled=YES",
                               "anonymous_enable=YES", f"anon_root={root}", *lines]) + "\n")
    r = _ftpwarden("check-config", str(conf))
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert f"{conf}:" in r.stderr  # at the line that set it
    r = _ftpwarden("serve", "--config", str(conf))
    assert r.returncode == 2 and expected in r.stderr, r.stderr
