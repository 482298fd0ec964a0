"""PROXY protocol in isolated mode (issue 13), behind a real HAProxy.

The node listens on 127.0.0.2 with proxy_protocol_enable=YES and trusts only
127.0.0.1, the address HAProxy connects from.  HAProxy has a send-proxy (v1) and
a send-proxy-v2 frontend for the control port, and one send-proxy-v2 frontend
per passive port on 127.0.0.1 (the node's passive listeners are on 127.0.0.2).
Clients come from distinct 127.0.0.x addresses: each one's own address is what
the node must see everywhere (logs, max_per_ip, bans, tcp_wrappers, PAM_RHOST,
PASV's advertised address: the destination in the header, 127.0.0.1, not the
node's own 127.0.0.2).  Root never reads the header: the ftpwarden-proxy
process (priv/proxyreader.py) does, as nopriv_user in the empty jail.
"""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import descendants, wait_for
from ..integration.conftest import Server, start_server, stop_server
from ..integration.test_ops_control import wait_who
from ..services import free_port, free_port_range, haproxy
from .conftest import LOCAL_USERS, comm, ids, socket_fds, tcp_sockets, tls_lines

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")

TIMEOUT = 20
ALICE = ("ftpw_alice", "alice-pw-1")
NODE = "127.0.0.2"
BALANCER = "127.0.0.1"
PROXY = "ftpwarden-proxy"
PASV_PORTS = 4
TOO_MANY_FROM_YOU = "421 There are too many connections from your internet address."
BANNED = "421 Too many failed logins from your address; try again later."


@pytest.fixture(scope="module")
def node(tmp_path_factory, session_isolation, accounts) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("proxy")
    os.chmod(base, 0o755)
    (base / "empty").mkdir(mode=0o755)
    wrappers = base / "wrappers"
    wrappers.mkdir()
    (wrappers / "hosts.allow").write_text("")
    (wrappers / "hosts.deny").write_text("ALL: 127.0.0.9\n")
    rhost = base / "rhost"
    script = base / "rhost.sh"
    script.write_text(f'#!/bin/sh\necho "$PAM_RHOST" >> {rhost}\n')
    script.chmod(0o755)
    service = f"ftpwarden-proxytest-{uuid.uuid4().hex[:8]}"  # the usual one, plus a record of PAM_RHOST
    pam = Path("/etc/pam.d") / service
    pam.write_text(f"auth optional pam_exec.so {script}\n" + Path("/etc/pam.d/ftpwarden").read_text())
    pasv = free_port_range(PASV_PORTS, (NODE, BALANCER))
    conf = base / "node.conf"
    conf.write_text("\n".join([
        "listen=YES", f"listen_address={NODE}", "listen_port=0", f"secure_chroot_dir={base / 'empty'}",
        *(line for line in LOCAL_USERS if not line.startswith("pam_service_name")), f"pam_service_name={service}",
        "write_enable=YES", "delay_failed_login=0", "max_per_ip=2", "ban_threshold=3", "max_login_fails=1",
        "tcp_wrappers=YES", f"tcp_wrappers_dir={wrappers}", "setproctitle_enable=YES",
        "xferlog_enable=YES", f"vsftpd_log_file={base / 'vsftpd.log'}", f"control_socket={base / 'control.sock'}",
        "proxy_protocol_enable=YES", f"proxy_protocol_from={BALANCER}",
        f"pasv_min_port={pasv}", f"pasv_max_port={pasv + PASV_PORTS - 1}", ""]))
    srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)
    front1, front2 = free_port(), free_port()
    lines = ["defaults", " mode tcp", " timeout connect 2s", " timeout client 30s", " timeout server 30s",
             f"frontend v1\n bind {BALANCER}:{front1}\n default_backend v1",
             f"backend v1\n server n {NODE}:{srv.port} send-proxy source {BALANCER}",
             f"frontend v2\n bind {BALANCER}:{front2}\n default_backend v2",
             f"backend v2\n server n {NODE}:{srv.port} send-proxy-v2 source {BALANCER}"]
    for port in range(pasv, pasv + PASV_PORTS):  # one frontend per passive port of the node
        lines += [f"frontend p{port}\n bind {BALANCER}:{port}\n default_backend p{port}",
                  f"backend p{port}\n server n {NODE}:{port} send-proxy-v2 source {BALANCER}"]
    try:
        with haproxy("\n".join(lines) + "\n") as hap:
            srv.extra.update(log=base / "vsftpd.log", rhost=rhost, fronts=(front1, front2), hap=hap, conf=conf)
            yield srv
    finally:
        stop_server(srv)
        pam.unlink()


