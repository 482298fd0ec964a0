"""Issue 11's invariants of isolated mode, read from /proc as root, in both
session_isolation settings (the test id says which; see conftest.py).

The listener+broker, the zygote and the password checker are the only root
processes; pre-login processes and TLS helpers run as nopriv_user; identity
workers run as exactly one login identity and host that identity's sessions
(one session each with session_isolation=process).
"""

from __future__ import annotations

import ctypes
import ftplib
import grp
import hashlib
import io
import os
import pwd
import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import descendants, proc_stat, wait_for
from ..integration.conftest import Ctl, Server, data_socket, start_server, stop_server, tls_login
from .conftest import (
    comm,
    everyone,
    holders,
    identity_linger,
    is_checker,
    is_zygote,
    key_fragments,
    live,
    loopback_conf,
    memory_holds,
    session_processes,
    shared_writable,
    socket_fds,
    socket_inode,
    tcp_sockets,
    tls_lines,
    zygote,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
TIMEOUT = 20
ALICE = ("ftpw_alice", "alice-pw-1")
BOB = ("ftpw_bob", "bob-pw-2")
ANON_PW = "anon-marker-7f3c1e@example.org"  # the anonymous "password" (an e-mail address) the tests give
BIG_SIZE = 32 << 20
LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


# ---------------------------------------------------------------- /proc

def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def creds(pid: int) -> tuple[tuple[int, ...], tuple[int, ...], frozenset[int]]:
    """(real, effective, saved, fs) uids, the same gids, the supplementary groups."""
    st = status(pid)
    return (tuple(map(int, st["Uid"].split())), tuple(map(int, st["Gid"].split())),
            frozenset(map(int, st["Groups"].split())))


def dumpable(pid: int) -> bool:
    """A process that is not dumpable has its /proc/PID/* files owned by root, whatever its uid."""
    return os.stat(f"/proc/{pid}/status").st_uid != 0


def root_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/root")


def workers_of(srv: Server, uid: int) -> list[int]:
    return [p for p in live(session_processes(srv)) if creds(p)[0][0] == uid]


def holder(srv: Server, sock: socket.socket) -> int:
    """The one process below the listener that holds the server side of `sock`."""
    inode = socket_inode(sock)
    found = wait_for(lambda: h if len(h := holders(inode, everyone(srv))) == 1 else [], 5)
    assert len(found) == 1, f"holders of the client socket: {holders(inode, everyone(srv))}"
    return found[0]


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


def root_processes(srv: Server) -> list[int]:
    return [p for p in live(everyone(srv)) if creds(p)[0][0] == 0]


# ---------------------------------------------------------------- a server

@pytest.fixture
def iso(tmp_path_factory, accounts) -> Iterator:
    """iso(*lines) -> an isolated server: anonymous (with a password asked) in its own root,
    local users jailed in their homes, TLS offered to both, port 20, logs; stopped after."""
    started: list[Server] = []

    def start(*lines: str) -> Server:
        base = tmp_path_factory.mktemp("ident")
        anon = base / "anon"
        anon.mkdir(mode=0o755)
        (anon / "pub.txt").write_text("public\n")
        os.chmod(anon / "pub.txt", 0o644)
        logs = base / "logs"
        logs.mkdir(mode=0o700)
        conf = loopback_conf(
            base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=NO",
            "local_enable=YES", "chroot_local_user=YES", "pam_service_name=ftpwarden", "allow_writeable_chroot=YES",
            "write_enable=YES", *tls_lines(base), "allow_anon_ssl=YES", "force_local_logins_ssl=NO",
            "force_local_data_ssl=NO", "connect_from_port_20=YES", "delay_failed_login=0", "ban_threshold=5",
            "max_per_ip=300", "max_clients=400", "xferlog_enable=YES", f"xferlog_file={logs / 'xferlog'}",
            "dual_log_enable=YES", f"vsftpd_log_file={logs / 'vsftpd.log'}", *lines)
        srv = start_server(["--config", str(conf)], anon, base)
        started.append(srv)
        srv.extra.update(base=base, conf=conf, logs=logs, key=base / "key.pem")
        return srv

    yield start
    for srv in started:
        stop_server(srv)
        assert "Traceback" not in srv.stderr(), srv.stderr()[-3000:]


def plain(srv: Server, user: str = "anonymous", password: str = ANON_PW, source: str = "127.0.0.1") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port, source_address=(source, 0))
    ftp.login(user, password)
    return ftp


