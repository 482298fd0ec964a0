"""Issue 11: the zygote (priv/zygote.py) and the identity worker (priv/identity.py), driven
as the broker drives them, without a broker: spawn requests over the zygote's channel,
Admit messages with a real TCP connection as the control connection (root only)."""

from __future__ import annotations

import dataclasses
import os
import pwd
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpwarden.policy.config import ConfigError, default_config, load_config
from ftpwarden.priv.channel import Channel
from ftpwarden.priv.checker import refused
from ftpwarden.priv.messages import (
    Admit,
    ChannelError,
    Handover,
    Login,
    LoginOk,
    LogNotice,
    Refused,
    SpawnIdentity,
)
from ftpwarden.priv.worker import Site
from ftpwarden.priv.zygote import IDENTITY_NAME, PRELOGIN_NAME, ZYGOTE_NAME, Identity, SpawnRefused, Zygote

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the zygote forks processes that drop privileges")

WAIT = 10.0


def _ids(pid: int, key: str) -> list[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(key))
    return [int(v) for v in line.split()[1:]]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _exited(pidfd: int, wait: float = WAIT) -> bool:
    return bool(select.select([pidfd], [], [], wait)[0])


@pytest.fixture
def site_dirs(tmp_path: Path) -> tuple[Path, Path]:
    os.chmod(tmp_path, 0o755)
    empty, home = tmp_path / "empty", tmp_path / "home"
    empty.mkdir(mode=0o755)
    home.mkdir(mode=0o755)
    (home / "pub").mkdir(mode=0o755)
    (home / "hello.txt").write_text("hi\n")
    return empty, home


@pytest.fixture
def zygote(site_dirs: tuple[Path, Path]) -> Iterator[Zygote]:
    empty, _ = site_dirs
    cfg = default_config(secure_chroot_dir=str(empty), anonymous_enable=True, listen=True)
    z = Zygote(lambda: Site(cfg, refused), lambda: None)
    try:
        yield z
    finally:
        z.close()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and os.waitpid(z.pid, os.WNOHANG)[0] == 0:
            time.sleep(0.01)


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=WAIT)
        server, _ = lsock.accept()
    return client, server


def _reply(client: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data[3:4] == b"-":
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _admit(who: Identity, *, start_dir: str = "/", uid: int | None = None) -> Admit:
    return Admit(name="ftp", user_class="anonymous", root=who.root, grants="", umask=0o077, anon_password="a@b",
                 uid=who.uid if uid is None else uid, gid=who.gid, chroot=who.chroot, start_dir=start_dir,
                 pending=b"", tls_protected=False, tls_pbsz=False, tls_prot_private=False,
                 local_ip="127.0.0.1", remote_ip="127.0.0.1")


class _Worker:
    """An identity worker as the broker sees it: its admission channel and pidfd."""

    def __init__(self, zygote: Zygote, who: Identity) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid, self.pidfd = zygote.spawn_identity(who, theirs)
        finally:
            theirs.close()
        self.admission = Channel(mine)
        self.who = who

    def session(self, msg: Admit | None = None) -> tuple[socket.socket, Channel]:
        """(client, the broker's end of the session channel) of a newly admitted session."""
        client, server = _tcp_pair()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.admission.send(msg or _admit(self.who), (server.fileno(), theirs.fileno()))
        finally:
            server.close()
            theirs.close()
        return client, Channel(mine)

    def close(self) -> None:
        self.admission.close()
        os.close(self.pidfd)


def test_zygote_is_named_root_and_refuses_malformed_requests(zygote: Zygote) -> None:
    # an identity worker request without its admission channel: refused, the zygote goes on
    zygote.chan.send(SpawnIdentity(65534, 65534, "", "/", True))
    msg, fds = zygote.chan.recv(Refused, max_fds=1)
    assert not fds and isinstance(msg, Refused)
    assert _comm(zygote.pid) == ZYGOTE_NAME  # named before it serves
    assert _ids(zygote.pid, "Uid:")[:3] == [0, 0, 0]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, pytest.raises(SpawnRefused, match="never root"):
        zygote.spawn_identity(Identity(0, 0, (), "/", True), b)
    with a, b, pytest.raises(SpawnRefused, match="kind"):  # a stream socket is no admission channel
        s1, s2 = socket.socketpair()
        with s1, s2:
            zygote.spawn_identity(Identity(65534, 65534, (), "/", True), s1)
    assert _comm(zygote.pid) == ZYGOTE_NAME


def test_identity_worker_hosts_logged_in_sessions(zygote: Zygote, nobody: pwd.struct_passwd,
                                                  site_dirs: tuple[Path, Path]) -> None:
    _, home = site_dirs
    who = Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True)
    w = _Worker(zygote, who)
    try:
        client, chan = w.session()
        with client:
            assert _reply(client).startswith(b"230")  # no 220: the login happened before
            client.sendall(b"PWD\r\n")
            assert _reply(client).startswith(b'257 "/"')
            # the process: exactly the identity, jailed in its root, named
            assert _ids(w.pid, "Uid:")[:3] == [nobody.pw_uid] * 3
            assert _ids(w.pid, "Gid:")[:3] == [nobody.pw_gid] * 3
            assert _ids(w.pid, "Groups:") == []
            assert os.readlink(f"/proc/{w.pid}/root") == str(home)
            assert _comm(w.pid) == IDENTITY_NAME
            # a second session in the same process; the first goes on
            client2, chan2 = w.session()
            with client2:
                assert _reply(client2).startswith(b"230")
                client2.sendall(b"CWD pub\r\n")
                assert _reply(client2).startswith(b"250")
                client.sendall(b"PWD\r\n")
                assert _reply(client).startswith(b'257 "/"')
                client2.sendall(b"QUIT\r\n")
                assert _reply(client2).startswith(b"221")
                _eof(chan2)  # the session's channel closes with it: the broker's "session over"
            client.sendall(b"QUIT\r\n")
            assert _reply(client).startswith(b"221")
            _eof(chan)
        assert not _exited(w.pidfd, 0.2)  # sessions over, admission open: it waits for more
        w.admission.close()
        assert _exited(w.pidfd)  # no more sessions coming, none left: it ends
    finally:
        os.close(w.pidfd)


