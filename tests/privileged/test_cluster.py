"""Two nodes behind the real HAProxy, sharing users and bans in the real PostgreSQL
(issue 13, README "Running several nodes").

The balancer runs contrib/haproxy/haproxy.cfg itself, with only its addresses and
ports moved to loopback: control connections balanced over a pooled node
(127.0.1.1) and an isolated-mode node (127.0.1.2) with PROXY v2 headers, and one
frontend per node's passive range.  HAProxy listens on 127.0.0.1 (the "public"
address) and reaches the nodes from 127.0.0.1 (proxy_protocol_from); each client
binds its own 127.0.0.x, so every node sees the balancer as the peer and must take
the client's address from the header.  Users come from user_db_url (added with
`ftpwarden user add --db postgresql://...`), bans are shared through state_db_url,
and both nodes serve one directory with atomic_uploads.
"""

from __future__ import annotations

import concurrent.futures
import ftplib
import hashlib
import io
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..integration.conftest import REPO, Server, start_server, stop_server
from ..services import Postgres, Service, free_port, free_port_range, haproxy, postgres
from .conftest import conf_at

pytestmark = pytest.mark.timeout(420)

SHIPPED = REPO / "contrib" / "haproxy" / "haproxy.cfg"
NODES = ("127.0.1.1", "127.0.1.2")
FRONT = "127.0.0.1"
RANGE = 40  # passive ports per node
CLIENTS = 50
PASSWORD = "cluster-pw"
BAN_THRESHOLD = 4
TIMEOUT = 30


@dataclass
class Cluster:
    pg: Postgres
    balancer: Service
    front: int
    nodes: tuple[Server, Server]
    logs: tuple[Path, Path]
    data: Path
    tmp: Path

    def connect(self, source: str, *, login: bool = True, user: str = "carol") -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=TIMEOUT, source_address=(source, 0))
        ftp.connect(FRONT, self.front)
        if login:
            ftp.login(user, PASSWORD)
        return ftp

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def _ftpwarden(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def _balancer_config(front: int, node_ports: tuple[int, int], ranges: tuple[int, int],
                     metrics: tuple[int, int]) -> str:
    """contrib/haproxy/haproxy.cfg, its example addresses and ports moved to loopback."""
    text = SHIPPED.read_text()
    # run unprivileged, it cannot raise its descriptor limit to what 20000 connections need
    text = text.replace("maxconn 20000", "maxconn 4000")
    text = text.replace("log stdout format raw local0 info", "log stdout format raw local0 notice")
    text = text.replace("203.0.113.10:21\n", f"{FRONT}:{front}\n")
    for i, (node, old_range) in enumerate(zip(NODES, ("30000-30999", "31000-31999"), strict=True)):
        text = text.replace(f"203.0.113.10:{old_range}", f"{FRONT}:{ranges[i]}-{ranges[i] + RANGE - 1}")
        old = f"10.0.0.1{i + 1}"
        text = text.replace(f"{old}:21 send-proxy-v2 check port 9121 inter 5s",
                            f"{node}:{node_ports[i]} send-proxy-v2 check port {metrics[i]} inter 1s")
        text = text.replace(f"server node{i + 1} {old} send-proxy-v2", f"server node{i + 1} {node} send-proxy-v2")
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "203.0.113" in line or "10.0.0." in line], text
    return text


def _node_conf(base: Path, i: int, port: int, first: int, metrics: int, pg: Postgres, data: Path,
               *extra: str) -> Path:
    (base / f"n{i}").mkdir()
    return conf_at(base / f"n{i}", f"listen_address={NODES[i]}", f"listen_port={port}",
                   "anonymous_enable=NO", "write_enable=YES", f"local_root={data}", "atomic_uploads=YES",
                   "allow_writeable_chroot=YES",
                   "proxy_protocol_enable=YES", f"proxy_protocol_from={FRONT}",
                   f"pasv_min_port={first}", f"pasv_max_port={first + RANGE - 1}",
                   f"user_db_url={pg.url}", f"state_db_url={pg.url}", f"node_name=node{i + 1}",
                   f"ban_threshold={BAN_THRESHOLD}", "ban_seconds=60", "max_per_ip=20", "max_clients=500",
                   f"metrics_listen={NODES[i]}:{metrics}",
                   "xferlog_enable=YES", "xferlog_std_format=NO", f"vsftpd_log_file={base / f'node{i + 1}.log'}",
                   "log_ftp_protocol=NO", *extra)


