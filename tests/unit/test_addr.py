"""PORT/EPRT parsing and PASV/EPSV formatting."""

from __future__ import annotations

import re

import pytest

from ftpwarden.proto import addr
from ftpwarden.proto.errors import LocalProtocolError, RemoteProtocolError


@pytest.mark.parametrize("arg,expected", [
    ("127,0,0,1,4,1", ("127.0.0.1", 1025)),
    ("10,1,2,3,255,255", ("10.1.2.3", 65535)),
    ("0,0,0,0,0,1", ("0.0.0.0", 1)),
    ("192,168,001,002,0,21", ("192.168.1.2", 21)),
])
def test_port_valid(arg: str, expected: tuple[str, int]) -> None:
    assert addr.parse_port(arg) == expected


@pytest.mark.parametrize("arg", [
    "", "1,2,3,4,5", "1,2,3,4,5,6,7", "256,0,0,1,4,1", "1,2,3,4,256,1", "1,2,3,4,1,256",
    "a,b,c,d,e,f", "1,2,3,4,5,x", "1,2,3,-4,5,6", "1,2,3,4,5,", " 1,2,3,4,5,6",
    "1.2.3.4.5.6", "1,2,3,4,0,0", "1,2,3,4,1,²", "1,2,3,4,1,0001",
])
def test_port_invalid(arg: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        addr.parse_port(arg)
    assert info.value.code == 501


@pytest.mark.parametrize("arg,expected", [
    ("|1|132.235.1.2|6275|", (1, "132.235.1.2", 6275)),
    ("|2|1080::8:800:200C:417A|5282|", (2, "1080::8:800:200c:417a", 5282)),
    ("|2|::1|21|", (2, "::1", 21)),
    ("!1!10.0.0.1!65535!", (1, "10.0.0.1", 65535)),
    ("~2~::1~1~", (2, "::1", 1)),
])
def test_eprt_valid(arg: str, expected: tuple[int, str, int]) -> None:
    assert addr.parse_eprt(arg) == expected


@pytest.mark.parametrize("arg", ["|3|1.2.3.4|21|", "|0|1.2.3.4|21|", "|9|::1|21|"])
def test_eprt_unknown_family_is_522(arg: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        addr.parse_eprt(arg)
    assert info.value.code == 522
    assert "(1,2)" in info.value.text


@pytest.mark.parametrize("arg", [
    "", "|", "||", "|1|1.2.3.4|21", "|1|1.2.3.4|21|x", " |1|1.2.3.4|21| ",
    "|1|1.2.3.4|21|22|", "|1|::1|21|", "|2|1.2.3.4|21|", "|1|1.2.3|21|",
    "|1|1.2.3.256|21|", "|1|1.2.3.4|0|", "|1|1.2.3.4|65536|", "|1|1.2.3.4|x|",
    "|1|1.2.3.4||", "|a|1.2.3.4|21|", "||1.2.3.4|21|", "|2|fe80::1%eth0|21|",
    "\x7f1\x7f1.2.3.4\x7f21\x7f", " 1 1.2.3.4 21 ", "|1|example.com|21|",
])
def test_eprt_invalid_is_501(arg: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        addr.parse_eprt(arg)
    assert info.value.code == 501


@pytest.mark.parametrize("host,port", [("127.0.0.1", 1025), ("10.2.3.4", 65535), ("1.2.3.4", 256)])
def test_pasv_round_trip(host: str, port: int) -> None:
    text = addr.format_pasv(host, port)
    m = re.fullmatch(r"Entering Passive Mode \(([0-9,]+)\)\.", text)
    assert m is not None
    assert addr.parse_port(m.group(1)) == (host, port)


def test_pasv_exact_text_and_mapped_host() -> None:
    assert addr.format_pasv("192.168.0.1", 6446) == "Entering Passive Mode (192,168,0,1,25,46)."
    assert addr.format_pasv("::ffff:10.0.0.1", 1025) == "Entering Passive Mode (10,0,0,1,4,1)."


def test_pasv_refuses_pure_v6() -> None:
    with pytest.raises(LocalProtocolError):
        addr.format_pasv("::1", 1025)


def test_epsv_text_and_round_trip() -> None:
    text = addr.format_epsv(6446)
    assert text == "Entering Extended Passive Mode (|||6446|)"
    port = int(text[text.index("(") + 4:text.index(")") - 1])
    assert port == 6446


@pytest.mark.parametrize("a,b,same", [
    ("1.2.3.4", "1.2.3.4", True),
    ("::ffff:1.2.3.4", "1.2.3.4", True),
    ("1.2.3.4", "::ffff:1.2.3.4", True),
    ("::1", "::0:1", True),
    ("1.2.3.4", "1.2.3.5", False),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.5", False),
    ("::1", "127.0.0.1", False),
    ("junk", "junk", False),
    ("", "", False),
])
def test_same_host(a: str, b: str, same: bool) -> None:
    assert addr.same_host(a, b) is same


@pytest.mark.parametrize("host,v4", [
    ("1.2.3.4", "1.2.3.4"), ("::ffff:1.2.3.4", "1.2.3.4"), ("::1", None),
    ("2001:db8::1", None), ("junk", None),
])
def test_ipv4_of(host: str, v4: str | None) -> None:
    assert addr.ipv4_of(host) == v4
