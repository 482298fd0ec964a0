"""Who may see /status: root or a member of admin_group, connecting over loopback.

The peer's uid is the owner of its socket, read from /proc/net/tcp{,6} as identd
does: the line whose local end is the peer's address and whose remote end is ours.
Both ends are on this host, so the kernel's record is the truth; a peer that is
not loopback, or whose socket is not found, is refused.  The uids are resolved
when the listener starts (the isolated ops process then lives in an empty chroot),
and the two /proc/net tables are opened then too (files, not their directory, which
would lead out of a chroot), so the lookups work in the jail.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import struct

from ..proto.addr import plain_ip

__all__ = ["Access", "admin_uids", "peer_uid"]


def admin_uids(group: str | None) -> frozenset[int]:
    """root, and every account in `group` (members and those with it as primary group)."""
    uids = {0}
    if not group:
        return frozenset(uids)
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return frozenset(uids)
    for name in g.gr_mem:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    uids.update(p.pw_uid for p in pwd.getpwall() if p.pw_gid == g.gr_gid)
    return frozenset(uids)


def _proc_hex(ip: str, port: int) -> str:
    packed = ipaddress.ip_address(ip).packed
    # the kernel prints each __be32 word with %08X, i.e. as the host reads those 4 bytes
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _read_all(fd: int) -> bytes:
    """The whole table, read again from its start (a /proc seq file regenerates on each pass)."""
    os.lseek(fd, 0, os.SEEK_SET)
    out = []
    while chunk := os.read(fd, 1 << 16):
        out.append(chunk)
        if sum(map(len, out)) > 64 << 20:  # a bound, however many sockets the host has
            break
    return b"".join(out)


def peer_uid(peer: tuple[str, int], local: tuple[str, int], tables: dict[str, int] | None = None) -> int | None:
    """The uid owning the socket at `peer` connected to us at `local`, or None.
    `tables`: {"tcp": fd, "tcp6": fd} opened before a chroot; else /proc/net is opened now."""
    want = (_proc_hex(peer[0], peer[1]).encode(), _proc_hex(local[0], local[1]).encode())
    names = ("tcp6", "tcp") if ":" in peer[0] else ("tcp",)
    for name in names:
        if tables is not None:
            fd = tables.get(name)
            if fd is None:
                continue
            try:
                text = _read_all(fd)
            except OSError:
                continue
        else:
            try:
                with open(f"/proc/net/{name}", "rb") as f:
                    text = f.read()
            except OSError:
                continue
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 7 and (fields[1], fields[2]) == want:
                try:
                    return int(fields[7])
                except ValueError:
                    return None
    return None


def _loopback(ip: str) -> bool:
    addr = plain_ip(ip)
    return addr is not None and addr.is_loopback


class Access:
    """The /status rule, fixed at start: loopback peers owned by an allowed uid."""

    def __init__(self, group: str | None) -> None:
        self.uids = admin_uids(group)
        # the two tables, opened now: later we may be in a chroot without /proc.  Files, never
        # the directory: a directory descriptor outside the jail would lead out of it by "..".
        self.tables: dict[str, int] = {}
        for name in ("tcp", "tcp6"):
            try:
                self.tables[name] = os.open(f"/proc/self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass

    def allowed(self, peer: tuple[str, int], local: tuple[str, int]) -> bool:
        if not (_loopback(peer[0]) and _loopback(local[0])):
            return False
        uid = peer_uid(peer, local, self.tables)
        return uid is not None and uid in self.uids