def session(srv: Server, tls: bool, user: str = "anonymous", password: str = ANON_PW) -> ftplib.FTP:
    if tls:
        return tls_login(srv, user=user, password=password, timeout=TIMEOUT)
    return plain(srv, user, password)


def close_all(*ftps: ftplib.FTP | Ctl) -> None:
    for f in ftps:
        try:
            f.close()
        except OSError:
            pass


# ---------------------------------------------------------------- no root process holds a client socket

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_no_root_process_holds_a_client_socket(iso, accounts, tls):
    srv = iso()
    waiting = Ctl(srv.host, srv.port)  # connected, not logged in: the pre-login process reads it
    anon = session(srv, tls)
    alice = session(srv, tls, *ALICE)
    try:
        for ftp in (anon, alice):  # data connections, passive and (from port 20, the broker's) active
            ftp.retrlines("LIST", lambda _line: None)
            ftp.set_pasv(False)
            ftp.retrlines("LIST", lambda _line: None)
            ftp.set_pasv(True)
        for what, sock in (("pre-login", waiting.sock), ("anonymous", anon.sock), ("alice", alice.sock)):
            pid = holder(srv, sock)
            uids, gids, _ = creds(pid)
            assert 0 not in uids + gids, (what, pid, uids, gids)
        # the root processes are the listener+broker, the zygote and the checker: none holds a
        # TCP socket but the listener's listening ones (every client socket was passed on and closed)
        root = root_processes(srv)
        assert srv.proc.pid in root and zygote(srv) in root
        assert all(p == srv.proc.pid or is_zygote(p) or is_checker(p) for p in root), \
            {p: comm(p) for p in root}
        tcp = tcp_sockets()
        for pid in root:
            held = {inode: tcp[inode] for inode in socket_fds(pid) if inode in tcp}
            if pid == srv.proc.pid:
                assert held and all(port == srv.port and state == LISTEN for port, _, state in held.values()), held
            else:
                assert not held, (pid, held)
    finally:
        close_all(waiting, anon, alice)


# ---------------------------------------------------------------- who parses client bytes

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_every_process_parsing_client_bytes_is_confined(iso, accounts, tls):
    """nopriv_user in the empty jail, or exactly the session's uid/gid/groups (real, effective,
    saved, fs) in the session's root; no_new_privs; not dumpable; no capabilities."""
    srv = iso()
    nobody, ftp_user, alice, bob = (accounts[k] for k in ("nobody", "ftp", "alice", "bob"))
    want = {
        nobody.pw_uid: (nobody.pw_gid, frozenset(), str(srv.extra["base"] / "empty")),
        ftp_user.pw_uid: (ftp_user.pw_gid, frozenset(), str(srv.root)),
        alice.pw_uid: (alice.pw_gid, frozenset(os.getgrouplist(alice.pw_name, alice.pw_gid)), alice.pw_dir),
        bob.pw_uid: (bob.pw_gid, frozenset(os.getgrouplist(bob.pw_name, bob.pw_gid)), bob.pw_dir),
    }
    assert len(want[alice.pw_uid][1]) >= 2, "scripts/test-accounts puts ftpw_alice in a second group"
    waiting = Ctl(srv.host, srv.port)
    sessions = [session(srv, tls), session(srv, tls, *ALICE), session(srv, tls, *BOB)]
    try:
        for ftp in sessions:
            assert ftp.voidcmd("NOOP").startswith("200")

        def all_there() -> list[int]:
            procs = live(session_processes(srv))
            return procs if {creds(p)[0][0] for p in procs} == set(want) else []
        procs = wait_for(all_there, 10)
        assert procs, {p: creds(p) for p in live(session_processes(srv))}
        for pid in procs:
            uids, gids, groups = creds(pid)
            gid, supplementary, root = want[uids[0]]
            assert uids == (uids[0],) * 4 and gids == (gid,) * 4, (pid, uids, gids)
            assert groups == supplementary, (pid, groups, supplementary)
            assert root_of(pid) == root, (pid, root_of(pid))
            st = status(pid)
            assert st["NoNewPrivs"] == "1", pid
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (pid, st["CapEff"], st["CapPrm"])
            assert not dumpable(pid), pid
        # each session is served by a process of its own identity (with TLS: by its nopriv helper)
        for ftp, account in zip(sessions, (ftp_user, alice, bob), strict=True):
            assert creds(holder(srv, ftp.sock))[0][0] == (nobody if tls else account).pw_uid, account.pw_name
        helpers = [p for p in procs if creds(p)[0][0] == nobody.pw_uid]
        assert len(helpers) == (4 if tls else 1), helpers  # the waiting one (and the three TLS helpers)
        # the rest of the tree is root: the listener's checker and zygote, nothing else
        assert all(is_checker(p) or is_zygote(p) for p in live(descendants(srv.proc.pid)) if p not in procs)
    finally:
        close_all(waiting, *sessions)