def via(node: Server, source: str, version: int = 2, login: tuple[str, str] | None = ALICE) -> ftplib.FTP:
    """An ftplib client from `source` through HAProxy's v1 or v2 frontend."""
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(BALANCER, node.extra["fronts"][version - 1], source_address=(source, 0))
    if login is not None:
        ftp.login(*login)
    return ftp


def greeting(node: Server, source: str, version: int = 2) -> str:
    """The first line the node says through HAProxy to a client from `source`."""
    with socket.create_connection((BALANCER, node.extra["fronts"][version - 1]), timeout=TIMEOUT,
                                  source_address=(source, 0)) as s:
        return s.makefile("rb").readline().decode().rstrip("\r\n")


def log_lines(node: Server, *words: str) -> list[str]:
    return [line for line in node.extra["log"].read_text().splitlines() if all(w in line for w in words)]


def titled(node: Server, text: str) -> list[int]:
    out = []
    for pid in descendants(node.proc.pid):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def proxy_pids(node: Server) -> list[int]:
    return [p for p in descendants(node.proc.pid) if comm(p) == PROXY]


def direct(source: str, node: Server) -> socket.socket:
    """A connection straight to the node (no balancer) from `source`."""
    return socket.create_connection((NODE, node.port), timeout=TIMEOUT, source_address=(source, 0))


def closed_silently(s: socket.socket, within: float) -> bool:
    """The node closes `s` within `within` seconds without sending a byte."""
    s.settimeout(within)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("version, source", [(1, "127.0.0.7"), (2, "127.0.0.8")])
def test_each_client_is_seen_with_its_own_address(node, version, source):
    ftp = via(node, source, version, login=None)
    try:  # the pre-login process shows the declared client in its title
        assert wait_for(lambda: titled(node, f"{source}: not logged in"), TIMEOUT)
        ftp.login(*ALICE)
        assert ftp.sendcmd("NOOP").startswith("200")
        # `ftpwarden who` (the broker's session table) shows the declared client too
        rows = wait_who(node.extra["conf"], lambda rows: any(r["client"] == source for r in rows))
        assert not [r for r in rows if r["client"] == BALANCER], rows
    finally:
        ftp.quit()
    assert wait_for(lambda: log_lines(node, f'CONNECT: Client "{source}"'), TIMEOUT), node.extra["log"].read_text()
    assert wait_for(lambda: log_lines(node, "OK LOGIN", f'Client "{source}"'), TIMEOUT)
    assert not log_lines(node, f'Client "{BALANCER}"')  # never the balancer's
    assert source in node.extra["rhost"].read_text().split()  # PAM_RHOST, set in the checker's check child


def test_max_per_ip_counts_each_real_client(node):
    first, second = via(node, "127.0.0.10", login=None), via(node, "127.0.0.10", 1, login=None)
    try:
        assert greeting(node, "127.0.0.10") == TOO_MANY_FROM_YOU
        assert greeting(node, "127.0.0.11").startswith("220")  # behind the same balancer: its own count
    finally:
        first.close()
        second.close()
    assert wait_for(lambda: greeting(node, "127.0.0.10").startswith("220"), TIMEOUT)


def test_a_ban_holds_for_the_declared_client_only(node):
    for _ in range(3):
        ftp = via(node, "127.0.0.12", login=None)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login("ftpw_alice", "not-her-password")
        ftp.close()
    assert wait_for(lambda: log_lines(node, 'BAN: Client "127.0.0.12"'), TIMEOUT)
    assert greeting(node, "127.0.0.12") == BANNED
    assert greeting(node, "127.0.0.12", 1) == BANNED
    other = via(node, "127.0.0.13")  # the same balancer, another client: logs in
    assert other.sendcmd("NOOP").startswith("200")
    other.quit()