@pytest.fixture(scope="module")
def cluster(session_isolation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    os.chmod(tmp, 0o755)
    data = tmp / "data"
    data.mkdir()
    ftp_user = pwd.getpwnam("ftp")  # guest sessions of the isolated node run as guest_username
    os.chown(data, ftp_user.pw_uid, ftp_user.pw_gid)
    with postgres() as pg:
        init = _ftpwarden("db", "init", "--db", pg.url)
        assert init.returncode == 0, init.stderr
        add = _ftpwarden("user", "add", "--db", pg.url, "carol", "--root", str(data), "--write",
                         stdin=PASSWORD + "\n")
        assert add.returncode == 0, add.stderr
        node_ports = (free_port(NODES[0]), free_port(NODES[1]))
        metrics = (free_port(NODES[0]), free_port(NODES[1]))
        first = free_port_range(2 * RANGE, (FRONT, *NODES))
        ranges = (first, first + RANGE)
        confs = (_node_conf(tmp, 0, node_ports[0], ranges[0], metrics[0], pg, data, "pooled=YES",
                            f"pasv_address={FRONT}"),
                 # no pasv_address: PASV answers the address the client connected to (the header's)
                 _node_conf(tmp, 1, node_ports[1], ranges[1], metrics[1], pg, data))
        nodes: list[Server] = []
        try:
            for conf in confs:
                nodes.append(start_server(["--config", str(conf)], data, tmp))
            front = free_port(FRONT)
            with haproxy(_balancer_config(front, node_ports, ranges, metrics)) as balancer:
                yield Cluster(pg, balancer, front, (nodes[0], nodes[1]),
                              (tmp / "node1.log", tmp / "node2.log"), data, tmp)
        finally:
            for srv in nodes:
                stop_server(srv)


def _client_address(i: int) -> str:
    return f"127.0.0.{10 + i}"


def _round_trip(cluster: Cluster, i: int) -> tuple[str, bytes, bytes]:
    """One client: log in through the balancer, store its own bytes, read them back (passive)."""
    source = _client_address(i)
    payload = hashlib.sha256(source.encode()).digest() * (2048 + 97 * i)  # 64 KiB .. 210 KiB, each different
    ftp = cluster.connect(source)
    try:
        ftp.storbinary(f"STOR c{i}.bin", io.BytesIO(payload))
        got = io.BytesIO()
        ftp.retrbinary(f"RETR c{i}.bin", got.write)
        ftp.quit()
    finally:
        ftp.close()
    return source, payload, got.getvalue()


def test_fifty_clients_byte_exact_through_the_balancer_with_their_own_addresses(cluster: Cluster) -> None:
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: _round_trip(cluster, i), range(CLIENTS)))
    for i, (source, sent, got) in enumerate(results):
        assert got == sent, f"client {source}: {len(got)} bytes back of {len(sent)}"
        assert (cluster.data / f"c{i}.bin").read_bytes() == sent
    # every node served some, and every client's own address is in the logs, never only the balancer's
    logs = [p.read_text(errors="replace") for p in cluster.logs]
    for i in range(CLIENTS):
        name = f"/c{i}.bin"
        lines = [line for text in logs for line in text.splitlines() if name in line and "UPLOAD" in line]
        assert lines and all(f'"{_client_address(i)}"' in line for line in lines), (name, lines)
    assert all(re.search(r"OK UPLOAD", text) for text in logs), "a node served no upload: no balancing"


