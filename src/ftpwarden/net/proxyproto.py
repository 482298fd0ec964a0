"""PROXY protocol on sockets: who may send a header, and the one reader of it.

`read_header` is used everywhere a header is read (pooled control and data
connections, isolated mode's data connections and its ftpwarden-proxy process):
it consumes exactly the header (proto/proxyheader.py says how many bytes), so
what follows it (FTP commands, a TLS ClientHello, file data) stays in the socket
for whoever reads next.  Version 1 is read with MSG_PEEK (recvfrom), then the
header's part of what was peeked is taken; version 2 with exact reads.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import Any

from ..proto.addr import plain_ip
from ..proto.proxyheader import Declared, HeaderParser, ProxyHeaderError
from .tls import wait_socket

__all__ = ["HEADER_SECONDS", "TrustedSources", "trusted_from", "read_header", "effective", "Declared",
           "ProxyHeaderError"]

HEADER_SECONDS = 5.0  # HAProxy sends the header with its first packet; this covers a retransmit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedSources:
    """proxy_protocol_from: the balancers whose PROXY headers are believed.

    "10.0.0.5, 10.1.0.0/16, fd00::/8": addresses or CIDR ranges, comma-separated.
    A peer seen as ::ffff:10.0.0.5 (an IPv4 client on an IPv6 socket) matches 10.0.0.5."""

    __slots__ = ("networks", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        networks: list[Network] = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"proxy_protocol_from: {entry!r} is not an address or CIDR range") from None
        if not networks:
            raise ValueError("proxy_protocol_from: no address given (the balancers allowed to send PROXY headers)")
        self.networks = tuple(networks)

    def __contains__(self, peer: str) -> bool:
        ip = plain_ip(peer)
        return ip is not None and any(ip in net for net in self.networks)

    def __repr__(self) -> str:
        return f"TrustedSources({self.text!r})"


def trusted_from(cfg: Any) -> TrustedSources | None:
    """The config's TrustedSources when proxy_protocol_enable=YES, else None.
    ValueError names a bad entry (start-up and check-config report it first)."""
    if not getattr(cfg, "proxy_protocol_enable", False):  # (a test's stand-in config may lack it)
        return None
    return _parsed(str(cfg.proxy_protocol_from or ""))


@functools.lru_cache(maxsize=8)
def _parsed(text: str) -> TrustedSources:
    return TrustedSources(text)  # once per text: every data channel asks


async def read_header(sock: socket.socket, timeout: float = HEADER_SECONDS) -> Declared:
    """Read the PROXY header at the start of `sock` (non-blocking, on the running loop),
    consuming exactly its bytes.  Raises ProxyHeaderError (malformed, or the peer
    closed first), TimeoutError (not whole within `timeout`) or OSError."""
    parser = HeaderParser()
    async with asyncio.timeout(timeout):
        while parser.declared is None:
            try:  # tried first: the header usually came with the connection
                if parser.peek:
                    _take_peeked(sock, parser)
                else:
                    _take_exact(sock, parser)
            except (BlockingIOError, InterruptedError):
                await wait_socket(sock, writing=False)
    return parser.declared


def _take_peeked(sock: socket.socket, parser: HeaderParser) -> None:
    seen = sock.recv(parser.want(), socket.MSG_PEEK)
    if not seen:
        raise ProxyHeaderError("the connection ended before the PROXY header did")
    count = parser.feed(seen)
    taken = sock.recv(count) if count else b""
    if taken != seen[:count]:  # the bytes peeked are queued: a short read is a kernel surprise
        raise ProxyHeaderError("the PROXY header's bytes changed between peek and read")


def _take_exact(sock: socket.socket, parser: HeaderParser) -> None:
    got = sock.recv(parser.want())
    if not got:
        raise ProxyHeaderError("the connection ended before the PROXY header did")
    parser.feed(got)  # all of it: never more than the header's rest was asked for


def effective(declared: Declared, sock: socket.socket) -> tuple[str, int]:
    """The session's client: the declared one, or (LOCAL / UNKNOWN) the socket's own peer."""
    if declared.client is not None:
        return declared.client
    peer = sock.getpeername()
    return str(peer[0]), int(peer[1])