def test_tcp_wrappers_decide_on_the_declared_address(node):
    assert greeting(node, "127.0.0.9").startswith("421")
    assert wait_for(lambda: log_lines(node, 'CONNECT: Client "127.0.0.9"', "tcp_wrappers denial"), TIMEOUT)
    assert greeting(node, "127.0.0.14").startswith("220")


def test_untrusted_peer_is_closed_without_a_reply(node):
    with direct("127.0.0.5", node) as s:
        assert closed_silently(s, 3)
    assert wait_for(lambda: "127.0.0.5: connection refused: not in proxy_protocol_from" in node.stderr(),
                    TIMEOUT), node.stderr()
    assert wait_for(lambda: log_lines(node, 'CONNECT: Client "127.0.0.5"', "refused: not in proxy_protocol_from"))
    # a PROXY header from it is refused all the same, unread
    with direct("127.0.0.5", node) as s:
        s.sendall(b"PROXY TCP4 127.0.0.66 127.0.0.1 1000 21\r\n")
        assert closed_silently(s, 3)
    assert not log_lines(node, "127.0.0.66")


@pytest.mark.parametrize("send, why", [
    (b"GET / HTTP/1.0\r\n\r\n", "127.0.0.1: connection refused: PROXY header: "),
    (b"PROXY TCP4 300.0.0.1 127.0.0.1 1 21\r\n", "127.0.0.1: connection refused: PROXY header: "),
    # v2 (its 12-byte signature) announcing TCP4 with no address block
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x00", "127.0.0.1: connection refused: PROXY header: "),
    (b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "127.0.0.1: connection refused: PROXY header: "),  # v1 past 107 bytes
    (b"", "127.0.0.1: connection refused: PROXY header: no whole PROXY header within 5 s"),
])
def test_trusted_peer_with_a_bad_or_no_header_is_closed(node, send, why):
    before = node.stderr().count(why)
    started = time.monotonic()
    with direct(BALANCER, node) as s:
        if send:
            s.sendall(send)
        assert closed_silently(s, 10)
    took = time.monotonic() - started
    assert took < 7 if not send else took < 3, took  # no header: the 5 s deadline
    assert wait_for(lambda: node.stderr().count(why) > before, TIMEOUT), node.stderr()
    assert greeting(node, "127.0.0.15").startswith("220")  # the node keeps serving
    assert "Traceback" not in node.stderr()


