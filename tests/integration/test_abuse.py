"""Abuse resistance of a real pooled server: timeouts, data-channel hijack,
hostile control input, upload integrity, disk full, a killed worker.

While an attack runs, a second client on the same server answers NOOPs (a
`Prober`); its worst latency is printed as a FIGURE line (pytest -s shows it)
and only loosely asserted (< 2 s): the machine running the tests may be slow.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import descendants, wait_for
from .conftest import (
    REPLY_START,
    Ctl,
    Prober,
    Server,
    data_socket,
    recv_all,
    sample_tree,
    serve,
    start_server,
    stop_server,
)

# ---------------------------------------------------------------- clients

def store(ctl: Ctl, name: str, payload: bytes) -> bytes:
    """PASV + STOR; the final reply."""
    host, port = ctl.pasv()
    d = data_socket(host, port)
    ctl.send(f"STOR {name}")
    r = ctl.reply()
    assert r.startswith(b"150"), r
    d.sendall(payload)
    d.close()
    return ctl.reply()


def retrieve(ctl: Ctl, name: str) -> tuple[bytes, bytes]:
    """PASV + RETR; (data, final reply)."""
    host, port = ctl.pasv()
    d = data_socket(host, port)
    ctl.send(f"RETR {name}")
    r = ctl.reply()
    assert r.startswith(b"150"), r
    data = recv_all(d)
    d.close()
    return data, ctl.reply()


# ---------------------------------------------------------------- the server seen from /proc

def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def tcp_table(state: str | None = None) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of every TCP socket."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            f = line.split()
            if state is None or f[3] == state:
                out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3])
    return out


def listening(pid: int) -> set[int]:
    """Inodes of the LISTEN sockets `pid` holds."""
    return socket_inodes(pid) & set(tcp_table("0A"))


def owner_of(srv: Server, ctl: Ctl, pids: list[int]) -> int:
    """The server process holding the server side of `ctl`'s connection."""
    mine = ctl.sock.getsockname()[1]
    inodes = {i for i, (lport, rport, _) in tcp_table().items() if lport == srv.port and rport == mine}
    holders = [p for p in pids if socket_inodes(p) & inodes]
    assert len(holders) == 1, (holders, inodes)
    return holders[0]


def no_traceback(srv: Server) -> None:
    err = srv.stderr()
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]


# ---------------------------------------------------------------- servers

