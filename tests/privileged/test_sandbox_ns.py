"""isolate, isolate_network, bind_retries and pasv_addr_resolve (issue 12), read from /proc as root.

isolate=YES: every session process (pre-login / TLS helper, identity worker) is the
first process of new PID and IPC namespaces; isolate_network=YES: it sits in a
network namespace of its own with only a loopback that is down, and every socket
it uses is made by the broker and passed in.  Each test runs in both
session_isolation settings (conftest.py).
"""

from __future__ import annotations

import ftplib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ..conftest import wait_for
from ..integration.conftest import Ctl, Server, start_server, stop_server, tls_login
from .conftest import (
    everyone,
    ftp_over,
    holders,
    inetd_session,
    is_checker,
    live,
    loopback_conf,
    session_processes,
    socket_fds,
    socket_inode,
    tcp_sockets,
    tls_lines,
    zygote,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root (CI runs as root)")
TIMEOUT = 20
ANON_PW = "ns@example.org"
KINDS = ("pid", "ipc", "net")
PAYLOAD = os.urandom(300_001)
LISTEN = "0A"


# ---------------------------------------------------------------- /proc

def ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def nspid(pid: int) -> list[int]:
    """The process's pid in each PID namespace it is in, outermost first (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no NSpid line")


def holder(srv: Server, sock: socket.socket) -> int:
    inode = socket_inode(sock)
    found = wait_for(lambda: h if len(h := holders(inode, everyone(srv))) == 1 else [], 5)
    assert len(found) == 1, f"holders of the client socket: {holders(inode, everyone(srv))}"
    return found[0]


def identity_workers(srv: Server, uid: int) -> list[int]:
    def of_uid() -> list[int]:
        out = []
        for pid in live(session_processes(srv)):
            try:
                if int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) == uid:
                    out.append(pid)
            except (OSError, IndexError):
                continue
        return out
    return wait_for(of_uid, 5)


def interfaces(pid: int) -> list[str]:
    """The network interfaces `pid` sees: /proc/PID/net/dev is its namespace's."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return [line.split(":")[0].strip() for line in lines]


# ---------------------------------------------------------------- servers

@pytest.fixture
def ns_server(tmp_path_factory, accounts) -> Iterator:
    """ns_server(*lines) -> an isolated server: anonymous downloads in its own root, local
    users (write) jailed in their homes, TLS offered to both, logs; stopped after."""
    started: list[Server] = []

    def start(*lines: str, tls: bool = True) -> Server:
        base = tmp_path_factory.mktemp("ns")
        anon = base / "anon"
        anon.mkdir(mode=0o755)
        (anon / "blob.bin").write_bytes(PAYLOAD)
        os.chmod(anon / "blob.bin", 0o644)
        logs = base / "logs"
        logs.mkdir(mode=0o700)
        conf = loopback_conf(
            base, "anonymous_enable=YES", f"anon_root={anon}", "local_enable=YES", "chroot_local_user=YES",
            "pam_service_name=ftpwarden", "allow_writeable_chroot=YES", "write_enable=YES",
            *(tls_lines(base) if tls else []), "allow_anon_ssl=YES", "force_local_logins_ssl=NO",
            "force_local_data_ssl=NO", "delay_failed_login=0", "max_per_ip=100",
            f"json_log_file={logs / 'events.json'}", *lines)
        srv = start_server(["--config", str(conf)], anon, base)
        started.append(srv)
        srv.extra.update(base=base, conf=conf, logs=logs)
        return srv

    yield start
    for srv in started:
        stop_server(srv)
        assert "Traceback" not in srv.stderr(), srv.stderr()[-3000:]


def plain(srv: Server, user: str = "anonymous", password: str = ANON_PW) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(user, password)
    return ftp


def session(srv: Server, tls: bool, user: str = "anonymous", password: str = ANON_PW) -> ftplib.FTP:
    if tls:
        return tls_login(srv, user=user, password=password, timeout=TIMEOUT)
    return plain(srv, user, password)


def download(ftp: ftplib.FTP, name: str = "blob.bin") -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


# ---------------------------------------------------------------- isolate, isolate_network

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_session_processes_have_namespaces_of_their_own(ns_server, accounts, tls):
    srv = ns_server()
    waiting = Ctl(srv.host, srv.port)  # connected, not logged in: the pre-login process reads it
    ftp = session(srv, tls)
    try:
        download(ftp)  # a data connection made meanwhile
        prelogin = holder(srv, waiting.sock)
        helper_or_worker = holder(srv, ftp.sock)  # with TLS, the session's TLS helper
        (worker,) = identity_workers(srv, accounts["ftp"].pw_uid)
        broker = srv.proc.pid
        for root_side in (broker, zygote(srv), *(p for p in everyone(srv) if is_checker(p))):
            assert all(ns(root_side, k) == ns(os.getpid(), k) for k in KINDS), root_side  # they stay in ours
        seen: dict[str, set[str]] = {k: set() for k in KINDS}
        for pid in {prelogin, helper_or_worker, worker}:
            for kind in KINDS:
                assert ns(pid, kind) != ns(broker, kind), (pid, kind)
                seen[kind].add(ns(pid, kind))
            outer, inner = nspid(pid)
            assert (outer, inner) == (pid, 1)  # the first process of its PID namespace
            assert interfaces(pid) == ["lo"], (pid, interfaces(pid))
        for kind in KINDS:  # one namespace each: no two session processes share one
            assert len(seen[kind]) == len({prelogin, helper_or_worker, worker}), (kind, seen)
    finally:
        waiting.close()
        ftp.close()


def test_the_session_network_namespace_has_only_a_loopback_that_is_down(ns_server, accounts):
    srv = ns_server()
    ftp = plain(srv)
    waiting = Ctl(srv.host, srv.port)
    try:
        (worker,) = identity_workers(srv, accounts["ftp"].pw_uid)
        for pid in (worker, holder(srv, waiting.sock)):
            r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link"], capture_output=True,
                               text=True, timeout=10)
            assert r.returncode == 0, r.stderr
            links = r.stdout.strip().splitlines()
            assert len(links) == 1 and links[0].split(":")[1].strip() == "lo", links
            flags = re.search(r"<([^>]*)>", links[0]).group(1).split(",")
            assert "UP" not in flags and "state DOWN" in links[0], links[0]
            r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "addr"], capture_output=True,
                               text=True, timeout=10)
            assert "inet" not in r.stdout, r.stdout  # no address, not even 127.0.0.1
    finally:
        waiting.close()
        ftp.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pasv_and_port_with_ftplib_in_an_empty_network_namespace(ns_server, accounts, tls):
    srv = ns_server()
    anon = session(srv, tls)
    alice = session(srv, tls, "ftpw_alice", "alice-pw-1")
    try:
        for passive in (True, False):
            anon.set_pasv(passive)
            assert download(anon) == PAYLOAD
            alice.set_pasv(passive)
            name = f"up-{int(passive)}-{int(tls)}.bin"
            alice.storbinary(f"STOR {name}", io.BytesIO(PAYLOAD))
            assert (Path(accounts["alice"].pw_dir) / name).read_bytes() == PAYLOAD
            (Path(accounts["alice"].pw_dir) / name).unlink()
            lines: list[str] = []
            alice.retrlines("LIST", lines.append)  # ftplib's PASV; EPSV comes from curl and lftp
    finally:
        anon.close()
        alice.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("active", [False, True], ids=["passive", "active"])