def test_the_reader_is_unprivileged_and_jailed(node, accounts):
    (pid,) = wait_for(lambda: proxy_pids(node), TIMEOUT)
    nobody = accounts["nobody"]
    assert ids(pid) == ((nobody.pw_uid,) * 3, (nobody.pw_gid,) * 3)
    status = Path(f"/proc/{pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status
    assert os.readlink(f"/proc/{pid}/root") == str(Path(node.extra["log"]).parent / "empty")
    assert os.stat(f"/proc/{pid}/status").st_uid == 0  # not dumpable: /proc/PID/* stays root's
    assert not socket_fds(pid) & set(tcp_sockets())  # no header being read: no TCP socket at all


def test_the_reader_killed_is_started_again(node):
    (old,) = wait_for(lambda: proxy_pids(node), TIMEOUT)
    waiting = direct(BALANCER, node)  # trusted, its header not sent yet: pending
    try:
        time.sleep(0.3)
        os.kill(old, signal.SIGKILL)
        assert closed_silently(waiting, 3)  # closed at once, not after the header's deadline
    finally:
        waiting.close()
    new = wait_for(lambda: [p for p in proxy_pids(node) if p != old], TIMEOUT)
    assert new, node.stderr()
    assert "the PROXY header reader ended" in node.stderr()
    ftp = via(node, "127.0.0.16")
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def test_passive_transfer_through_the_balancer_is_byte_exact(node):
    data = os.urandom(3 << 20) + b"\r\n\n\r" * 1000
    name = f"proxy-{uuid.uuid4().hex[:8]}.bin"
    ftp = via(node, "127.0.0.17")
    try:
        host, _port = ftplib.parse227(ftp.sendcmd("PASV"))
        assert host == BALANCER  # the header's destination, not the node's own 127.0.0.2
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        got = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", got.write)
        assert hashlib.sha256(got.getvalue()).digest() == hashlib.sha256(data).digest()
        ftp.delete(name)
    finally:
        ftp.quit()
    assert wait_for(lambda: log_lines(node, "OK UPLOAD", 'Client "127.0.0.17"', name), TIMEOUT)


def test_active_mode_connects_to_the_declared_client_only(node):
    """PORT/EPRT: the host must be the declared client's (the broker checks it against
    Admit.remote_ip); the data connection goes straight to the client."""
    data = os.urandom(1 << 20)
    name = f"active-{uuid.uuid4().hex[:8]}.bin"
    ftp = via(node, "127.0.0.18")
    try:
        ftp.set_pasv(False)  # ftplib's listener is on its control connection's own address: 127.0.0.18
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        got = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", got.write)
        assert got.getvalue() == data
        with pytest.raises(ftplib.error_perm, match=r"^500"):  # the balancer's address is not the client's
            ftp.sendcmd("PORT 127,0,0,1,200,1")
        with pytest.raises(ftplib.error_perm, match=r"^500"):
            ftp.sendcmd("EPRT |1|127.0.0.19|51201|")
        ftp.delete(name)
    finally:
        ftp.quit()


def test_headers_read_at_once_are_bounded(node):
    """READS_MAX connections waiting for their header: the next one is closed at once, and
    once they have timed out the node serves again."""
    from ftpwarden.priv.proxyreader import READS_MAX
    waiting = []
    try:
        for _ in range(READS_MAX):
            waiting.append(direct(BALANCER, node))
        (reader,) = proxy_pids(node)  # it holds a dup of each while it reads
        assert wait_for(lambda: len(socket_fds(reader) & set(tcp_sockets())) >= READS_MAX, TIMEOUT)
        with direct(BALANCER, node) as extra:
            assert closed_silently(extra, 3)
        assert wait_for(lambda: "127.0.0.1: connection refused: too many PROXY headers are being read"
                        in node.stderr(), TIMEOUT), node.stderr()[-2000:]
    finally:
        for s in waiting:
            s.close()
    assert wait_for(lambda: greeting(node, "127.0.0.20").startswith("220"), TIMEOUT)


def test_sighup_keeps_the_reader(node):
    (pid,) = wait_for(lambda: proxy_pids(node), TIMEOUT)
    before = node.stderr().count("configuration re-read")
    os.kill(node.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: node.stderr().count("configuration re-read") > before, TIMEOUT)
    assert greeting(node, "127.0.0.21", 1).startswith("220")
    assert proxy_pids(node) == [pid]


@pytest.mark.parametrize("header, declared", [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 21\r\n", ("192.0.2.7", 40000, "198.51.100.1", 21)),
    (b"PROXY UNKNOWN\r\n", ("", 0, "", 0)),  # the socket's own peer
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([192, 0, 2, 8, 198, 51, 100, 1]) + b"\x9c\x41\x00\x15",
     ("192.0.2.8", 40001, "198.51.100.1", 21)),
    (b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00", ("", 0, "", 0)),  # v2 LOCAL (a health check)
])
def test_the_reader_consumes_exactly_the_header(header, declared):
    """The process's loop (priv/proxyreader.py, without its jail): the answer names the
    declared addresses, and what follows the header is still in the broker's copy."""
    from ftpwarden.priv.channel import Channel
    from ftpwarden.priv.messages import ProxyDeclared, ProxyRead
    from ftpwarden.priv.proxyreader import _serve
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader = threading.Thread(target=lambda: asyncio.run(_serve(theirs)), daemon=True)
    reader.start()
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=TIMEOUT)
        conn, _ = lsock.accept()
    chan = Channel(mine)
    try:
        client.sendall(header + b"USER anonymous\r\n")
        chan.send(ProxyRead(7), (conn.fileno(),))
        mine.settimeout(TIMEOUT)
        msg, _ = chan.recv(ProxyDeclared)
        assert msg == ProxyDeclared(7, True, *declared, "")
        conn.settimeout(TIMEOUT)
        assert conn.recv(100) == b"USER anonymous\r\n"  # never a byte after the header
        chan.send(ProxyRead(8), (conn.fileno(),))  # now no header at all: refused, with why
        client.sendall(b"PASS x\r\n")
        msg, _ = chan.recv(ProxyDeclared)
        assert isinstance(msg, ProxyDeclared) and (msg.token, msg.ok) == (8, False) and msg.why, msg
    finally:
        chan.close()  # the loop ends on it
        reader.join(TIMEOUT)
        client.close()
        conn.close()
    assert not reader.is_alive()


