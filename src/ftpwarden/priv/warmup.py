"""The zygote's warm-up: what every child would otherwise build, and so own, itself.

A forked child shares the zygote's memory until either writes to it.  What the
children all need (modules, the event loop machinery, the caches and the
specialised bytecode of the code every session runs, the TLS library's tables)
is built here once, before the first fork; then the heap is frozen out of the
collector's reach.  No client byte and no key are involved.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import pwd
import socket
from typing import Any

__all__ = ["warm", "settle"]

log = logging.getLogger("ftpwarden.zygote")

WARM_WAIT = 5.0  # seconds the warm-up may take
# a session before login, then one logged in: control commands only (no data connection)
_REHEARSAL = (b"FEAT\r\nSYST\r\nNOOP\r\nQUIT\r\n", b"PWD\r\nTYPE I\r\nCWD /\r\nNOOP\r\nQUIT\r\n")


def warm(site: Any) -> None:
    """In the zygote, before the first fork: the modules, then one pass through the code every session runs (a session
    before and after login on a socketpair of ours, and with TLS a handshake in
    memory): the caches it fills and the bytecode it specialises are then shared.
    No client byte and no key are involved; a failure only costs memory."""
    import concurrent.futures.thread  # noqa: F401 - asyncio.to_thread; nothing imports after chroot

    from ..net import control, data, tls  # noqa: F401
    from . import identity, tlshelper, worker  # noqa: F401
    try:  # the name service's set-up (a pre-login process looks nopriv_user up)
        pwd.getpwnam(site.cfg.nopriv_user or "nobody")
    except KeyError:
        pass
    try:
        asyncio.run(asyncio.wait_for(_rehearse(site.cfg, site.banner), WARM_WAIT))
    except Exception:
        log.warning("zygote warm-up failed", exc_info=True)
    if site.cfg.ssl_enable:
        _rehearse_tls()


async def _rehearse(cfg: Any, banner: str | None) -> None:
    from ..net.context import ServerContext
    from ..net.control import ControlConnection, serve
    from ..proto.principal import Principal, UserClass
    anonymous = Principal("ftp", UserClass.ANONYMOUS, "/", frozenset(), 0o077, chroot=False)
    for account, lines in zip((None, anonymous), _REHEARSAL, strict=True):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(lines)
            await serve(ControlConnection(ServerContext(cfg, None, banner=banner), account=account,
                                          addresses=("127.0.0.1", "127.0.0.1")), ours)


def _rehearse_tls() -> None:
    """One TLS handshake in memory, anonymous (no certificate, so no key here): it
    sets up the library's algorithm tables and record layer once for every child."""
    import ssl
    try:
        server, client = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        for ctx in (server, client):
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("aNULL:@SECLEVEL=0")
        bios = [ssl.MemoryBIO() for _ in range(4)]
        ends = (client.wrap_bio(bios[0], bios[1], server_hostname="warm-up"),
                server.wrap_bio(bios[2], bios[3], server_side=True))
        for _ in range(6):  # the handshake's flights, each way
            for end, out, peer in ((ends[0], bios[1], bios[2]), (ends[1], bios[3], bios[0])):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                peer.write(out.read())
        ends[0].write(b"warm")
        bios[2].write(bios[1].read())
        ends[1].read(4)
    except (ssl.SSLError, ValueError):
        pass  # no anonymous suite in this OpenSSL build: the children set it up themselves


def settle() -> None:
    """Leave the heap as children should share it: the collector never walks these
    objects again (it would write to every page), and glibc's free lists are merged
    now (else a child's first large malloc merges them, writing all over the heap)."""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