# ---------------------------------------------------------------- sharing by identity

def test_anonymous_sessions_share_one_identity_worker(iso, accounts, session_isolation):
    srv = iso()
    sessions = [plain(srv) for _ in range(5)]
    try:
        owners = [holder(srv, ftp.sock) for ftp in sessions]
        workers = wait_for(lambda: w if len(w := workers_of(srv, accounts["ftp"].pw_uid)) == len(set(owners))
                           else [], 5)
        assert sorted(workers) == sorted(set(owners)), (workers, owners)
        if session_isolation == "identity":
            assert len(set(owners)) == 1, owners
        else:
            assert len(set(owners)) == 5, owners
        for ftp in sessions:
            assert ftp.voidcmd("NOOP").startswith("200")
    finally:
        close_all(*sessions)


def test_identity_sessions_max_opens_another_worker(iso, accounts, session_isolation):
    srv = iso("identity_sessions_max=2")
    sessions = [plain(srv) for _ in range(3)]
    try:
        owners = [holder(srv, ftp.sock) for ftp in sessions]
        counts = sorted(owners.count(p) for p in set(owners))
        assert counts == ([1, 2] if session_isolation == "identity" else [1, 1, 1]), owners
        assert sorted(workers_of(srv, accounts["ftp"].pw_uid)) == sorted(set(owners))
        for ftp in sessions:
            assert ftp.voidcmd("NOOP").startswith("200")
    finally:
        close_all(*sessions)


def test_an_identity_worker_holds_nothing_of_another_identity(iso, accounts, session_isolation):
    """No socket of another identity's session, no listening socket, no log descriptor, no
    ban or rate table, not the private key, no password of another session."""
    srv = iso("user_max_rate=1000000000")  # the account-rate table exists (and the ban table)
    # passwords first: the workers started after these logins must not carry them
    bob = plain(srv, *BOB)
    alice = tls_login(srv, user=ALICE[0], password=ALICE[1], timeout=TIMEOUT)
    anons = [plain(srv), plain(srv)]
    try:
        for ftp in (bob, alice, *anons):
            ftp.retrlines("LIST", lambda _line: None)
        uid = {name: accounts[name].pw_uid for name in ("ftp", "alice", "bob")}
        workers = {name: workers_of(srv, u) for name, u in uid.items()}
        assert len(workers["alice"]) == 1 and len(workers["bob"]) == 1, workers
        assert len(workers["ftp"]) == (1 if session_isolation == "identity" else 2), workers
        controls = {"bob": {socket_inode(bob.sock)}, "alice": {socket_inode(alice.sock)},
                    "ftp": {socket_inode(f.sock) for f in anons}}
        tcp = tcp_sockets()
        logs = {str(srv.extra["logs"] / n) for n in ("xferlog", "vsftpd.log")} | {str(srv.stderr_path)}
        key = key_fragments(srv.extra["key"])
        helper = holder(srv, alice.sock)
        assert memory_holds(helper, key), "the scan finds the key in alice's TLS helper"
        secrets = {"ftp": [ALICE[1].encode(), BOB[1].encode()], "alice": [BOB[1].encode()],
                   "bob": [ALICE[1].encode()]}
        assert shared_writable(srv.proc.pid), "the broker maps the tables: the check can see them"
        for name, pids in workers.items():
            others = set().union(*(v for k, v in controls.items() if k != name))
            for pid in pids:
                mine = socket_fds(pid)
                assert not mine & others, (name, pid, mine & others)
                listening = [i for i in mine if i in tcp and tcp[i][2] == LISTEN]
                assert not listening, (name, pid, listening)
                fds = fd_targets(pid)
                assert not {fd: t for fd, t in fds.items() if t in logs}, (name, pid, fds)
                assert shared_writable(pid) == [], (name, pid, shared_writable(pid))
                assert memory_holds(pid, key) == [], (name, pid, "the private key")
                assert memory_holds(pid, secrets[name]) == [], (name, pid, "another session's password")
        # the scan can find a password: the anonymous worker holds its own sessions' one
        assert any(memory_holds(p, [ANON_PW.encode()]) for p in workers["ftp"])
        # the zygote, which forks them all, never saw a client's password or the key
        assert memory_holds(zygote(srv), [ALICE[1].encode(), BOB[1].encode(), ANON_PW.encode(), *key]) == []
    finally:
        close_all(bob, alice, *anons)


