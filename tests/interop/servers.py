"""The servers the matrix runs against: ftpwarden in pooled and in isolated mode.

Each mode runs two servers on one directory: a plain one (no ssl_enable, so
clients that try AUTH TLS on their own, like lftp, stay plain) and an FTPS one
(explicit AUTH TLS on its control port, implicit TLS on implicit_ssl_port).
Everything else is left at its default: TLS versions, ciphers, require_ssl_reuse,
force_local_*_ssl, strict_ssl_read_eof.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..integration.conftest import REPO, Server, start_server

__all__ = ["Endpoint", "Owner", "start_mode", "ISO_USER", "ISO_PASSWORD"]

POOLED_USER, POOLED_PASSWORD = "alice", "secret"
ISO_USER, ISO_PASSWORD = "ftpw_alice", "alice-pw-1"  # made by scripts/test-accounts


@dataclass(frozen=True)
class Endpoint:
    """Where one client talks to one server over one transport."""
    mode: str          # pooled | isolated
    transport: str     # plain | explicit | implicit
    host: str
    port: int
    user: str
    password: str
    root: Path         # the user's root directory on disk


@dataclass(frozen=True)
class Owner:
    """Who must own files the tests put in a root (the login user in isolated mode)."""
    uid: int
    gid: int

    def give(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tls_options(cert: tuple[Path, Path], implicit_port: int) -> list[str]:
    return ["ssl_enable=YES", f"rsa_cert_file={cert[0]}", f"rsa_private_key_file={cert[1]}",
            f"implicit_ssl_port={implicit_port}"]


def _pooled(base: Path, root: Path, cert: tuple[Path, Path]) -> tuple[list[Server], dict[str, Endpoint]]:
    """Quick mode, as a user starts it: `ftpwarden serve DIR --user NAME:PASSWORD`."""
    quick = [str(root), "--port", "0", "--bind", "127.0.0.1", "--user", f"{POOLED_USER}:{POOLED_PASSWORD}"]
    implicit = _free_port()
    plain = start_server(quick, root, base)
    tls = start_server(quick + [a for o in _tls_options(cert, implicit) for a in ("-o", o)], root, base)
    ep = {"plain": plain.port, "explicit": tls.port, "implicit": implicit}
    return [plain, tls], {t: Endpoint("pooled", t, "127.0.0.1", p, POOLED_USER, POOLED_PASSWORD, root)
                          for t, p in ep.items()}


def _isolated(base: Path, root: Path, cert: tuple[Path, Path]) -> tuple[list[Server], dict[str, Endpoint]]:
    """Started as root with a vsftpd.conf: a system user through PAM, chrooted at local_root."""
    empty = base / "empty"
    empty.mkdir(mode=0o755)
    common = ["listen=YES", "listen_address=127.0.0.1", "listen_port=0", "anonymous_enable=NO",
              "local_enable=YES", "write_enable=YES", "local_umask=022", "chroot_local_user=YES",
              "allow_writeable_chroot=YES", f"local_root={root}", "pam_service_name=ftpwarden",
              f"secure_chroot_dir={empty}"]
    implicit = _free_port()
    servers = []
    for name, extra in (("plain", []), ("tls", _tls_options(cert, implicit))):
        conf = base / f"isolated-{name}.conf"
        conf.write_text("\n".join(common + extra) + "\n")
        servers.append(start_server(["--config", str(conf)], root, base))
    plain, tls = servers
    ep = {"plain": plain.port, "explicit": tls.port, "implicit": implicit}
    return servers, {t: Endpoint("isolated", t, "127.0.0.1", p, ISO_USER, ISO_PASSWORD, root) for t, p in ep.items()}


def start_mode(mode: str, base: Path, cert: tuple[Path, Path]) -> tuple[list[Server], dict[str, Endpoint], Owner]:
    root = base / "root"
    root.mkdir()
    if mode == "pooled":
        servers, eps = _pooled(base, root, cert)
        return servers, eps, Owner(os.geteuid(), os.getegid())
    r = subprocess.run([str(REPO / "scripts" / "test-accounts")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    alice = pwd.getpwnam(ISO_USER)
    owner = Owner(alice.pw_uid, alice.pw_gid)
    owner.give(root)
    servers, eps = _isolated(base, root, cert)
    return servers, eps, owner