def _eof(chan: Channel) -> None:
    """Read log events until the worker closes the channel."""
    chan.sock.settimeout(WAIT)
    while chan.sock.recv(70000):
        pass


def test_start_dir_refused_for_that_session_only(zygote: Zygote, nobody: pwd.struct_passwd,
                                                 site_dirs: tuple[Path, Path]) -> None:
    _, home = site_dirs
    (home / "locked").mkdir(mode=0o700)
    who = Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True)
    w = _Worker(zygote, who)
    try:
        good, _ = w.session()
        assert _reply(good).startswith(b"230")
        bad, bad_chan = w.session(_admit(who, start_dir="/locked"))
        assert _reply(bad) == f"500 OOPS: cannot change directory:{home}/locked\r\n".encode()
        assert bad.recv(10) == b""
        _eof(bad_chan)
        missing, _ = w.session(_admit(who, start_dir="/nope"))
        assert _reply(missing).startswith(b"500 OOPS: cannot change directory:")
        good.sendall(b"PWD\r\n")
        assert _reply(good).startswith(b"257")
        for s in (good, bad, missing):
            s.close()
    finally:
        w.close()


def test_admit_of_another_identity_is_dropped(zygote: Zygote, nobody: pwd.struct_passwd,
                                              site_dirs: tuple[Path, Path]) -> None:
    _, home = site_dirs
    who = Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True)
    w = _Worker(zygote, who)
    try:
        other, chan = w.session(_admit(who, uid=nobody.pw_uid - 1))
        with other:
            assert other.recv(10) == b""  # its descriptors closed, never served
            _eof(chan)
        root, chan = w.session(_admit(who, uid=0))
        with root:
            assert root.recv(10) == b""
        notice, _ = w.admission.recv(LogNotice)  # said on the admission channel
        assert "another identity" in notice.text  # type: ignore[attr-defined]
        ok, chan = w.session()
        with ok:
            assert _reply(ok).startswith(b"230")
    finally:
        w.close()


def test_sigterm_says_421_to_every_session(zygote: Zygote, nobody: pwd.struct_passwd,
                                           site_dirs: tuple[Path, Path]) -> None:
    _, home = site_dirs
    w = _Worker(zygote, Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True))
    try:
        sessions = [w.session()[0] for _ in range(3)]
        for s in sessions:
            assert _reply(s).startswith(b"230")
        signal.pidfd_send_signal(w.pidfd, signal.SIGTERM)
        for s in sessions:
            assert _reply(s) == b"421 Server shutting down.\r\n"
            s.close()
        assert _exited(w.pidfd)
    finally:
        w.close()