# ---------------------------------------------------------------- two local users

def _as_user(account: pwd.struct_passwd, probe) -> str:
    """Run probe() in a child as `account` (ids and groups): its one-word verdict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        verdict = "error"
        try:
            os.close(r)
            os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
            os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
            os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
            verdict = probe()
        except BaseException as e:
            verdict = f"error:{e!r}"
        finally:
            os.write(w, verdict.encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def _fd_list(pid: int):
    def probe() -> str:
        try:
            os.listdir(f"/proc/{pid}/fd")
            return "listed"
        except PermissionError:
            return "denied"
    return probe


def _pidfd_getfd(pid: int, fd: int):
    """pidfd_getfd(2) (438): what a process could use to copy another's descriptor."""
    def probe() -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        got = libc.syscall(438, pidfd, fd, 0)
        if got >= 0:
            os.close(got)
            return "copied"
        return "denied" if ctypes.get_errno() in (1, 13) else f"errno {ctypes.get_errno()}"
    return probe


def test_two_local_users_are_kept_apart(iso, accounts, tmp_path):
    """alice not jailed (chroot_list_file), bob jailed in his home: alice can name bob's
    files, and their permission bits alone stop her."""
    alice_acct, bob_acct = accounts["alice"], accounts["bob"]
    base = Path(bob_acct.pw_dir) / f"apart-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    (base / "private").mkdir(mode=0o700)
    files = {"open.txt": 0o644, "secret.txt": 0o600, "private/inner.txt": 0o644}
    for name, mode in files.items():
        (base / name).write_text(f"bob's {name}\n")
        os.chmod(base / name, mode)
    for p in (base, base / "private", *(base / n for n in files)):
        os.chown(p, bob_acct.pw_uid, bob_acct.pw_gid)
    team = base / "team.txt"  # root's, group ftpw_team (alice's second group), 0640
    team.write_text("the team's\n")
    os.chown(team, 0, grp.getgrnam("ftpw_team").gr_gid)
    os.chmod(team, 0o640)
    chroot_list = tmp_path / "chroot_list"
    chroot_list.write_text("ftpw_alice\n")
    srv = iso("chroot_list_enable=YES", f"chroot_list_file={chroot_list}")
    alice = plain(srv, *ALICE)
    bob = plain(srv, *BOB, source="127.0.0.2")
    try:
        a_worker, b_worker = holder(srv, alice.sock), holder(srv, bob.sock)
        assert a_worker != b_worker
        assert (creds(a_worker)[0][0], creds(b_worker)[0][0]) == (alice_acct.pw_uid, bob_acct.pw_uid)
        assert (root_of(a_worker), root_of(b_worker)) == ("/", bob_acct.pw_dir)
        there = str(base)  # alice's view: the real path

        def get(ftp: ftplib.FTP, path: str) -> bytes:
            buf = io.BytesIO()
            ftp.retrbinary(f"RETR {path}", buf.write)
            return buf.getvalue()
        assert get(alice, f"{there}/open.txt") == b"bob's open.txt\n"  # she reaches bob's files
        assert get(alice, f"{there}/team.txt") == b"the team's\n"  # through her supplementary group
        for path in ("secret.txt", "private/inner.txt"):
            with pytest.raises(ftplib.error_perm, match=r"^55\d"):
                get(alice, f"{there}/{path}")
        for cmd in ("STOR secret.txt", "APPE secret.txt", "STOR private/new.txt", "STOR new.txt"):
            with pytest.raises(ftplib.error_perm, match=r"^55\d"):
                alice.storbinary(f"{cmd.split()[0]} {there}/{cmd.split()[1]}", io.BytesIO(b"alice was here"))
        for cmd in (f"DELE {there}/secret.txt", f"CWD {there}/private", f"MKD {there}/private/x",
                    f"RMD {there}/private", f"MKD {there}/x"):
            with pytest.raises(ftplib.error_perm, match=r"^55\d"):
                alice.sendcmd(cmd)
        assert alice.sendcmd(f"RNFR {there}/secret.txt").startswith("350")  # it exists: that much she sees
        with pytest.raises(ftplib.error_perm, match=r"^55\d"):
            alice.sendcmd(f"RNTO {there}/mine.txt")
        # bob reads his own, not the team's file
        assert get(bob, f"/{base.name}/secret.txt") == b"bob's secret.txt\n"
        with pytest.raises(ftplib.error_perm, match=r"^55\d"):
            get(bob, f"/{base.name}/team.txt")
        for name in files:
            assert (base / name).read_text() == f"bob's {name}\n"
        assert sorted(p.name for p in base.iterdir()) == ["open.txt", "private", "secret.txt", "team.txt"]
        assert sorted(p.name for p in (base / "private").iterdir()) == ["inner.txt"]
        # bob's sockets: alice's worker holds none, and as alice nothing reaches them
        assert not socket_fds(a_worker) & socket_fds(b_worker)
        bob_fd = next(fd for fd, t in fd_targets(b_worker).items() if t == f"socket:[{socket_inode(bob.sock)}]")
        assert _as_user(alice_acct, _fd_list(b_worker)) == "denied"
        assert _as_user(alice_acct, _pidfd_getfd(b_worker, bob_fd)) == "denied"
        assert _as_user(bob_acct, _pidfd_getfd(b_worker, bob_fd)) == "denied"  # not dumpable: not even bob
        assert alice.voidcmd("NOOP").startswith("200") and bob.voidcmd("NOOP").startswith("200")
    finally:
        close_all(alice, bob)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- kill -9 of an identity worker