def test_a_user_added_in_postgresql_logs_in_on_both_nodes(cluster: Cluster) -> None:
    """Several sessions at once: leastconn spreads them over both nodes; each logs in."""
    ftps = [cluster.connect(_client_address(60 + i)) for i in range(6)]
    try:
        for ftp in ftps:
            assert ftp.pwd() == "/"
    finally:
        for ftp in ftps:
            ftp.close()
    text = cluster.log_text()
    served = [any(f'"{_client_address(60 + i)}"' in line and "OK LOGIN" in line
                  for line in p.read_text(errors="replace").splitlines()) for p in cluster.logs for i in range(6)]
    assert any(served[:6]) and any(served[6:]), f"logins on one node only:\n{text[-3000:]}"


def test_a_brute_forcer_is_banned_on_both_nodes_while_another_client_logs_in(cluster: Cluster) -> None:
    attacker, other = "127.0.0.200", "127.0.0.201"
    for _ in range(BAN_THRESHOLD):
        ftp = cluster.connect(attacker, login=False)
        try:
            with pytest.raises(ftplib.error_perm, match="530"):
                ftp.login("carol", "wrong")
        finally:
            ftp.close()
    time.sleep(1.5)  # "a ban on one node holds on all within a second"

    def refused() -> str:
        try:
            ftp = cluster.connect(attacker, login=False)
        except ftplib.error_temp as e:
            return str(e)
        ftp.close()
        return ""

    # leastconn with no session open alternates between the nodes: several tries meet both
    answers = [refused() for _ in range(6)]
    assert all(a.startswith("421") for a in answers), answers
    logs = [p.read_text(errors="replace") for p in cluster.logs]
    assert all(attacker in text for text in logs), "the attacker reached one node only: the test proves nothing"
    ftp = cluster.connect(other)
    try:
        assert ftp.pwd() == "/"
    finally:
        ftp.close()


def test_two_nodes_storing_one_name_at_once_leave_one_whole_file(cluster: Cluster) -> None:
    contents = [bytes([65 + i]) * (3 << 20) for i in range(2)]
    for round_ in range(5):
        ftps = [cluster.connect(_client_address(80 + i)) for i in range(2)]  # two sessions: both nodes
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                replies = list(pool.map(lambda ftp, data: ftp.storbinary("STOR same.bin", io.BytesIO(data)),
                                        ftps, contents))
        finally:
            for ftp in ftps:
                ftp.close()
        assert all(r.startswith("226") for r in replies), replies
        assert (cluster.data / "same.bin").read_bytes() in contents, f"round {round_}: a mixed or cut file"
    assert not [p.name for p in cluster.data.iterdir() if "partial" in p.name]


def test_postgresql_stopped_gives_421_to_new_logins_and_no_hang(cluster: Cluster) -> None:
    """Last in the module: it stops the database (and starts it again)."""
    open_session = cluster.connect("127.0.0.220")
    try:
        cluster.pg.stop()
        started = time.monotonic()
        ftp = cluster.connect("127.0.0.221", login=False)
        try:
            with pytest.raises(ftplib.error_temp, match=r"^421"):
                ftp.login("carol", PASSWORD)
        finally:
            ftp.close()
        assert time.monotonic() - started < 15, "a login waited on the stopped database"
        # the session opened before goes on
        open_session.storbinary("STOR during-outage.bin", io.BytesIO(b"x" * 100000))
        assert (cluster.data / "during-outage.bin").stat().st_size == 100000
        assert "database" in cluster.log_text() or "database" in "".join(n.stderr() for n in cluster.nodes)
    finally:
        open_session.close()
        cluster.pg.start()

    def logs_in() -> bool:
        try:
            cluster.connect("127.0.0.222").close()
            return True
        except (ftplib.error_temp, OSError):
            return False

    assert wait_for(logs_in, timeout=20), "logins did not come back with the database"