def test_prelogin_hands_the_client_socket_back(zygote: Zygote) -> None:
    client, server = _tcp_pair()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid, pidfd = zygote.spawn_prelogin(server, theirs)
    finally:
        server.close()
        theirs.close()
    chan = Channel(mine)
    chan.sock.settimeout(WAIT)
    try:
        with client:
            assert _reply(client).startswith(b"220")
            assert _comm(pid) == PRELOGIN_NAME
            client.sendall(b"USER anonymous\r\n")
            assert _reply(client).startswith(b"331")
            client.sendall(b"PASS a@b\r\nPWD\r\n")
            msg, _ = _next(chan, Login)
            chan.send(LoginOk("ftp", "anonymous"))
            msg, fds = _next(chan, Handover, max_fds=2)
            assert isinstance(msg, Handover) and msg.pending.startswith(b"PWD")
            assert len(fds) == 1  # plain text: the client's socket, for the broker to pass on
            back = socket.socket(fileno=fds[0])
            with back:
                assert back.getpeername() == client.getsockname()
            assert _exited(pidfd)
    finally:
        os.close(pidfd)
        chan.close()


def _next(chan: Channel, kind: type, max_fds: int = 0) -> tuple[object, list[int]]:
    """The next `kind` message, past the log events."""
    while True:
        raw, fds, _, _ = socket.recv_fds(chan.sock, 70000, 3)
        from ftpwarden.priv.messages import decode
        msg = decode(raw)
        if isinstance(msg, kind):
            return msg, fds
        for fd in fds:
            os.close(fd)


def test_tls_session_needs_its_helper_channel(zygote: Zygote, nobody: pwd.struct_passwd,
                                              site_dirs: tuple[Path, Path]) -> None:
    """With TLS the control connection is the helper's plaintext end and a third descriptor
    (the helper's channel) comes along; a TLS Admit without it is dropped."""
    _, home = site_dirs
    who = Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True)
    w = _Worker(zygote, who)
    tls = dataclasses.replace(_admit(who), tls_protected=True, tls_pbsz=True, tls_prot_private=True)
    try:
        plain, worker_end = socket.socketpair()
        chan_mine, chan_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        helper_mine, helper_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        w.admission.send(tls, (worker_end.fileno(), chan_theirs.fileno(), helper_theirs.fileno()))
        for s in (worker_end, chan_theirs, helper_theirs):
            s.close()
        plain.settimeout(WAIT)
        with plain, chan_mine, helper_mine:
            assert _reply(plain).startswith(b"230")
            plain.sendall(b"PROT P\r\n")  # the TLS state came along: PBSZ was given before
            assert _reply(plain).startswith(b"200")
            plain.sendall(b"QUIT\r\n")
            assert _reply(plain).startswith(b"221")
            helper_mine.settimeout(WAIT)
            assert helper_mine.recv(100) == b""  # the helper's channel closes with the session
        client, chan = w.session(tls)  # two descriptors for a TLS session: never served
        with client:
            assert client.recv(10) == b""
            _eof(chan)
    finally:
        w.close()


def test_worker_ends_its_sessions_with_421_when_the_zygote_goes(site_dirs: tuple[Path, Path],
                                                                 nobody: pwd.struct_passwd) -> None:
    empty, home = site_dirs
    cfg = default_config(secure_chroot_dir=str(empty), anonymous_enable=True)
    z = Zygote(lambda: Site(cfg, refused), lambda: None)
    w = _Worker(z, Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True))
    pre_client, server = _tcp_pair()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _pre_pid, pre_pidfd = z.spawn_prelogin(server, theirs)
    server.close()
    theirs.close()
    try:
        client, _chan = w.session()
        with client, pre_client, mine:
            assert _reply(client).startswith(b"230")
            assert _reply(pre_client).startswith(b"220")
            os.kill(z.pid, signal.SIGKILL)  # its children's death signals fire
            assert _reply(client) == b"421 Server shutting down.\r\n"
            assert _exited(w.pidfd) and _exited(pre_pidfd)
    finally:
        os.waitpid(z.pid, 0)
        w.close()
        os.close(pre_pidfd)


def test_zygote_ends_when_its_channel_closes_and_reloads_on_request(site_dirs: tuple[Path, Path]) -> None:
    empty, _ = site_dirs
    banners = iter(["first banner", "second banner"])

    def load() -> Site:
        return Site(default_config(secure_chroot_dir=str(empty), anonymous_enable=True), refused,
                    banner=next(banners))

    z = Zygote(load, lambda: None)
    try:
        for expected in (b"220 first banner", b"220 second banner"):
            client, server = _tcp_pair()
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            _pid, pidfd = z.spawn_prelogin(server, theirs)
            server.close()
            theirs.close()
            with client, mine:
                assert _reply(client).startswith(expected)
            assert _exited(pidfd)  # the session channel closed: the pre-login process ends
            os.close(pidfd)
            z.reload()
        z.close()
        with pytest.raises(ChannelError):
            z.reload()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and os.waitpid(z.pid, os.WNOHANG)[0] == 0:
            time.sleep(0.01)
        assert time.monotonic() < deadline
    finally:
        if os.path.exists(f"/proc/{z.pid}"):
            os.kill(z.pid, signal.SIGKILL)
            os.waitpid(z.pid, 0)