def test_kill_9_of_an_identity_worker_ends_only_its_sessions(iso, accounts, session_isolation):
    """alice's worker is killed: her sessions in it end; an anonymous download (another
    identity) finishes byte-exact; alice logs in again."""
    srv = iso()
    big = srv.root / "big.bin"  # the anonymous root is this test's own
    with open(big, "wb") as f:
        for _ in range(BIG_SIZE >> 20):
            f.write(os.urandom(1 << 20))
    os.chmod(big, 0o644)
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    victim, sibling = plain(srv, *ALICE), plain(srv, *ALICE)
    ctl = Ctl(srv.host, srv.port, source="127.0.0.2").login("anonymous", ANON_PW)
    data = None
    try:
        assert ctl.cmd("TYPE I").startswith(b"200")
        host, port = ctl.pasv()
        data = data_socket(host, port, source="127.0.0.2", rcvbuf=65536)
        ctl.send(f"RETR {big.name}")
        assert ctl.reply().startswith(b"150")
        head = data.recv(1 << 16)  # the download runs, and waits for us
        killed = holder(srv, victim.sock)
        shared = holder(srv, sibling.sock) == killed
        assert shared == (session_isolation == "identity")
        os.kill(killed, signal.SIGKILL)
        # the anonymous download, in another identity's worker, finishes byte-exact
        h, size = hashlib.sha256(head), len(head)
        while chunk := data.recv(1 << 20):
            h.update(chunk)
            size += len(chunk)
        assert ctl.reply().startswith(b"226")
        assert (size, h.hexdigest()) == (BIG_SIZE, digest)
        assert ctl.cmd("NOOP").startswith(b"200")
        # the killed worker's sessions end: the client sees its connection close
        for ftp, ends in ((victim, True), (sibling, shared)):
            ftp.sock.settimeout(5)
            if ends:
                with pytest.raises((EOFError, ConnectionError, ftplib.error_temp, OSError)):
                    ftp.voidcmd("NOOP")
            else:
                assert ftp.voidcmd("NOOP").startswith("200")
        assert wait_for(lambda: killed not in live(session_processes(srv)), 5)
        with plain(srv, *ALICE) as again:  # the next login of the killed identity works
            assert again.voidcmd("NOOP").startswith("200")
            assert creds(holder(srv, again.sock))[0][0] == accounts["alice"].pw_uid
        assert srv.proc.poll() is None
    finally:
        if data is not None:
            data.close()
        close_all(victim, sibling, ctl)


