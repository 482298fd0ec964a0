"""Issue 18 item 9 (hygiene) in isolated mode: what a worker carries, and what
the monitor (inetd mode's) still checks itself.

- fd and environment census of the pre-login process, the TLS helper and the
  identity worker (/proc, as root);
- under TLS only the helper holds the client's TCP socket (no root process does);
- CHOWN_UPLOAD only for anonymous sessions with chown_uploads, never on an
  O_PATH descriptor (a monitor driven by fake workers over a real channel);
- the monitor refuses a login userlist_file or force_*_logins_ssl forbid,
  whatever the worker asks.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ftpwarden.policy.config import load_config
from ftpwarden.priv.channel import Channel, ChannelClosed
from ftpwarden.priv.messages import ChownUpload, Done, Handover, Login, LoginFailed, LoginOk, Refused
from ftpwarden.priv.monitor import Monitor
from ftpwarden.proto.principal import UserClass

from ..conftest import wait_for
from ..integration.conftest import Ctl, start_server, stop_server, tls_login
from .conftest import everyone, holders, session_processes, socket_inode, tls_lines, write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
ALICE = ("ftpw_alice", "alice-pw-1")
TIMEOUT = 20

# The whole environment a worker may see (creds.minimal_environment).
MINIMAL_ENV = {"PATH": "/usr/bin:/bin"} | {k: os.environ[k] for k in ("LANG", "LC_ALL", "TZ") if k in os.environ}


# ------------------------------------------------------------------ census helpers

def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [item.decode("utf-8", "replace").split("=", 1) for item in raw.split(b"\0") if item]
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def _unix_inodes() -> set[int]:
    """The unix sockets of every network namespace: with isolate_network a session
    process's own (asyncio's self-pipe, the TLS helper's pairs) are listed only in its."""
    tables, seen = ["/proc/net/unix"], set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                netns = os.readlink(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if netns not in seen:
                seen.add(netns)
                tables.append(f"/proc/{entry}/net/unix")
    out = set()
    for table in tables:
        try:
            out.update(int(line.split()[6]) for line in Path(table).read_text().splitlines()[1:])
        except OSError:  # that process ended meanwhile
            continue
    return out


def _tcp_inodes() -> set[int]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            out.add(int(line.split()[9]))
    return out


def _census(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
    return out


def _check_fds(pid: int, *, err: Path, logs: set[str], tcp: set[int], max_unix: int,
               jail: frozenset[str] = frozenset()) -> None:
    """What a worker may hold: stdin/stdout on /dev/null, stderr, the log files,
    exactly the TCP sockets `tcp`, asyncio's epoll, at most `max_unix` unix
    sockets (its channels and asyncio's self-pipe pair) and, after login, the
    directory of its file-system jail (`jail`, opened after the drop).  Nothing else."""
    fds = _census(pid)
    unix, tcps = _unix_inodes(), _tcp_inodes()
    seen_tcp: set[int] = set()
    n_unix = 0
    for fd, target in sorted(fds.items()):
        if fd in (0, 1):
            assert target == "/dev/null", (pid, fds)
        elif fd == 2:  # the server's stderr, or /dev/null where the worker logs through its monitor
            assert target in (str(err), "/dev/null"), (pid, fds)
        elif target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in tcps:
                seen_tcp.add(inode)
            else:
                assert inode in unix, (pid, fd, target, fds)
                n_unix += 1
        elif target != "anon_inode:[eventpoll]":
            assert target in logs | jail, (pid, fd, target, fds)
    assert seen_tcp == tcp, (pid, fds)
    assert n_unix <= max_unix, (pid, fds)


def _one(pids: list[int], what: str) -> int:
    assert len(pids) == 1, (what, pids)
    return pids[0]


def _uid(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


@pytest.fixture
def logged(tmp_path_factory, accounts):
    """A local-users server with TLS offered and a log file: the sinks' fds are legitimate."""
    base = tmp_path_factory.mktemp("hygiene")
    log = base / "v.log"
    conf = write_conf(base, "delay_failed_login=0", "force_local_logins_ssl=NO", "xferlog_enable=YES",
                      f"vsftpd_log_file={log}", *tls_lines(base))
    srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)
    srv.extra["logs"] = {str(log)}
    yield srv
    stop_server(srv)


def test_plain_workers_hold_only_their_fds_and_a_minimal_environment(logged, accounts):
    pre = Ctl(logged.host, logged.port)
    try:
        inode = socket_inode(pre.sock)
        worker = _one(holders(inode, [p for p in session_processes(logged) if _uid(p) == accounts["nobody"].pw_uid]),
                      "pre-login worker")
        assert wait_for(lambda: holders(inode, everyone(logged)) == [worker], timeout=5), \
            holders(inode, everyone(logged))  # the listener and the zygote passed it on
        _check_fds(worker, err=logged.stderr_path, logs=logged.extra["logs"], tcp={inode}, max_unix=3)
        assert _environ(worker) == MINIMAL_ENV
        pre.login(*ALICE)
        assert wait_for(lambda: holders(inode, everyone(logged)) and all(
            _uid(p) == accounts["alice"].pw_uid for p in holders(inode, everyone(logged))), timeout=10), \
            holders(inode, everyone(logged))
        post = _one(holders(inode, everyone(logged)), "identity worker")
        # admission channel, the session's channel, asyncio's pair
        _check_fds(post, err=logged.stderr_path, logs=logged.extra["logs"], tcp={inode}, max_unix=4,
                   jail=frozenset({accounts["alice"].pw_dir}))
        assert _environ(post) == MINIMAL_ENV
    finally:
        pre.sock.close()


def test_tls_helper_alone_holds_the_client_socket(logged, accounts):
    ftp = tls_login(logged, user=ALICE[0], password=ALICE[1], timeout=TIMEOUT)
    try:
        inode = socket_inode(ftp.sock)
        tree = session_processes(logged)
        alice = [p for p in tree if _uid(p) == accounts["alice"].pw_uid]
        post = _one(alice, "identity worker")
        helper = _one(holders(inode, everyone(logged)), "TLS helper")
        assert _uid(helper) == accounts["nobody"].pw_uid
        # the helper: client socket, broker channel, plaintext end, handshake channel, asyncio's pair
        _check_fds(helper, err=logged.stderr_path, logs=logged.extra["logs"], tcp={inode}, max_unix=5)
        # the worker: plaintext end, admission channel, the session's channel, TLS-link channel,
        # asyncio's pair; no TCP socket
        _check_fds(post, err=logged.stderr_path, logs=logged.extra["logs"], tcp=set(), max_unix=6,
                   jail=frozenset({accounts["alice"].pw_dir}))
        assert _environ(helper) == MINIMAL_ENV
        assert _environ(post) == MINIMAL_ENV
        assert ftp.voidcmd("NOOP").startswith("200")
    finally:
        ftp.close()


# ------------------------------------------------------------------ a monitor driven by fake workers

def _config(*lines: str) -> Any:
    cfg, _ = load_config(None, list(lines))
    return cfg


def _drive(tmp: Path, cfg: Any, account: Any, login: Login,
           upload: Callable[[], int] | None = None) -> tuple[int, str, str]:
    """Run a Monitor in a child over a real TCP connection, with fake workers:
    the pre-login one sends `login`, the post-login one sends CHOWN_UPLOAD of
    the fd `upload()` opens.  -> (monitor's exit code, what the workers saw, its stderr)."""
    seen = tmp / "seen"
    err = tmp / "monitor.err"
    seen.write_text("")
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname(), timeout=TIMEOUT)
    conn, _ = lsock.accept()
    lsock.close()

    def note(text: str) -> None:
        with open(seen, "a") as f:
            f.write(text + "\n")

    def prelogin(_conn: socket.socket, chan: Channel) -> None:
        chan.send(login)
        msg, _ = chan.recv(LoginOk, LoginFailed)
        note(type(msg).__name__)
        if isinstance(msg, LoginOk):
            chan.send(Handover(b""))

    def postlogin(_conn: socket.socket, chan: Channel, *_args: Any, **_kw: Any) -> None:
        if upload is None:
            return
        fd = upload()
        try:
            chan.send(ChownUpload(), (fd,))
            msg, _ = chan.recv(Done, Refused)
            note(type(msg).__name__)
        except ChannelClosed:
            note("closed")

    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - this process's stderr to its end
            logging.basicConfig(force=True)  # not pytest's capture: the monitor's log lines go to `err`
            client.close()
            code = Monitor(cfg, conn, authenticate=lambda *_: account, prelogin=prelogin,
                           postlogin=postlogin).run()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    conn.close()
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        client.close()
    return os.waitstatus_to_exitcode(status), seen.read_text(), err.read_text()


def _account(user_class: UserClass, uid: int, name: str = "ftp") -> Any:
    return SimpleNamespace(name=name, user_class=user_class, uid=uid, gid=uid, root="/", chroot=False)


def _upload_file(tmp: Path, owner: int, flags: int = os.O_WRONLY) -> Callable[[], int]:
    path = tmp / "upload.bin"
    path.write_bytes(b"data")
    os.chown(path, owner, -1)
    return lambda: os.open(path, flags)


CHOWN_ON = ("chown_uploads=YES", "chown_username=ftpw_bob", "chown_upload_mode=0640")


def test_chown_upload_where_allowed_is_done(tmp_path, accounts):
    """The harness itself: an anonymous session with chown_uploads gets its chown."""
    ftp_uid = accounts["ftp"].pw_uid
    rc, seen, err = _drive(tmp_path, _config(*CHOWN_ON), _account(UserClass.ANONYMOUS, ftp_uid),
                           Login("anonymous", "a@b"), _upload_file(tmp_path, ftp_uid))
    assert seen.split() == ["LoginOk", "Done"], (seen, err)
    assert rc == 0 and "Traceback" not in err
    st = (tmp_path / "upload.bin").stat()
    assert st.st_uid == accounts["bob"].pw_uid and st.st_mode & 0o777 == 0o640


@pytest.mark.parametrize("lines,user_class", [
    ((), UserClass.ANONYMOUS),           # chown_uploads is off
    (CHOWN_ON, UserClass.REAL),          # a local user's upload
    (CHOWN_ON, UserClass.GUEST),         # a virtual user's upload
], ids=["chown_uploads-off", "real-user", "guest-user"])
def test_chown_upload_out_of_place_ends_the_session(tmp_path, accounts, lines, user_class):
    uid = accounts["alice"].pw_uid
    rc, seen, err = _drive(tmp_path, _config(*lines), _account(user_class, uid, "ftpw_alice"),
                           Login("ftpw_alice", "pw"), _upload_file(tmp_path, uid))
    assert seen.split() in (["LoginOk"], ["LoginOk", "closed"]), (seen, err)  # no answer: ended (or killed)
    assert rc == 1 and "Traceback" not in err, err
    assert "CHOWN_UPLOAD" in err
    assert (tmp_path / "upload.bin").stat().st_uid == uid  # untouched


def test_chown_upload_of_an_o_path_fd_ends_the_session_cleanly(tmp_path, accounts):
    ftp_uid = accounts["ftp"].pw_uid
    rc, seen, err = _drive(tmp_path, _config(*CHOWN_ON), _account(UserClass.ANONYMOUS, ftp_uid),
                           Login("anonymous", "a@b"), _upload_file(tmp_path, ftp_uid, os.O_PATH))
    assert seen.split() in (["LoginOk"], ["LoginOk", "closed"]), (seen, err)
    assert rc == 1 and "Traceback" not in err, err
    assert "O_PATH" in err
    assert (tmp_path / "upload.bin").stat().st_uid == ftp_uid


def test_userlist_denied_anonymous_login_is_refused_by_the_monitor(tmp_path, accounts):
    listed = tmp_path / "user_list"
    listed.write_text("anonymous\n")
    cfg = _config("userlist_enable=YES", "userlist_deny=YES", f"userlist_file={listed}", "delay_failed_login=0")
    account = _account(UserClass.ANONYMOUS, accounts["ftp"].pw_uid)
    _rc, seen, err = _drive(tmp_path, cfg, account, Login("anonymous", "a@b"))
    assert seen.split() == ["LoginFailed"], (seen, err)
    assert "Traceback" not in err, err
    # a name the list does not hold still logs in (the refusal is the list's)
    _rc, seen, err = _drive(tmp_path, cfg, account, Login("ftp", "a@b"))
    assert seen.split() == ["LoginOk"], (seen, err)


@pytest.mark.parametrize("user_class,protected,ok", [
    (UserClass.ANONYMOUS, False, False),
    (UserClass.ANONYMOUS, True, True),
    (UserClass.GUEST, False, False),
    (UserClass.GUEST, True, True),
])
def test_force_logins_ssl_is_rechecked_by_the_monitor(tmp_path, accounts, user_class, protected, ok):
    """The worker says whether the control connection is protected; the monitor
    cannot verify that (as in vsftpd), but it applies force_*_logins_ssl to it."""
    cfg = _config("delay_failed_login=0").replace(ssl_enable=True, allow_anon_ssl=True,
                                                  force_anon_logins_ssl=True, force_local_logins_ssl=True)
    account = _account(user_class, accounts["ftp"].pw_uid)
    _rc, seen, err = _drive(tmp_path, cfg, account, Login("someone", "pw", protected))
    assert seen.split() == (["LoginOk"] if ok else ["LoginFailed"]), (seen, err)
    assert "Traceback" not in err, err

