"""The PROXY protocol header parser (proto/proxyheader.py) and TrustedSources / read_header
(net/proxyproto.py) on a socketpair: exact consumption, v1 and v2, good and bad."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from ftpwarden.net.proxyproto import TrustedSources, effective, read_header
from ftpwarden.proto.proxyheader import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    Declared,
    HeaderParser,
    ProxyHeaderError,
    parse,
)

TAIL = b"USER alice\r\n"


def v2(command: int = 1, fam: int = 0x11, block: bytes | None = None, tlvs: bytes = b"",
       length: int | None = None, version: int = 2) -> bytes:
    if block is None:
        block = (bytes([192, 0, 2, 7, 192, 0, 2, 1]) + struct.pack("!HH", 40000, 21) if fam >> 4 == 1 else
                 socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
                 + struct.pack("!HH", 40000, 21) if fam >> 4 == 2 else b"")
    body = block + tlvs
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + struct.pack("!H", len(body) if length is None
                                                                             else length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V4 = Declared(("192.0.2.7", 40000), ("192.0.2.1", 21))
V6 = Declared(("2001:db8::7", 40000), ("2001:db8::1", 21))
NONE = Declared(None, None)

GOOD = [
    (b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\r\n", V4),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 21\r\n", V6),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::1 40000 21\r\n", V6),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::1 0 65535\r\n", Declared(("192.0.2.7", 0), ("::1", 65535))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", Declared(("0.0.0.0", 0), ("255.255.255.255", 65535))),
    (b"PROXY UNKNOWN\r\n", NONE),
    (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     NONE),  # the longest line the spec allows: 107 bytes
    (v2(), V4),
    (v2(fam=0x21), V6),
    (v2(command=0, fam=0x00), NONE),  # LOCAL: health checks
    (v2(command=0, fam=0x11), NONE),  # LOCAL: the address block is ignored
    (v2(command=0, fam=0x12, block=b"\xff" * 7), NONE),  # ... whatever it holds
    (v2(command=1, fam=0x00), NONE),  # PROXY, UNSPEC: the connection's own endpoints
    (v2(tlvs=tlv(0x04, b"") + tlv(0x05, b"id-1") + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))), V4),
    (v2(tlvs=tlv(0xE0, b"x" * (0xFFFF - 12 - 3))), V4),  # the longest v2 header
]

BAD = [
    b"USER alice\r\n",
    b"GET / HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\n",  # LF without CR
    b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\r\r\n",
    b"PROXY  TCP4 192.0.2.7 192.0.2.1 40000 21\r\n",  # two spaces
    b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21 \r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 40000\r\n",
    b"PROXY TCP5 192.0.2.7 192.0.2.1 40000 21\r\n",
    b"PROXY tcp4 192.0.2.7 192.0.2.1 40000 21\r\n",
    b"PROXY TCP4 192.0.2.07 192.0.2.1 40000 21\r\n",  # leading zero (octal confusion)
    b"PROXY TCP4 192.0.2.256 192.0.2.1 40000 21\r\n",
    b"PROXY TCP4 192.0.2 192.0.2.1 40000 21\r\n",
    b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 21\r\n",  # family mismatch
    b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 21\r\n",
    b"PROXY TCP6 fe80::1%eth0 2001:db8::1 40000 21\r\n",  # scope id
    b"PROXY TCP6 2001:db8:::7 2001:db8::1 40000 21\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 040000 21\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 65536 21\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 -1 21\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.1 \xd9\xa1 21\r\n",  # a non-ASCII digit
    b"PROXY UNKNOWNX\r\n",
    b"PROXY UNKNOWN " + b"f" * 100 + b"\r\n",  # past 107 bytes
    b"PROXY\r\n",
    b"proxy TCP4 192.0.2.7 192.0.2.1 40000 21\r\n",
    v2(version=1),
    v2(version=3),
    v2(command=2),
    v2(fam=0x12),  # UDP
    v2(fam=0x22),
    v2(fam=0x31, block=b"\x00" * 216),  # UNIX
    v2(fam=0x10),
    v2(fam=0x41),
    v2(fam=0x13),
    v2(fam=0x11, block=b"\x00" * 11),  # a short address block
    v2(fam=0x21, block=b"\x00" * 35),
    v2(tlvs=b"\x04\x00"),  # a TLV cut short
    v2(tlvs=tlv(0x05, b"abc")[:-1]),
    v2(tlvs=b"\x05\x00\x09abc"),  # runs past the header
    v2(tlvs=tlv(0x20, b"\x01\x00\x00")),  # SSL TLV without its fixed part
    v2(tlvs=tlv(0x20, b"\x01\x00\x00\x00\x00\x21\x00\x09TLS")),  # a sub-TLV past its parent
    V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
]


@pytest.mark.parametrize("header,declared", GOOD)
def test_good_headers_consume_exactly_the_header(header, declared):
    assert parse(header + TAIL) == (declared, len(header))
    assert parse(header) == (declared, len(header))


@pytest.mark.parametrize("header,declared", GOOD)
def test_byte_by_byte_never_past_the_end(header, declared):
    p = HeaderParser()
    data = header + TAIL
    pos = 0
    while not p.done:
        assert 0 < p.want() <= (V1_MAX if p.peek else V2_MAX)
        step = p.feed(data[pos:pos + 1])
        assert step == 1
        pos += 1
    assert pos == len(header)
    assert p.declared == declared
    assert p.want() == 0 and p.feed(TAIL) == 0


@pytest.mark.parametrize("header,declared", GOOD)
def test_reading_what_want_says(header, declared):
    """The reader's way: peek `want` bytes (v1 and the first byte), or read exactly `want`."""
    p = HeaderParser()
    data = header + TAIL
    pos = 0
    while not p.done:
        n = p.want()
        chunk = data[pos:pos + n]
        if not p.peek:
            assert pos + n <= len(header)  # an exact read never goes past the header
        used = p.feed(chunk)
        assert used == len(chunk) or p.done
        pos += used
    assert pos == len(header) and p.declared == declared