# ---------------------------------------------------------------- 100 sessions: nothing left behind

def test_hundred_sessions_leave_no_process_fd_or_zombie(iso, accounts, session_isolation):
    srv = iso()
    listener = srv.proc.pid
    zyg = zygote(srv)
    checkers = [p for p in descendants(listener) if is_checker(p)]
    baseline = {p: len(os.listdir(f"/proc/{p}/fd")) for p in (listener, *checkers)}
    Ctl(srv.host, srv.port).close()  # greeted: the zygote has forked once, so it is past its set-up
    baseline[zyg] = len(os.listdir(f"/proc/{zyg}/fd"))
    for i in range(100):
        if i % 10 == 0:  # TLS: a helper per session
            with tls_login(srv, user="anonymous", password=ANON_PW, timeout=TIMEOUT) as ftp:
                ftp.retrlines("LIST", lambda _line: None)
                ftp.quit()
        elif i % 10 == 5:
            with plain(srv, *ALICE) as ftp:
                ftp.retrlines("LIST", lambda _line: None)
                ftp.quit()
        else:
            with plain(srv) as ftp:
                if i % 3 == 0:
                    ftp.retrlines("LIST", lambda _line: None)
                ftp.quit()

    def leftovers() -> list[int]:
        return [p for p in descendants(listener) if p != zyg and not (is_checker(p) and p in checkers)]
    # the identity setting keeps an idle worker IDENTITY_LINGER seconds, then lets it go
    assert wait_for(lambda: not leftovers(), identity_linger() + 10), \
        {p: (comm(p), proc_stat(p)) for p in leftovers()}
    assert not [p for p in descendants(listener) if (st := proc_stat(p)) and st[1] == "Z"]
    assert is_zygote(zyg) and proc_stat(zyg)[0] == listener  # still the one zygote

    def fds() -> dict[int, int]:
        return {p: len(os.listdir(f"/proc/{p}/fd")) for p in baseline}
    assert wait_for(lambda: fds() == baseline, 5), (fds(), baseline)
    assert srv.proc.poll() is None


# ---------------------------------------------------------------- SIGHUP