def test_curl_and_lftp_transfer_in_an_empty_network_namespace(ns_server, accounts, tls, active, tmp_path):
    srv = ns_server()
    out = tmp_path / "got.bin"
    curl = ["curl", "-sS", "--max-time", str(TIMEOUT), "-o", str(out), "--user", f"anonymous:{ANON_PW}"]
    if tls:
        curl += ["--ssl-reqd", "-k"]
    if active:
        curl += ["--ftp-port", "127.0.0.1"]
    # curl 7.87-7.88 (Debian 12) cannot do active mode over TLS at all (curl/curl#10666, against
    # vsftpd too): lftp covers that case below
    if not (tls and active):
        r = subprocess.run([*curl, f"ftp://{srv.host}:{srv.port}/blob.bin"], capture_output=True, text=True,
                           timeout=TIMEOUT + 10)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == PAYLOAD
        out.unlink()
    settings = ["set ssl:verify-certificate no", f"set ftp:ssl-force {'yes' if tls else 'no'}",
                f"set ftp:ssl-allow {'yes' if tls else 'no'}", f"set ftp:passive-mode {'off' if active else 'on'}",
                "set net:max-retries 1", f"set net:timeout {TIMEOUT}"]
    script = "; ".join([*settings, f"open -u anonymous,{ANON_PW} -p {srv.port} {srv.host}",
                        f"get blob.bin -o {out}", "bye"])
    r = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=TIMEOUT + 10)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == PAYLOAD


def test_the_passive_listener_is_the_brokers_work(ns_server, accounts):
    """The listening socket sits in the root network namespace (/proc/net/tcp here) at the
    port of the 227 reply; the identity worker holds it, the broker has let it go."""
    srv = ns_server()
    ftp = plain(srv)
    try:
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        assert host == "127.0.0.1"
        (worker,) = identity_workers(srv, accounts["ftp"].pw_uid)
        tcp = tcp_sockets()
        listening = [inode for inode, (lport, _, state) in tcp.items() if lport == port and state == LISTEN]
        assert len(listening) == 1
        assert listening[0] in socket_fds(worker)
        assert listening[0] not in socket_fds(srv.proc.pid)
        with socket.create_connection((host, port), timeout=TIMEOUT):
            pass
        ftp.voidcmd("NOOP")
    finally:
        ftp.close()