def test_ftps_behind_the_balancer(tmp_path_factory, session_isolation, accounts):
    """Implicit FTPS (the TLS handshake after the header) and explicit AUTH TLS, through
    HAProxy with send-proxy-v2 on control and on passive data, with curl at its defaults:
    the TLS helper and the identity worker get the right bytes and the declared client."""
    base = tmp_path_factory.mktemp("proxytls")
    os.chmod(base, 0o755)
    (base / "empty").mkdir(mode=0o755)
    home = Path(accounts["alice"].pw_dir)
    payload = os.urandom(900_000)
    (home / "tls-down.bin").write_bytes(payload)
    os.chown(home / "tls-down.bin", accounts["alice"].pw_uid, accounts["alice"].pw_gid)
    pasv, implicit = free_port_range(PASV_PORTS, (NODE, BALANCER)), free_port(NODE)
    conf = base / "node.conf"
    conf.write_text("\n".join([
        "listen=YES", f"listen_address={NODE}", "listen_port=0", f"secure_chroot_dir={base / 'empty'}",
        *LOCAL_USERS, "write_enable=YES", "delay_failed_login=0", *tls_lines(base), f"implicit_ssl_port={implicit}",
        "xferlog_enable=YES", f"vsftpd_log_file={base / 'vsftpd.log'}",
        "proxy_protocol_enable=YES", f"proxy_protocol_from={BALANCER}",
        f"pasv_min_port={pasv}", f"pasv_max_port={pasv + PASV_PORTS - 1}", ""]))
    srv = start_server(["--config", str(conf)], home, base)
    explicit_front, implicit_front = free_port(), free_port()
    lines = ["defaults", " mode tcp", " timeout connect 2s", " timeout client 30s", " timeout server 30s",
             f"frontend explicit\n bind {BALANCER}:{explicit_front}\n default_backend explicit",
             f"backend explicit\n server n {NODE}:{srv.port} send-proxy-v2 source {BALANCER}",
             f"frontend implicit\n bind {BALANCER}:{implicit_front}\n default_backend implicit",
             f"backend implicit\n server n {NODE}:{implicit} send-proxy-v2 source {BALANCER}"]
    for port in range(pasv, pasv + PASV_PORTS):
        lines += [f"frontend p{port}\n bind {BALANCER}:{port}\n default_backend p{port}",
                  f"backend p{port}\n server n {NODE}:{port} send-proxy-v2 source {BALANCER}"]
    user = f"{ALICE[0]}:{ALICE[1]}"
    try:
        with haproxy("\n".join(lines) + "\n") as hap:
            for source, url, extra in (("127.0.0.21", f"ftps://{BALANCER}:{implicit_front}", []),
                                       ("127.0.0.22", f"ftp://{BALANCER}:{explicit_front}", ["--ssl-reqd"])):
                down = subprocess.run(["curl", "-sS", "-k", *extra, "--interface", source, "-u", user,
                                       f"{url}/tls-down.bin"], capture_output=True, timeout=60)
                assert down.returncode == 0, (down.stderr, hap.log()[-2000:], srv.stderr()[-3000:])
                assert down.stdout == payload
                up = subprocess.run(["curl", "-sS", "-k", *extra, "--interface", source, "-u", user, "-T", "-",
                                     f"{url}/tls-up-{source}.bin"], input=payload, capture_output=True, timeout=60)
                assert up.returncode == 0, (up.stderr, srv.stderr()[-3000:])
                assert (home / f"tls-up-{source}.bin").read_bytes() == payload
    finally:
        stop_server(srv)
    log = (base / "vsftpd.log").read_text()
    for source in ("127.0.0.21", "127.0.0.22"):
        assert f'OK UPLOAD: Client "{source}"' in log and f'OK DOWNLOAD: Client "{source}"' in log, log
    assert f'Client "{BALANCER}"' not in log, log