def test_sighup_keeps_open_sessions_and_new_logins_use_the_new_config(iso, accounts, session_isolation):
    """The new configuration changes nothing of the identity (same root, same grants), only how
    listings look (hide_ids): a new session must still get a worker of the new configuration."""
    srv = iso("ftpd_banner=before the reload")
    conf: Path = srv.extra["conf"]

    def owner(ftp: ftplib.FTP) -> str:
        lines: list[str] = []
        ftp.retrlines("LIST pub.txt", lines.append)
        assert len(lines) == 1, lines
        return lines[0].split()[2]
    old = plain(srv)
    try:
        assert "before the reload" in old.welcome
        assert owner(old) != "ftp"  # root's file, shown as root's
        old_worker = holder(srv, old.sock)
        conf.write_text(conf.read_text().replace("before the reload", "after the reload") + "hide_ids=YES\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "configuration re-read" in srv.stderr(), 10), srv.stderr()
        # the open session goes on, in its own process, with the config it started with
        assert old.voidcmd("NOOP").startswith("200")
        assert owner(old) != "ftp"
        buf = io.BytesIO()
        old.retrbinary("RETR pub.txt", buf.write)
        assert buf.getvalue() == b"public\n"
        assert holder(srv, old.sock) == old_worker
        with plain(srv) as new:
            assert "after the reload" in new.welcome
            assert owner(new) == "ftp"
            assert holder(srv, new.sock) != old_worker  # a worker of the new configuration
            new.quit()
        old.quit()
        # the old configuration's worker takes no new session: it leaves with its last one
        assert wait_for(lambda: old_worker not in live(session_processes(srv)), 5), session_processes(srv)
    finally:
        close_all(old)
    assert srv.proc.poll() is None


# ---------------------------------------------------------------- a hostile identity worker

def _steal_channels(pid: int) -> list[socket.socket]:
    """Copies (pidfd_getfd, as root) of every SOCK_SEQPACKET socket `pid` holds: a plain
    session's identity worker holds only its channels to the broker (admission, sessions)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    out = []
    try:
        for fd in fd_targets(pid):
            got = libc.syscall(438, pidfd, fd, 0)
            assert got >= 0, f"pidfd_getfd: errno {ctypes.get_errno()}"
            sock = None
            try:
                sock = socket.socket(fileno=got)
            except OSError:  # not a socket
                os.close(got)
                continue
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
                out.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return out


@pytest.mark.parametrize("request_kind", ["foreign-port", "chown-foreign-file", "login-after-login", "garbage"])
def test_a_hostile_identity_worker_gets_nothing_from_the_broker(iso, accounts, tmp_path, request_kind):
    """What a compromised identity worker could send on its channels to the broker (copied
    here with pidfd_getfd): a port-20 socket to a host that is not its client, a chown of a
    file that is not its upload, a second login, bytes that are no message.  The broker does
    none of it, ends only what misbehaved, and keeps serving everyone else."""
    from ftpwarden.priv.messages import ActiveDataSocket, ChownUpload, Login, encode

    srv = iso()
    bystander = session(srv, False, *ALICE)
    victim = session(srv, False)
    trap = socket.create_server(("127.0.0.99", 0))  # the connection the broker must never make
    trap.settimeout(1.0)
    target = tmp_path / "roots-file"
    target.write_bytes(b"root's\n")
    os.chmod(target, 0o600)
    before = os.stat(target)
    try:
        (worker,) = workers_of(srv, accounts["ftp"].pw_uid)
        channels = _steal_channels(worker)
        assert channels, "the identity worker holds no channel to the broker"
        for chan in channels:
            if request_kind == "foreign-port":
                chan.send(encode(ActiveDataSocket("127.0.0.99", trap.getsockname()[1])))
            elif request_kind == "chown-foreign-file":
                fd = os.open(target, os.O_RDONLY)
                try:
                    socket.send_fds(chan, [encode(ChownUpload())], [fd])
                finally:
                    os.close(fd)
            elif request_kind == "login-after-login":
                chan.send(encode(Login("ftpw_bob", "guess", False)))
            else:
                chan.send(b"\xff not a message")
        # the broker ends what misbehaved: the channel it answered on is closed, never answered
        for chan in channels:
            chan.settimeout(TIMEOUT)
            assert chan.recv(65536) == b"", "the broker answered a hostile request"
            chan.close()
        with pytest.raises(TimeoutError):
            trap.accept()  # no connection to a host that is not the client's
        after = os.stat(target)
        assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
        # everyone else is served: the open session of another identity, and new logins of both
        assert bystander.voidcmd("NOOP").startswith("200")
        assert bystander.nlst() is not None
        fresh = plain(srv)
        assert fresh.pwd() == "/"
        close_all(fresh)
        assert srv.proc.poll() is None, "the broker ended"
    finally:
        trap.close()
        close_all(victim, bystander)
