"""Fixtures and /proc helpers that more than one isolated-mode test module uses.

Every test here runs once per session_isolation setting (the test id says which):
`session_isolation` below hands the setting to tests/integration's start_server,
which gives it to each isolated-mode server (one started with --config).

Isolated mode's processes, as /proc shows them below the listener (the test's
server pid, also the broker): the password checker (comm ftpwarden-check, and its
short-lived check children), the zygote (ftpwarden-zygote), and the zygote's
children: a pre-login process per connection (nopriv_user; with TLS it stays on as
the session's TLS helper) and the identity workers (the login user).
"""

from __future__ import annotations

import contextlib
import ftplib
import os
import pwd
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import descendants, make_cert, proc_stat, wait_for
from ..integration import conftest as integration
from ..integration.conftest import REPO, Server

ISOLATION_SETTINGS = ("identity", "process")
TASK_COMM_LEN = 15  # /proc/PID/comm keeps the first 15 bytes of a process's name
CHECKER = "ftpwarden-check"
ZYGOTE = "ftpwarden-zygote"[:TASK_COMM_LEN]


@pytest.fixture(scope="module", autouse=True, params=ISOLATION_SETTINGS)
def session_isolation(request: pytest.FixtureRequest) -> Iterator[str]:
    """The setting of this run of the test: every isolated-mode server started meanwhile
    gets `-o session_isolation=<it>`.  A module-scoped fixture that starts a server must
    ask for this one, so that it is started again for the other setting."""
    integration.ISOLATED_OPTIONS[:] = ["-o", f"session_isolation={request.param}"]
    yield request.param
    integration.ISOLATED_OPTIONS.clear()