def test_v2_lengths_are_what_the_header_says():
    assert len(GOOD[-1][0]) == V2_MAX
    p = HeaderParser()
    assert p.feed(GOOD[-1][0][:16]) == 16
    assert not p.peek and p.want() == 0xFFFF


@pytest.mark.parametrize("header", BAD)
def test_bad_headers_are_refused(header):
    with pytest.raises(ProxyHeaderError):
        parse(header + TAIL)


def test_incomplete_is_not_an_error_until_it_cannot_be_a_header():
    assert parse(b"PROXY TCP4 192.0.2.7") is None
    assert parse(v2()[:20]) is None
    assert parse(b"") is None
    with pytest.raises(ProxyHeaderError, match="within 107"):
        parse(b"PROXY UNKNOWN " + b"x" * 200)
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 14))  # 107 bytes and no LF


def test_wrong_first_bytes_are_refused_at_once():
    for first in (b"U", b"\r\n\r\n\x01", b"PROXX", b"\x00"):
        with pytest.raises(ProxyHeaderError):
            HeaderParser().feed(first)


# ---------------------------------------------------------------- TrustedSources

def test_trusted_sources():
    t = TrustedSources("127.0.0.1, 10.1.0.0/16,fd00::/8")
    assert "127.0.0.1" in t and "10.1.200.3" in t and "fd00::5" in t
    assert "::ffff:10.1.0.9" in t  # an IPv4 client on an IPv6 socket
    assert "127.0.0.2" not in t and "10.2.0.1" not in t and "::1" not in t and "junk" not in t
    assert "10.1.0.1%eth0" in t


@pytest.mark.parametrize("text,bad", [("10.0.0.1, 10.0.0.300", "10.0.0.300"), ("example.com", "example.com"),
                                      ("10.0.0.0/33", "10.0.0.0/33")])
def test_trusted_sources_names_the_bad_entry(text, bad):
    with pytest.raises(ValueError, match=f"proxy_protocol_from: '{bad}'"):
        TrustedSources(text)


def test_trusted_sources_needs_one():
    with pytest.raises(ValueError, match="no address"):
        TrustedSources(" , ")


# ---------------------------------------------------------------- read_header on a real socket

def _read(chunks: list[bytes], *, close: bool = False, timeout: float = 2.0, pause: float = 0.02
          ) -> tuple[Declared | BaseException, bytes, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)

    async def run() -> Declared | BaseException:
        async def send() -> None:
            for c in chunks:
                b.sendall(c)
                await asyncio.sleep(pause)
            if close:
                b.shutdown(socket.SHUT_WR)
        sender = asyncio.get_running_loop().create_task(send())
        try:
            return await read_header(a, timeout)
        except (ProxyHeaderError, TimeoutError, OSError) as e:
            return e
        finally:
            await sender
    result = asyncio.run(run())
    a.setblocking(True)
    a.settimeout(0.5)
    rest = b""
    try:
        while len(rest) < 65536:
            got = a.recv(65536)
            if not got:
                break
            rest += got
    except TimeoutError:
        pass
    b.close()
    return result, rest, a


@pytest.mark.parametrize("header,declared", GOOD)
def test_read_header_leaves_what_follows(header, declared):
    result, rest, a = _read([header + TAIL])
    assert result == declared
    assert rest == TAIL
    a.close()


def test_read_header_in_pieces():
    line = b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 21\r\n"
    result, rest, a = _read([line[:3], line[3:20], line[20:] + TAIL])
    assert result == V4 and rest == TAIL
    h = v2(tlvs=tlv(0x05, b"x" * 3000))
    result, rest, a = _read([h[:5], h[5:17], h[17:1000], h[1000:] + TAIL])
    assert result == V4 and rest == TAIL
    a.close()


def test_read_header_errors():
    result, _, a = _read([b"PROXY TCP4 192.0.2.7"], close=True)
    assert isinstance(result, ProxyHeaderError) and "ended" in str(result)
    a.close()
    result, _, a = _read([b"PROXY TCP4 192.0.2.7"], timeout=0.3)
    assert isinstance(result, TimeoutError)
    a.close()
    result, _, a = _read([b"SSH-2.0-x\r\n"])
    assert isinstance(result, ProxyHeaderError)
    a.close()


def test_effective_address():
    a, b = socket.socketpair()
    assert effective(V4, a) == ("192.0.2.7", 40000)
    a.close()
    b.close()
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, peer = srv.accept()
    assert effective(NONE, s) == ("127.0.0.1", peer[1])
    for x in (srv, c, s):
        x.close()
