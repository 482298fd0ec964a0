"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), sans I/O.

A balancer that speaks it sends one header before the client's first byte,
naming the client's address (and the address the client connected to).
`HeaderParser` is fed what the caller has looked at and says how many of those
bytes belong to the header, so a reader consumes the header and never a byte
after it (the FTP or TLS bytes that follow stay in the socket):

- version 2 is 16 bytes whose last two give the length of the rest: exact reads;
- version 1 is a line of at most 107 bytes ending in CRLF: its end is only known
  once the LF is seen, so the caller peeks (`HeaderParser.peek` is then True) and
  consumes what `feed` says (up to and including the LF, or every byte peeked).

What is accepted (anything else raises ProxyHeaderError; the connection is then refused):

- v1 "TCP4" / "TCP6" with strict syntax (single spaces, no leading zeros, ports
  0-65535, addresses of the named family, CRLF); "UNKNOWN" and whatever follows it
  on the line: `Declared(None, None)` (the connection's own endpoints count);
- v2 command LOCAL (health checks; its address block is skipped unread) and
  command PROXY with family UNSPEC: `Declared(None, None)`; PROXY with TCP over
  IPv4 or IPv6: the addresses (an IPv4-mapped IPv6 one as plain IPv4).  PROXY with UDP or UNIX addresses is refused: an
  FTP connection is TCP, and the spec leaves the receiver free to reject those.
  Bytes after the address block are TLVs: walked with bounds checks (PP2_TYPE_SSL's
  sub-TLVs too), their values ignored (a CRC32C TLV is not verified: optional).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Declared", "ProxyHeaderError", "HeaderParser", "parse", "V1_MAX", "V2_MAX", "V2_SIGNATURE"]

V1_MAX: Final = 107  # "PROXY UNKNOWN <39> <39> 65535 65535\r\n", the longest line the spec allows
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version/command, family/transport, length
V2_MAX: Final = V2_FIXED + 0xFFFF
_V1_PREFIX: Final = b"PROXY "

_LOCAL, _PROXY = 0x0, 0x1
_TCP4, _TCP6, _UNSPEC = 0x11, 0x21, 0x00
_FAMILIES: Final = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # address family -> address block size
_PP2_TYPE_SSL = 0x20
_SSL_FIXED = 5  # client (1 byte) and verify (4 bytes) before the sub-TLVs

_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V4 = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")  # inet_ntop's forms, ::ffff:1.2.3.4 included; no scope id

Address = tuple[str, int]


@dataclass(frozen=True)
class Declared:
    """What the header says: the client's (source) and the server's (destination)
    address and port; both None for LOCAL / UNKNOWN / UNSPEC (use the socket's own)."""

    client: Address | None
    server: Address | None


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header this server accepts (the text says why)."""


class HeaderParser:
    """Incremental: `want` bytes next (peeked when `peek`), `feed` them, until `done`."""

    __slots__ = ("_buf", "_total", "declared")

    def __init__(self) -> None:
        self._buf = bytearray()  # the header bytes consumed so far (at most V2_MAX)
        self._total: int | None = None  # the header's length, once known (v2 after 16 bytes; v1 at its LF)
        self.declared: Declared | None = None

    @property
    def done(self) -> bool:
        return self.declared is not None

    @property
    def peek(self) -> bool:
        """True while the header's end is unknown: look with MSG_PEEK, then consume what `feed` returns."""
        return self._total is None and not self._is_v2()

    def want(self) -> int:
        """How many bytes to read (or peek) next: never past the header's end when not peeking."""
        if self.done:
            return 0
        if self._total is not None:
            return self._total - len(self._buf)
        if self._is_v2():
            return V2_FIXED - len(self._buf)
        return V1_MAX - len(self._buf)

    def _is_v2(self) -> bool:
        return bool(self._buf) and self._buf[0] == V2_SIGNATURE[0]

    def feed(self, data: bytes) -> int:
        """Take the leading bytes of `data` that belong to the header; return how many.
        The rest of `data` is not the header's (with peek: leave it in the socket)."""
        if self.done:
            return 0
        taken = 0
        while taken < len(data) and not self.done:
            step = self._feed_some(data[taken:])
            taken += step
        return taken

    def _feed_some(self, data: bytes) -> int:
        if not self._buf or self._total is not None or self._is_v2():
            return self._feed_counted(data)
        return self._feed_line(data)

    def _feed_counted(self, data: bytes) -> int:
        """v2 (or the first byte, which says the version): bytes up to a known boundary."""
        if not self._buf:
            first = data[0]
            if first == V2_SIGNATURE[0]:
                self._buf.append(first)
                return 1
            if first != _V1_PREFIX[0]:
                raise ProxyHeaderError("no PROXY header (neither v1 nor v2)")
            return self._feed_line(data)
        n = min(len(data), self.want())
        before = len(self._buf)
        self._buf += data[:n]
        if self._total is None:
            got = bytes(self._buf[: min(len(self._buf), 12)])
            if not V2_SIGNATURE.startswith(got):
                raise ProxyHeaderError("bad v2 signature")
            if len(self._buf) == V2_FIXED:
                self._total = V2_FIXED + int.from_bytes(self._buf[14:16], "big")
                self._check_v2_fixed()
        if self._total is not None and len(self._buf) == self._total:
            self.declared = _v2(bytes(self._buf))
        return len(self._buf) - before

    def _check_v2_fixed(self) -> None:
        ver_cmd, fam = self._buf[12], self._buf[13]
        if ver_cmd >> 4 != 2:
            raise ProxyHeaderError(f"v2: version {ver_cmd >> 4} (only 2 exists)")
        if ver_cmd & 0xF not in (_LOCAL, _PROXY):
            raise ProxyHeaderError(f"v2: unknown command {ver_cmd & 0xF}")
        if fam >> 4 not in _FAMILIES or fam & 0xF > 2:
            raise ProxyHeaderError(f"v2: unknown address family/transport 0x{fam:02x}")

    def _feed_line(self, data: bytes) -> int:
        """v1: up to and including the first LF, or everything given (all of it header bytes)."""
        room = V1_MAX - len(self._buf)
        lf = data.find(b"\n", 0, room)
        n = lf + 1 if lf >= 0 else min(len(data), room)
        self._buf += data[:n]
        got = bytes(self._buf[:len(_V1_PREFIX)])
        if not _V1_PREFIX.startswith(got):
            raise ProxyHeaderError("no PROXY header (neither v1 nor v2)")
        if lf >= 0:
            self._total = len(self._buf)
            self.declared = _v1(bytes(self._buf))
        elif len(self._buf) >= V1_MAX:
            raise ProxyHeaderError(f"v1: no CRLF within {V1_MAX} bytes")
        return n


def parse(data: bytes) -> tuple[Declared, int] | None:
    """A whole buffer: (what the header declares, its length), or None when `data`
    holds only the start of one.  ProxyHeaderError when it is not one."""
    parser = HeaderParser()
    used = parser.feed(data)
    return (parser.declared, used) if parser.declared is not None else None


# ---------------------------------------------------------------- version 1

def _v1(line: bytes) -> Declared:
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise ProxyHeaderError("v1: the line must end with CRLF (and hold no other CR)")
    body = line[len(_V1_PREFIX):-2]
    if body == b"UNKNOWN" or body.startswith(b"UNKNOWN "):
        return Declared(None, None)  # the rest of the line is ignored, as the spec says
    fields = body.split(b" ")
    if len(fields) != 5:
        raise ProxyHeaderError("v1: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT, single spaces")
    proto, src, dst, sport, dport = fields
    if proto == b"TCP4":
        parse_ip = _v1_ipv4
    elif proto == b"TCP6":
        parse_ip = _v1_ipv6
    else:
        raise ProxyHeaderError("v1: the protocol must be TCP4, TCP6 or UNKNOWN")
    return Declared((parse_ip(src), _v1_port(sport)), (parse_ip(dst), _v1_port(dport)))


def _v1_port(text: bytes) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyHeaderError("v1: a port is a decimal 0-65535 without leading zeros")
    return int(text)


def _v1_ipv4(text: bytes) -> str:
    if not _V4.fullmatch(text):
        raise ProxyHeaderError("v1: TCP4 needs dotted-decimal IPv4 addresses without leading zeros")
    try:
        return str(ipaddress.IPv4Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError("v1: an IPv4 address is out of range") from None


def _v1_ipv6(text: bytes) -> str:
    if not _V6.fullmatch(text):
        raise ProxyHeaderError("v1: TCP6 needs IPv6 addresses")
    try:
        return _shown(ipaddress.IPv6Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError("v1: not a valid IPv6 address") from None


def _shown(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it is (logs, bans, host rules)."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else ip)


# ---------------------------------------------------------------- version 2

def _v2(header: bytes) -> Declared:
    command, fam = header[12] & 0xF, header[13]
    if command == _LOCAL:
        return Declared(None, None)  # the block is ignored, family included (spec 2.2)
    if fam == _UNSPEC:
        _walk_tlvs(header[V2_FIXED:])
        return Declared(None, None)
    if fam not in (_TCP4, _TCP6):
        raise ProxyHeaderError(f"v2: PROXY over family/transport 0x{fam:02x} (only TCP over IPv4/IPv6)")
    size = _FAMILIES[fam >> 4]
    block = header[V2_FIXED:]
    if len(block) < size:
        raise ProxyHeaderError(f"v2: address block of {len(block)} bytes, {size} needed")
    half = (size - 4) // 2
    make = ipaddress.IPv4Address if fam == _TCP4 else ipaddress.IPv6Address
    src, dst = _shown(make(block[:half])), _shown(make(block[half:2 * half]))
    sport, dport = int.from_bytes(block[2 * half:2 * half + 2], "big"), int.from_bytes(block[size - 2:size], "big")
    _walk_tlvs(block[size:])
    return Declared((src, sport), (dst, dport))


def _walk_tlvs(data: bytes, *, nested: bool = False) -> None:
    """Every TLV within bounds (type, 2-byte length, value); values ignored."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise ProxyHeaderError("v2: a TLV is cut short")
        kind, length = data[pos], int.from_bytes(data[pos + 1:pos + 3], "big")
        end = pos + 3 + length
        if end > len(data):
            raise ProxyHeaderError(f"v2: TLV 0x{kind:02x} runs past the header")
        if kind == _PP2_TYPE_SSL and not nested:
            if length < _SSL_FIXED:
                raise ProxyHeaderError("v2: SSL TLV too short")
            _walk_tlvs(data[pos + 3 + _SSL_FIXED:end], nested=True)
        pos = end