@pytest.fixture(scope="module")
def accounts():
    r = subprocess.run([str(REPO / "scripts" / "test-accounts")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return {"alice": pwd.getpwnam("ftpw_alice"), "bob": pwd.getpwnam("ftpw_bob"), "ftp": pwd.getpwnam("ftp"),
            "nobody": pwd.getpwnam("nobody")}


def ids(pid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1:]
    gid = next(line for line in status if line.startswith("Gid:")).split()[1:]
    return tuple(map(int, uid[:3])), tuple(map(int, gid[:3]))


def comm(pid: int) -> str:
    """The process's name (/proc/PID/comm); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def is_checker(pid: int) -> bool:
    """The password checker (priv/checker.py) or one of its short-lived check children."""
    return comm(pid) == CHECKER


def is_zygote(pid: int) -> bool:
    return comm(pid) == ZYGOTE


def zygote(srv: Server) -> int:
    """The listener's one zygote (its direct child of that name)."""
    found = wait_for(lambda: children_named(srv.proc.pid, ZYGOTE), 5)  # it names itself once forked
    assert len(found) == 1, f"zygotes below the listener: {found}"
    return found[0]


def children_named(pid: int, name: str) -> list[int]:
    return [p for p in descendants(pid) if comm(p) == name and (st := proc_stat(p)) and st[0] == pid]


def everyone(srv: Server) -> list[int]:
    """The listener and every process below it."""
    return [srv.proc.pid, *descendants(srv.proc.pid)]


def session_processes(srv: Server) -> list[int]:
    """The processes that serve sessions: pre-login processes, TLS helpers and identity
    workers; not the password checker, not the zygote."""
    return [p for p in descendants(srv.proc.pid) if not is_checker(p) and not is_zygote(p)]


def live(pids: list[int]) -> list[int]:
    return [p for p in pids if (st := proc_stat(p)) is not None and st[1] != "Z"]


def uid_of(pid: int) -> int:
    """The real uid (/proc/PID/status; the owner of /proc/PID/* is root for a process that is not dumpable)."""
    return ids(pid)[0][0]


def tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state in hex: 0A is LISTEN) of every TCP socket."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3])
    return out


def socket_fds(pid: int) -> set[int]:
    """The inodes of every socket `pid` holds."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if m := re.fullmatch(r"socket:\[(\d+)\]", target):
                out.add(int(m.group(1)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def sessions_gone(srv: Server, setting: str) -> list[int]:
    """The session processes still there although every client has left: none may be,
    except (identity setting) identity workers that hold no TCP socket, which the broker
    lets go after IDENTITY_LINGER idle seconds.  [] once all is as it should be."""
    nopriv = pwd.getpwnam("nobody").pw_uid
    tcp = tcp_sockets()
    left = []
    for pid in live(session_processes(srv)):
        try:
            lingering = setting == "identity" and uid_of(pid) != nopriv and not socket_fds(pid) & set(tcp)
        except OSError:  # it ended while we looked
            continue
        if not lingering:
            left.append(pid)
    return left


def identity_linger() -> float:
    """How long the broker keeps an idle identity worker (seconds)."""
    from ftpwarden.priv import broker
    return float(broker.IDENTITY_LINGER)


def shared_writable(pid: int) -> list[str]:
    """The process's shared writable mappings (a table other processes see: bans, account rates)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        perms = line.split()[1]
        if perms[1] == "w" and perms[3] == "s":
            out.append(line)
    return out


def socket_inode(sock: socket.socket) -> int:
    """The server side of our connection: find the socket whose peer is our local port."""
    lport = sock.getsockname()[1]
    rport = sock.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local_port = int(f[1].split(":")[1], 16)
        remote_port = int(f[2].split(":")[1], 16)
        if local_port == rport and remote_port == lport:
            return int(f[9])
    raise AssertionError("server socket not found")


def holders(inode: int, candidates: list[int]) -> list[int]:
    out = []
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    out.append(pid)
                    break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def loopback_conf(base: Path, *lines: str, name: str = "c.conf") -> Path:
    """`base`/`name`: listen on loopback at a free port, `base`/empty as the pre-login jail, then `lines`."""
    os.chmod(base, 0o755)
    (base / "empty").mkdir(mode=0o755, exist_ok=True)
    conf = base / name
    conf.write_text("\n".join(["listen=YES", "listen_address=127.0.0.1", "listen_port=0",
                               f"secure_chroot_dir={base / 'empty'}", *lines, ""]))
    return conf


def conf_at(base: Path, *lines: str) -> Path:
    """loopback_conf without the delay after a failed login, then `lines`."""
    return loopback_conf(base, "delay_failed_login=0", *lines)


# The test accounts (PAM) jailed in their homes, which they own; nobody else.
LOCAL_USERS = ("anonymous_enable=NO", "local_enable=YES", "chroot_local_user=YES", "pam_service_name=ftpwarden",
               "allow_writeable_chroot=YES")


def write_conf(base: Path, *lines: str, name: str = "c.conf") -> Path:
    """loopback_conf for LOCAL_USERS, then `lines`."""
    return loopback_conf(base, *LOCAL_USERS, *lines, name=name)


@contextlib.contextmanager
def inetd_session(conf: Path, *, stderr: int = subprocess.PIPE
                  ) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """`serve --config conf` started as inetd starts it (`listen=NO`; the file's `listen=YES`
    line is made `listen=NO`): on one accepted connection as its stdin and stdout.  Yields
    the process and the client's end; at the block's end kills the process if it is still
    there and closes the client's end."""
    conf.write_text(conf.read_text().replace("listen=YES\n", "listen=NO\n", 1))
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=30)
        server_side, _ = lsock.accept()
    with server_side:
        proc = subprocess.Popen([sys.executable, "-m", "ftpwarden", "serve", "--config", str(conf)],
                                stdin=server_side, stdout=server_side, stderr=stderr,
                                env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    try:
        yield proc, client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        client.close()


def ftp_over(client: socket.socket, timeout: float = 30) -> ftplib.FTP:
    """An ftplib client on a connection made already (inetd_session's); the greeting read."""
    ftp = ftplib.FTP(timeout=timeout)
    ftp.sock, ftp.af = client, client.family
    ftp.file = client.makefile("r", encoding=ftp.encoding)
    ftp.welcome = ftp.getresp()
    return ftp


def tls_lines(base: Path) -> list[str]:
    """A certificate made in `base`, as the lines that turn TLS on with it."""
    cert, key = make_cert(base)
    return ["ssl_enable=YES", f"rsa_cert_file={cert}", f"rsa_private_key_file={key}"]


def memory_holds(pid: int, needles: list[bytes]) -> list[bytes]:
    """The needles found in the readable memory of `pid` (as root, via /proc/PID/mem)."""
    seen: set[bytes] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            if end - start > 512 << 20:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            seen.update(n for n in needles if n in chunk)
    return sorted(seen)


def key_fragments(key: Path) -> list[bytes]:
    """Pieces of the private key as they would sit in memory: PEM text, and the
    prime p in big- and little-endian order (OpenSSL keeps little-endian limbs)."""
    pem_lines = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    text = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-text"], capture_output=True,
                          text=True, timeout=30).stdout
    m = re.search(r"prime1:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert m, text[:200]
    p = bytes.fromhex(re.sub(r"[\s:]", "", m.group(1))).lstrip(b"\0")
    return [pem_lines[3].encode(), p[:32], p[::-1][:32]]