@pytest.mark.parametrize("isolate,network", [("NO", "NO"), ("YES", "NO"), ("NO", "YES")])
def test_each_option_alone(ns_server, accounts, isolate, network):
    srv = ns_server(f"isolate={isolate}", f"isolate_network={network}")
    ftp = plain(srv)
    waiting = Ctl(srv.host, srv.port)
    try:
        for passive in (True, False):
            ftp.set_pasv(passive)
            assert download(ftp) == PAYLOAD
        (worker,) = identity_workers(srv, accounts["ftp"].pw_uid)
        for pid in (worker, holder(srv, waiting.sock)):
            for kind, option in (("pid", isolate), ("ipc", isolate), ("net", network)):
                own = ns(pid, kind) != ns(srv.proc.pid, kind)
                assert own == (option == "YES"), (pid, kind)
            assert (nspid(pid)[-1] == 1) == (isolate == "YES")
    finally:
        waiting.close()
        ftp.close()


def test_signals_still_end_the_first_process_of_a_namespace(ns_server, accounts):
    """PID 1 of a namespace ignores a signal left at its default action: SIGTERM from the
    broker must still make the pre-login process and the identity worker say 421 and go."""
    srv = ns_server(tls=False)  # with TLS on, a pre-login process leaves without a plain-text 421
    interrupted = Ctl(srv.host, srv.port)
    pid = holder(srv, interrupted.sock)
    os.kill(pid, signal.SIGINT)  # left at its default action: it must end the process as anywhere else
    assert wait_for(lambda: not live([pid]), 5), "SIGINT did not end the pre-login process"
    assert interrupted.closed()
    interrupted.close()
    waiting = Ctl(srv.host, srv.port)
    ftp = plain(srv)
    pids = [holder(srv, waiting.sock), *identity_workers(srv, accounts["ftp"].pw_uid)]
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert waiting.reply().startswith(b"421"), "the pre-login process did not say 421"
    with pytest.raises((EOFError, OSError, ftplib.Error)) as e:
        ftp.getresp()  # unasked: the worker's 421 as it ends (a NOOP sent now could still be answered first)
    assert "421" in str(e.value)
    srv.proc.wait(15)
    assert time.monotonic() - started < 4  # each answered SIGTERM; no SIGKILL after STOP_WAIT was needed
    wait_for(lambda: not live(pids), 3)  # gone (a zombie waits for init, above the server: not ours)
    assert not live(pids), [Path(f"/proc/{p}/stat").read_text() for p in live(pids)]
    waiting.close()
    ftp.close()


def test_logs_name_the_outer_pid(ns_server, accounts):
    srv = ns_server()
    waiting = Ctl(srv.host, srv.port)
    prelogin = holder(srv, waiting.sock)
    waiting.close()
    ftp = plain(srv)
    ftp.quit()
    events = srv.extra["logs"] / "events.json"
    sessions = wait_for(lambda: {json.loads(line)["session"] for line in events.read_text().splitlines()}
                        if events.exists() else set(), 5)
    assert any(sid.startswith(f"{prelogin}.") for sid in sessions), sessions
    assert not any(sid.startswith("1.") for sid in sessions), sessions


def test_a_kernel_refusal_falls_back_and_is_logged_once(monkeypatch, caplog):
    from ftpwarden.priv import namespaces

    def refuse(_flags: int) -> None:
        raise PermissionError(1, "unshare: Operation not permitted")

    monkeypatch.setattr(namespaces, "_unshare", refuse)
    space = namespaces.Namespaces()
    cfg = SimpleNamespace(isolate=True, isolate_network=True)
    given: list[int] = []

    def fork(flags: int) -> int:
        given.append(flags)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return pid

    with caplog.at_level(logging.WARNING, logger="ftpwarden.namespaces"):
        for _ in range(3):
            space.fork(cfg, fork)
    assert given == [0, 0, 0]  # the children run, without namespaces
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 3, refusals  # PID, IPC and network: each once
    assert all("refuses" in m for m in refusals)