def _settled_fds(pid: int) -> list[str]:
    """The process's descriptors once they stay the same for 0.3 s (WAIT at most)."""
    deadline = time.monotonic() + WAIT
    fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
        if now == fds:
            break
        fds = now
    return fds


def test_worker_descriptors_are_its_sessions_only(zygote: Zygote, nobody: pwd.struct_passwd,
                                                 site_dirs: tuple[Path, Path]) -> None:
    _, home = site_dirs
    w = _Worker(zygote, Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True))
    try:
        client, chan = w.session()
        assert _reply(client).startswith(b"230")
        client.sendall(b"QUIT\r\n")
        _reply(client)
        _eof(chan)
        client.close()
        before = _settled_fds(w.pid)  # the first session's sockets may still be closing
        client, chan = w.session()  # a second session, ended the same way, leaves nothing behind
        assert _reply(client).startswith(b"230")
        client.sendall(b"LIST\r\nQUIT\r\n")
        _reply(client)
        _eof(chan)
        client.close()
        deadline = time.monotonic() + WAIT  # a listing thread may still be closing its directory
        while (after := sorted(os.listdir(f"/proc/{w.pid}/fd"), key=int)) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert after == before, [(fd, os.readlink(f"/proc/{w.pid}/fd/{fd}")) for fd in after]
        links = [os.readlink(f"/proc/{w.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{w.pid}/fd")]
        assert not [x for x in links if x.startswith("/") and x != "/dev/null"], links  # no file, no log
    finally:
        w.close()


@pytest.mark.parametrize(("line", "error"), [
    ("session_isolation=thread", "session_isolation=thread is neither identity nor process"),
    ("identity_sessions_max=0", "identity_sessions_max must be 1 or more"),
])
def test_isolation_options_are_checked_at_their_line(tmp_path: Path, line: str, error: str) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"listen=YES\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(conf))
    assert str(e.value) == f"{conf}:2: {error}"
    good, _ = load_config(None, ["session_isolation=process", "identity_sessions_max=1"])
    assert (good.session_isolation, good.identity_sessions_max) == ("process", 1)
    assert (default_config().session_isolation, default_config().identity_sessions_max) == ("identity", 256)


def _pss(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if x.startswith("Pss:"))
    return int(line.split()[1])


def test_an_idle_session_costs_the_worker_little_memory(zygote: Zygote, nobody: pwd.struct_passwd,
                                                        site_dirs: tuple[Path, Path]) -> None:
    """Issue 11's budget is 64 KiB of PSS per idle session across broker and worker:
    the worker's part, measured over 60 sessions, stays well inside it."""
    _, home = site_dirs
    w = _Worker(zygote, Identity(nobody.pw_uid, nobody.pw_gid, (), str(home), True))
    sessions = []
    try:
        for _ in range(61):
            client, chan = w.session()
            sessions.append((client, chan))
            assert _reply(client).startswith(b"230")
            client.sendall(b"PWD\r\n")
            assert _reply(client).startswith(b"257")
            if len(sessions) == 1:
                time.sleep(0.2)
                first = _pss(w.pid)
        time.sleep(0.2)
        per_session = (_pss(w.pid) - first) / 60
        assert per_session < 40, f"{per_session:.1f} KiB per idle session"
    finally:
        for client, chan in sessions:
            client.close()
            chan.close()
        w.close()


def test_tls_link_waits_on_descriptors_past_1024() -> None:
    """An identity worker hosting hundreds of sessions has descriptors past select()'s limit."""
    import resource

    from ftpwarden.priv.messages import DataEnded
    from ftpwarden.priv.tlshelper import TlsLink
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip("no room for a descriptor past 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        high = os.dup2(theirs.fileno(), 1500)
        theirs.close()
        link = TlsLink(Channel(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=high)))
        link.serial = 7
        with ours:
            Channel(ours).send(DataEnded(7, ""))
            assert link.ended(WAIT) is None
            assert link.ended(0.05) == "the TLS helper did not report the end of the transfer"
        link.chan.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
