"""Fixtures and /proc helpers that more than one isolated-mode test module uses."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import pytest

from ..conftest import descendants, make_cert
from ..integration.conftest import REPO, Server


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


def is_checker(pid: int) -> bool:
    """The password checker (priv/checker.py) or one of its short-lived check children."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "ftpwarden-check"
    except OSError:
        return False


def session_processes(srv: Server) -> list[int]:
    """The listener's sessions (monitors and workers), not its password checker."""
    return [p for p in descendants(srv.proc.pid) if not is_checker(p)]


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