# ---------------------------------------------------------------- bind_retries, pasv_addr_resolve

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quick(tmp_path: Path, *opts: str) -> Server:
    root = tmp_path / "q"
    root.mkdir(exist_ok=True)
    (root / "f.txt").write_text("quick\n")
    args = [str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1"]
    for opt in opts:
        args += ["-o", opt]
    return start_server(args, root, tmp_path)  # as root, without --config: pooled=YES


@pytest.mark.parametrize("mode", ["isolated", "pooled"])
def test_bind_retries_a_taken_passive_range_gets_a_clear_425(ns_server, accounts, tmp_path, mode):
    port = _free_port()
    opts = (f"pasv_min_port={port}", f"pasv_max_port={port}", "bind_retries=3")
    srv = ns_server(*opts) if mode == "isolated" else _quick(tmp_path, *opts)
    try:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(srv.host, srv.port)
        ftp.login("anonymous", ANON_PW)
        taken = socket.socket()
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        try:
            for verb in ("PASV", "EPSV"):
                with pytest.raises(ftplib.error_temp, match=r"^425"):
                    ftp.sendcmd(verb)
            ftp.voidcmd("NOOP")  # the session goes on
        finally:
            taken.close()
        assert ftplib.parse227(ftp.sendcmd("PASV"))[1] == port  # free again: the one port of the range
        ftp.close()
    finally:
        if mode == "pooled":
            stop_server(srv)


def test_bind_retries_is_how_many_ports_are_tried():
    from ftpwarden.net import data
    for tries in (1, 3, 9):
        ports = list(data._passive_ports(50000, 50099, tries))
        assert len(ports) == len(set(ports)) == tries and all(50000 <= p <= 50099 for p in ports)
    assert list(data._passive_ports(50000, 50001, 9)) in ([50000, 50001], [50001, 50000])  # a small range: each once
    assert list(data._passive_ports(0, 0, 9)) == [0]  # no range: the kernel picks


@pytest.mark.parametrize("mode", ["isolated", "pooled"])
def test_pasv_addr_resolve_resolves_the_name_once(ns_server, accounts, tmp_path, mode):
    opts = ("pasv_address=localhost", "pasv_addr_resolve=YES")
    srv = ns_server(*opts) if mode == "isolated" else _quick(tmp_path, *opts)
    try:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(srv.host, srv.port)
        ftp.login("anonymous", ANON_PW)
        reply = ftp.sendcmd("PASV")
        assert reply.startswith("227") and "(127,0,0,1," in reply, reply
        ftp.close()
    finally:
        if mode == "pooled":
            stop_server(srv)


@pytest.mark.parametrize("lines,says", [
    (("pasv_address=no-such-host.invalid", "pasv_addr_resolve=YES"), "cannot resolve"),
    (("pasv_address=localhost",), "not an IPv4 address"),
], ids=["unresolvable", "name-without-resolve"])
def test_a_bad_pasv_address_stops_the_start_at_its_line(tmp_path, lines, says):
    conf = loopback_conf(tmp_path, "anonymous_enable=YES", f"anon_root={tmp_path}", *lines)
    line_no = conf.read_text().splitlines().index("pasv_address=" + lines[0].split("=", 1)[1]) + 1
    for command in (["serve", "--config", str(conf)], ["check-config", str(conf)]):
        r = subprocess.run([sys.executable, "-m", "ftpwarden", *command],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src")))
        assert r.returncode != 0, r.stdout
        assert f"{conf}:{line_no}: pasv_address=" in r.stderr and says in r.stderr, r.stderr


def test_inetd_mode_session_processes_are_isolated_too(tmp_path_factory):
    base = tmp_path_factory.mktemp("inetd")
    anon = base / "anon"
    anon.mkdir(mode=0o755)
    (anon / "blob.bin").write_bytes(PAYLOAD)
    os.chmod(anon / "blob.bin", 0o644)
    conf = loopback_conf(base, "listen_ipv6=NO", "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES",
                         "delay_failed_login=0")

    def session_process() -> list[int]:  # the monitor's unprivileged child (the checker is root)
        out = []
        for pid in live(everyone(SimpleNamespace(proc=proc))):  # type: ignore[arg-type]
            try:
                uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            except (OSError, IndexError):
                continue
            if uid != 0:
                out.append(pid)
        return out

    def isolated(pid: int) -> None:
        assert all(ns(pid, kind) != ns(proc.pid, kind) for kind in KINDS), pid
        assert nspid(pid) == [pid, 1]
        assert interfaces(pid) == ["lo"]

    with inetd_session(conf) as (proc, client):
        ftp = ftp_over(client, TIMEOUT)
        assert ftp.welcome.startswith("220")
        prelogin = wait_for(session_process, 5)
        assert len(prelogin) == 1, prelogin
        isolated(prelogin[0])
        ftp.login()
        postlogin = wait_for(lambda: [p for p in session_process() if p not in prelogin], 5)
        assert len(postlogin) == 1, postlogin
        isolated(postlogin[0])
        for passive in (True, False):  # PASV: the monitor's listener (PassiveListen); PORT: its connect
            ftp.set_pasv(passive)
            assert download(ftp) == PAYLOAD
        ftp.quit()
        assert proc.wait(10) == 0
