#!/usr/bin/env python3
"""Two nodes behind HAProxy next to one node without it, in one run (issue 13).

    sudo .venv/bin/python bench/cluster.py [--mode pooled|isolated] [--seconds 10] [--clients 8]

Setups, each measured the same way on loopback:
  single   one node, clients connect to it directly (no PROXY protocol);
  haproxy  two nodes of the same mode behind HAProxy 2.6 (contrib/haproxy/haproxy.cfg moved to
           loopback): control connections balanced with PROXY v2, passive data through each
           node's own frontend (so every data byte crosses the balancer too);
  haproxy+pg  the same, with users from user_db_url and bans from state_db_url in PostgreSQL 15.
Figures: logins/s (`clients` threads doing connect, USER, PASS, QUIT for `seconds`; again as a user
whose hash costs microseconds: the servers' own work per login) and the aggregate download rate
(`clients` sessions each fetching a 64 MiB file again and again, passive).
Client, balancer and nodes share this machine's cores: the balancer's figures include its own
CPU cost, which a real deployment puts on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from client import Control, FtpError, login_once  # noqa: E402
from fixture import CHEAP_USER, cheap_hash  # noqa: E402
from tests.services import free_port, free_port_range, haproxy, postgres  # noqa: E402

USER, PASSWORD = "benchuser", "benchpass"
NODES = ("127.0.1.1", "127.0.1.2")
FRONT = "127.0.0.1"
BIG = 64 << 20
RANGE = 50


def _ftpwarden(*args: str, stdin: str = "") -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=stdin, capture_output=True,
                       text=True, timeout=120, env=env)
    if r.returncode:
        raise RuntimeError(f"ftpwarden {' '.join(args[:2])}: {r.stderr.strip()}")


@contextmanager
def _node(work: Path, name: str, lines: list[str], host: str) -> Iterator[int]:
    """A node started with `lines`; yields its control port."""
    port = free_port(host)
    (work / name).mkdir()
    conf = work / name / "ftpwarden.conf"
    conf.write_text("\n".join([f"listen_address={host}", f"listen_port={port}", *lines, ""]))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with open(work / name / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ftpwarden", "serve", "--config", str(conf)],
                                stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ftpwarden: ... on HOST:PORT" once it listens
        if proc.poll() is not None or b" on " not in line:
            raise RuntimeError(f"{name} did not start: {(work / name / 'stderr').read_text()[-2000:]}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _balancer(front: int, ports: list[int], ranges: list[int]) -> str:
    text = (REPO / "contrib" / "haproxy" / "haproxy.cfg").read_text()
    # run unprivileged, it cannot raise its descriptor limit to what 20000 connections need
    text = text.replace("maxconn 20000", "maxconn 4000")
    text = text.replace("    log stdout format raw local0 info\n", "")
    text = text.replace("    option tcplog\n", "")
    text = text.replace("203.0.113.10:21\n", f"{FRONT}:{front}\n")
    for i, old_range in enumerate(("30000-30999", "31000-31999")):
        text = text.replace(f"203.0.113.10:{old_range}", f"{FRONT}:{ranges[i]}-{ranges[i] + RANGE - 1}")
        text = text.replace(f"10.0.0.1{i + 1}:21 send-proxy-v2 check port 9121 inter 5s",
                            f"{NODES[i]}:{ports[i]} send-proxy-v2")
        text = text.replace(f"server node{i + 1} 10.0.0.1{i + 1} send-proxy-v2",
                            f"server node{i + 1} {NODES[i]} send-proxy-v2")
    return text.replace("    option httpchk GET /metrics\n", "")


def _logins(port: int, clients: int, seconds: float, user: str = USER) -> tuple[float, int]:
    done, failed = [0] * clients, [0] * clients
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                login_once(FRONT, port, user, PASSWORD, timeout=30)
                done[i] += 1
            except (OSError, FtpError):
                failed[i] += 1
                time.sleep(0.01)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(done) / (time.monotonic() - started), sum(failed)


def _downloads(host: str, port: int, clients: int, seconds: float) -> tuple[float, int]:
    got, failed = [0] * clients, [0] * clients
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        buf = bytearray(1 << 20)
        try:
            c = Control(host, port, timeout=60)
            c.login(USER, PASSWORD)
            c.expect("TYPE I", 2)
        except (OSError, FtpError):
            failed[i] += 1
            return
        try:
            while time.monotonic() < deadline:
                n = c.retr("/big.bin", buf)
                if n != BIG:
                    failed[i] += 1
                got[i] += n
        except (OSError, FtpError):
            failed[i] += 1
        finally:
            c.close()

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return sum(got) / (time.monotonic() - started), sum(failed)


def _measure(name: str, host: str, port: int, args: argparse.Namespace) -> dict[str, object]:
    login_rate, login_fail = _logins(port, args.clients, args.seconds)
    cheap_rate, cheap_fail = _logins(port, args.clients, args.seconds, CHEAP_USER)
    rate, dl_fail = _downloads(host, port, args.clients, args.seconds)
    row = {"setup": name, "logins_s": round(login_rate, 1), "cheap_logins_s": round(cheap_rate, 1),
           "download_MiB_s": round(rate / 2**20, 1), "failures": login_fail + cheap_fail + dl_fail}
    print(f"{name:12} {row['logins_s']:>8} logins/s {row['cheap_logins_s']:>8} logins/s (cheap hash) "
          f"{row['download_MiB_s']:>9} MiB/s  failures {row['failures']}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("pooled", "isolated"), default="pooled")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--no-pg", action="store_true", help="skip the haproxy+pg setup")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.json")
    args = ap.parse_args()
    if args.mode == "isolated" and os.geteuid() != 0:
        ap.error("--mode isolated needs root")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftpw-cluster-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.chmod(work, 0o755)
        data = work / "data"
        data.mkdir()
        (work / "empty").mkdir()
        with open(data / "big.bin", "wb") as f:
            f.write(os.urandom(BIG))
        if os.geteuid() == 0:
            ftp = pwd.getpwnam("ftp")
            os.chown(data, ftp.pw_uid, ftp.pw_gid)
        users = work / "users"
        _ftpwarden("user", "add", "--db", str(users), USER, "--root", str(data), "--write", stdin=PASSWORD + "\n")
        cheap = cheap_hash(PASSWORD)  # its logins measure the servers' own work, not the hash
        with open(users, "a") as f:
            f.write(f"{CHEAP_USER}:{cheap}:root={data},write=yes\n")
        common = ["listen=YES", "anonymous_enable=NO", "write_enable=YES", f"local_root={data}",
                  f"secure_chroot_dir={work / 'empty'}", "max_clients=5000", "max_per_ip=5000",
                  "ban_threshold=0", "xferlog_enable=NO", "delay_failed_login=0", "allow_writeable_chroot=YES"]
        if args.mode == "pooled":
            common.append("pooled=YES")
        first = free_port_range(3 * RANGE, (FRONT, *NODES))
        ranges = [first, first + RANGE]

        def setup(name: str, extra: list[str], two: bool) -> dict[str, object]:
            with ExitStack() as nodes:
                ports = []
                for i in range(2 if two else 1):
                    low = ranges[i] if two else first + 2 * RANGE  # apart from the balancer's frontends
                    lines = [*common, *extra, f"pasv_min_port={low}", f"pasv_max_port={low + RANGE - 1}"]
                    if two:
                        lines += ["proxy_protocol_enable=YES", f"proxy_protocol_from={FRONT}",
                                  f"pasv_address={FRONT}"]
                    ports.append(nodes.enter_context(_node(work, f"{name}-{i}", lines, NODES[i] if two else FRONT)))
                if not two:
                    return _measure(name, FRONT, ports[0], args)
                front = free_port(FRONT)
                nodes.enter_context(haproxy(_balancer(front, ports, ranges)))
                return _measure(name, FRONT, front, args)

        rows.append(setup("single", [f"user_db_file={users}"], False))
        rows.append(setup("haproxy", [f"user_db_file={users}"], True))
        if not args.no_pg:
            pg = stack.enter_context(postgres())
            _ftpwarden("db", "init", "--db", pg.url)
            _ftpwarden("user", "add", "--db", pg.url, USER, "--root", str(data), "--write", stdin=PASSWORD + "\n")
            pg.psql(f"INSERT INTO ftpwarden_users (name, hash, root, write) "
                    f"VALUES ('{CHEAP_USER}', '{cheap}', '{data}', true)")
            rows.append(setup("haproxy+pg", [f"user_db_url={pg.url}", f"state_db_url={pg.url}"], True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"mode": args.mode, "clients": args.clients, "seconds": args.seconds,
                                    "cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