@pytest.fixture
def quick_abuse(make_server, tmp_path) -> Server:
    """A server of the test's own (for tests that stop or spoil it)."""
    return serve(make_server, tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[Server]:
    """One server for the many short tests that leave it as they found it."""
    tmp = tmp_path_factory.mktemp("abuse")
    root = sample_tree(tmp)
    srv = start_server([str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1", "--user", "alice:secret",
                        "-o", "delay_failed_login=0", "-o", "ban_threshold=0"], root, tmp)
    yield srv
    stop_server(srv)


# ---------------------------------------------------------------- 1. timeouts

def test_idle_session_timeout_421_and_close(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "idle_session_timeout=2")
    ctl = Ctl(srv.host, srv.port).login()
    started = time.monotonic()
    assert ctl.reply() == b"421 Timeout.\r\n"
    waited = time.monotonic() - started
    assert ctl.closed(3)
    print(f"\nFIGURE idle timeout fired after {waited:.2f} s (idle_session_timeout=2)")
    assert 1.5 < waited < 5
    # another session is fine
    with Prober(srv, "idle timeout check"):
        time.sleep(0.3)
    no_traceback(srv)


def test_a_connection_that_never_logs_in_is_closed(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "idle_session_timeout=2")
    silent = Ctl(srv.host, srv.port)
    started = time.monotonic()
    dripping = Ctl(srv.host, srv.port)  # half a command line, a byte a while, never ended
    for byte in b"USER ali":
        dripping.send(bytes([byte]))
        time.sleep(0.1)
    assert silent.reply() == b"421 Timeout.\r\n"
    assert silent.closed(3)
    assert 1.5 < time.monotonic() - started < 5
    assert dripping.reply() == b"421 Timeout.\r\n"
    assert dripping.closed(3)
    no_traceback(srv)


def test_stalled_download_ends_426_and_the_session_goes_on(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "data_connection_timeout=2")
    ctl = Ctl(srv.host, srv.port).login()
    assert ctl.cmd("TYPE I").startswith(b"200")
    host, port = ctl.pasv()
    d = data_socket(host, port, rcvbuf=4096)
    with Prober(srv, "a stalled download"):
        ctl.send("RETR big.bin")
        assert ctl.reply().startswith(b"150")
        d.recv(1000)  # a little, then nothing more
        started = time.monotonic()
        final = ctl.reply()
        waited = time.monotonic() - started
    print(f"\nFIGURE stalled download ended after {waited:.2f} s: {final!r}")
    assert final.startswith(b"426"), final
    assert waited < 10
    d.close()
    assert ctl.cmd("NOOP").startswith(b"200")
    data, r = retrieve(ctl, "hello.txt")
    assert (data, r[:3]) == (b"hello world\n", b"226")
    no_traceback(srv)


def test_stalled_upload_ends_426_and_the_session_goes_on(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "data_connection_timeout=2")
    ctl = Ctl(srv.host, srv.port).login()
    host, port = ctl.pasv()
    d = data_socket(host, port)
    ctl.send("STOR slow.bin")
    assert ctl.reply().startswith(b"150")
    d.sendall(b"x" * 1000)  # a little, then nothing, and the connection stays open
    started = time.monotonic()
    final = ctl.reply()
    assert final.startswith(b"426"), final
    assert 1.5 < time.monotonic() - started < 10
    d.close()
    assert ctl.cmd("NOOP").startswith(b"200")
    assert store(ctl, "after.bin", b"fine").startswith(b"226")
    no_traceback(srv)


def test_a_client_that_never_reads_its_replies_is_timed_out(make_server, tmp_path):
    """Commands pipelined without reading a reply: the session must still end
    at idle_session_timeout instead of waiting forever for the client to read."""
    srv = serve(make_server, tmp_path, "idle_session_timeout=1")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((srv.host, srv.port))
    s.setblocking(False)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # until both directions' buffers are full
        try:
            s.send(b"HELP\r\n" * 1000)
        except BlockingIOError:
            time.sleep(0.05)
        except ConnectionError:
            break  # the server already gave up on us: what the test wants
    mine = s.getsockname()[1]

    def server_side_gone() -> bool:
        return not [i for i, (lport, rport, st) in tcp_table().items()
                    if lport == srv.port and rport == mine and st == "01"]
    gone = wait_for(server_side_gone, timeout=4.5)
    s.close()
    # else its fd and socket buffers would stay for good, and its slot with them
    assert gone, "the server still holds the connection of a client that never reads"
    assert "Traceback" not in srv.stderr()


def test_accept_timeout_without_a_data_connection_is_425(make_server, tmp_path):
    srv = serve(make_server, tmp_path, "accept_timeout=2")
    ctl = Ctl(srv.host, srv.port).login()
    ctl.pasv()
    started = time.monotonic()
    r = ctl.cmd("RETR hello.txt")
    waited = time.monotonic() - started
    assert r.startswith(b"425"), r
    assert 1.5 < waited < 5
    assert ctl.cmd("NOOP").startswith(b"200")
    data, r = retrieve(ctl, "hello.txt")
    assert (data, r[:3]) == (b"hello world\n", b"226")
    no_traceback(srv)


# ---------------------------------------------------------------- 3. data-channel hijack

@pytest.mark.parametrize("line", [
    "PORT 127,0,0,2,{hi},{lo}",            # another host
    "EPRT |1|127.0.0.2|{port}|",
    "PORT 127,0,0,1,0,21",                # a privileged port on the client's own host
    "EPRT |1|127.0.0.1|80|",
    "PORT 10,0,0,1,{hi},{lo}",
])
def test_active_mode_only_to_the_client_and_never_below_1024(shared, line):
    srv = shared
    trap = socket.socket()
    trap.bind(("127.0.0.2", 0))
    trap.listen(1)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    ctl = Ctl(srv.host, srv.port).login()
    r = ctl.cmd(line.format(hi=port >> 8, lo=port & 255, port=port))
    assert r.startswith(b"500"), r
    r = ctl.cmd("RETR hello.txt")
    assert r.startswith(b"425"), r  # no data channel was set up
    with pytest.raises(socket.timeout):
        trap.accept()  # and the server never connected to the third party
    trap.close()
    assert ctl.cmd("NOOP").startswith(b"200")


def test_a_passive_thief_is_refused_and_the_client_gets_its_data(shared):
    srv = shared
    ctl = Ctl(srv.host, srv.port).login()
    host, port = ctl.pasv()
    thief = data_socket(host, port, source="127.0.0.2")  # first in the accept queue
    real = data_socket(host, port)
    with Prober(srv, "a passive-port theft"):
        ctl.send("RETR data.bin")
        assert ctl.reply().startswith(b"150")
        data = recv_all(real)
        assert ctl.reply().startswith(b"226")
    assert data == (srv.root / "data.bin").read_bytes()
    try:
        stolen = recv_all(thief)
    except ConnectionResetError:
        stolen = b""
    assert stolen == b""
    thief.close()
    real.close()


def test_many_pasv_in_a_row_leave_no_listeners(quick_abuse):
    srv = quick_abuse
    before = listening(srv.proc.pid)
    assert before  # the control port itself
    ctl = Ctl(srv.host, srv.port).login()
    with Prober(srv, "500 PASV in a row"):
        started = time.monotonic()
        ctl.send(b"PASV\r\n" * 500)
        replies = [ctl.reply() for _ in range(500)]
        print(f"\nFIGURE 500 pipelined PASV answered in {time.monotonic() - started:.3f} s")
    assert all(r.startswith(b"227") for r in replies)
    during = listening(srv.proc.pid)
    print(f"\nFIGURE listening sockets: before={len(before)} after 500 PASV={len(during)}")
    assert len(during - before) == 1  # only the last PASV's listener is open
    assert ctl.cmd("QUIT").startswith(b"221")
    assert wait_for(lambda: listening(srv.proc.pid) == before), listening(srv.proc.pid) - before
    no_traceback(srv)


# ---------------------------------------------------------------- 4. hostile input

@pytest.mark.parametrize("line, code", [
    (b"A" * 5000 + b"\r\n", b"500"),              # over 4096 bytes
    (b"NOOP " + b"x" * 70_000 + b"\r\n", b"500"),  # over asyncio's own 64 KiB default
    (b"CWD \xff\xfe\xc3\x28\r\n", b"550"),       # invalid UTF-8
    (b"\xff\xf4\xff\xf2NOOP\r\n", b"200"),       # telnet IP, DM before a command
    (b"NO\xff\xfbOP\r\n", b"500"),               # telnet WILL inside one
    (b"\xff\xff\xff\xff\r\n", b"500"),
    (b"NOOP\rPWD\r\n", b"501"),                  # bare CR
    (b"\r\r\r\n", b"501"),
    (b"NO\x00OP\r\n", b"501"),                   # NUL bytes
    (b"CWD a\x00b\r\n", b"501"),
    (b"\n", b"500"),
    (b"PASS\r\n", b"230"),                       # PASS again while logged in (vsftpd: the same)
])
def test_hostile_lines_get_an_answer_and_the_session_goes_on(shared, line, code):
    ctl = Ctl(shared.host, shared.port).login()
    r = ctl.cmd(line)
    assert r[:3] == code, r
    assert ctl.cmd("NOOP").startswith(b"200")
    assert ctl.cmd("PWD").startswith(b'257 "/"')
    no_traceback(shared)


def test_hostile_input_storm(quick_abuse):
    """Everything at once, from several connections, while another session is timed."""
    srv = quick_abuse
    pid = srv.proc.pid
    with Prober(srv, "hostile input"):
        time.sleep(0.2)
        rss_before = _rss_kib(pid)  # after the prober's login (a password check costs 16 MiB once)
        # a 16 MiB line without end: dropped as it arrives, never buffered whole
        big = Ctl(srv.host, srv.port)
        chunk = b"B" * (1 << 20)
        for _ in range(16):
            big.send(chunk)
        big.send(b"\r\n")
        assert big.reply().startswith(b"500")
        assert big.cmd("NOOP").startswith(b"200")
        rss_after_line = _rss_kib(pid)
        # 25 bad commands in a row: "500 Too many errors." after 20, then the end
        bad = Ctl(srv.host, srv.port).login()
        answers = [bad.cmd(b"BOGUS\r\n") for _ in range(20)]
        assert answers[:19] == [b"500 Unknown command.\r\n"] * 19
        assert answers[19] == b"500 Too many errors.\r\n"
        assert bad.closed(3)
        # bad bytes of every kind, pipelined, before login
        junk = Ctl(srv.host, srv.port)
        junk.send(b"\xff\xf4\xff\xf2\x00\r\xc3\x28\r\n" * 10 + b"NOOP\r\n")
        seen = [junk.reply() for _ in range(11)]
        assert all(REPLY_START.match(r) for r in seen) and seen[-1].startswith(b"200"), seen
        # binary garbage flood from another connection, with newlines sprinkled in
        flood = Ctl(srv.host, srv.port)
        flood.sock.sendall(os.urandom(1 << 20))
        assert flood.closed(5)  # too many errors, or the line limit: the server ends it
    rss_after = _rss_kib(pid)
    print(f"\nFIGURE server RSS: before={rss_before} KiB after 16 MiB line={rss_after_line} KiB "
          f"after storm={rss_after} KiB")
    assert rss_after_line - rss_before < 8 * 1024
    no_traceback(srv)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- 5. integrity

@pytest.mark.parametrize("size", [0, 1, 1000, 65_537, 5 * 1024 * 1024])
def test_an_upload_answered_226_has_exactly_the_clients_bytes(shared, size):
    payload = os.urandom(size)
    ctl = Ctl(shared.host, shared.port).login()
    assert ctl.cmd("TYPE I").startswith(b"200")
    r = store(ctl, f"up-{size}.bin", payload)
    assert r.startswith(b"226"), r
    on_disk = (shared.root / f"up-{size}.bin").read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == hashlib.sha256(payload).hexdigest()
    data, r = retrieve(ctl, f"up-{size}.bin")
    assert r.startswith(b"226") and data == payload


def test_stor_without_a_data_connection_keeps_the_old_file(quick_abuse):
    (quick_abuse.root / "keep.txt").write_bytes(b"precious\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the active connect is refused at once
    ctl = Ctl(quick_abuse.host, quick_abuse.port).login()
    assert ctl.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith(b"200")
    r = ctl.cmd("STOR keep.txt")
    assert r.startswith(b"425"), r
    # emptied only once a data connection is up: a failed STOR destroys nothing
    assert (quick_abuse.root / "keep.txt").read_bytes() == b"precious\n"


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _fill(ctl: Ctl, name: str, size: int) -> bytes:
    """STOR `size` bytes onto a too-small disk; the final reply (the server may
    close the data connection while we still send)."""
    host, port = ctl.pasv()
    d = data_socket(host, port)
    ctl.send(f"STOR {name}")
    assert ctl.reply().startswith(b"150")
    try:
        d.sendall(os.urandom(size))
    except (BrokenPipeError, ConnectionResetError):
        pass
    d.close()
    return ctl.reply()


@pytest.mark.parametrize("atomic", [False, True])
def test_disk_full_is_452_and_the_session_goes_on(make_server, tmp_path, small_disk, atomic):
    srv = make_server(small_disk, str(small_disk), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                      "--user", "alice:secret", "-o", "delay_failed_login=0",
                      "-o", f"atomic_uploads={'YES' if atomic else 'NO'}")
    ctl = Ctl(srv.host, srv.port).login()
    assert ctl.cmd("TYPE I").startswith(b"200")
    r = _fill(ctl, "huge.bin", 2 * 1024 * 1024)
    assert r.startswith(b"452"), r
    assert ctl.cmd("NOOP").startswith(b"200")
    left = sorted(p.name for p in small_disk.iterdir())
    print(f"\nFIGURE disk full (atomic_uploads={atomic}): reply {r!r}, left on disk {left}")
    if atomic:
        assert "huge.bin" not in left  # an interrupted upload never looks complete
        for name in left:
            assert ctl.cmd(f"DELE {name}").startswith(b"250")
    else:
        assert (small_disk / "huge.bin").stat().st_size < 2 * 1024 * 1024
        assert ctl.cmd("DELE huge.bin").startswith(b"250")
    payload = os.urandom(10_000)
    assert store(ctl, "small.bin", payload).startswith(b"226")
    assert (small_disk / "small.bin").read_bytes() == payload
    no_traceback(srv)


# ---------------------------------------------------------------- processes ending

def test_stopping_the_server_with_sessions_open_logs_no_traceback(quick_abuse):
    ctl = Ctl(quick_abuse.host, quick_abuse.port).login()
    assert ctl.cmd("NOOP").startswith(b"200")
    quick_abuse.proc.send_signal(signal.SIGTERM)
    assert quick_abuse.proc.wait(10) == 0
    ctl.close()
    # Python 3.11's start_server callback logs a cancelled session as an ERROR with a traceback
    no_traceback(quick_abuse)


def test_a_killed_worker_takes_only_its_own_sessions(make_server, tmp_path):
    srv = serve(make_server, tmp_path, workers=2)
    workers = wait_for(lambda: len(descendants(srv.proc.pid)) == 2 and descendants(srv.proc.pid))
    sessions = []
    for _ in range(30):  # until both workers hold some
        ctl = Ctl(srv.host, srv.port).login()
        sessions.append((ctl, owner_of(srv, ctl, workers)))
        if len({w for _, w in sessions}) == 2 and len(sessions) >= 6:
            break
    victim = sessions[0][1]
    os.kill(victim, signal.SIGKILL)
    for ctl, owner in sessions:
        if owner == victim:
            try:
                r = ctl.cmd("NOOP")
            except OSError:
                r = b""
            assert r == b""
        else:
            assert ctl.cmd("NOOP").startswith(b"200")
    # the supervisor starts a new worker; new sessions are served
    assert wait_for(lambda: len(descendants(srv.proc.pid)) == 2 and victim not in descendants(srv.proc.pid))
    for _ in range(6):
        c = Ctl(srv.host, srv.port).login()
        assert c.cmd("NOOP").startswith(b"200")
        c.close()
    assert srv.proc.poll() is None
    assert "Traceback" not in srv.stderr()
    for ctl, _ in sessions:
        ctl.close()


def test_a_killed_worker_gives_back_its_sessions_slots(make_server, tmp_path):
    """max_per_ip/max_clients count sessions in memory shared by the workers: the
    sessions of a worker that died must not stay counted."""
    srv = serve(make_server, tmp_path, "max_per_ip=4", workers=2)
    workers = wait_for(lambda: len(descendants(srv.proc.pid)) == 2 and descendants(srv.proc.pid))
    held = [Ctl(srv.host, srv.port).login() for _ in range(4)]
    victim = owner_of(srv, held[0], workers)
    lost = sum(owner_of(srv, c, workers) == victim for c in held)
    os.kill(victim, signal.SIGKILL)
    for c in held:
        c.close()
    assert wait_for(lambda: len(descendants(srv.proc.pid)) == 2 and victim not in descendants(srv.proc.pid))

    def greetings() -> list[bytes]:
        """Four connections at once: the address's whole max_per_ip."""
        conns = [Ctl(srv.host, srv.port) for _ in range(4)]
        out = [c.greeting[:3] for c in conns]
        for c in conns:
            c.close()
        time.sleep(0.1)  # their slots are given back
        return out
    seen = wait_for(lambda: (g := greetings()) == [b"220"] * 4 and g, timeout=3) or greetings()
    print(f"\nFIGURE after SIGKILL of a worker holding {lost} of 4 sessions: new greetings {seen}")
    assert seen == [b"220"] * 4, f"the {lost} sessions of the killed worker still count against max_per_ip"
