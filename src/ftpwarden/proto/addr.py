"""PORT/EPRT parsing and PASV/EPSV formatting (RFC 959, RFC 2428).

Parsing is strict: ASCII digits only, exact field counts, addresses checked
by `ipaddress`.  Whether the address may be used (same host as the control
peer, port >= 1024) is the session's decision, helped by `same_host`.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = ["parse_port", "parse_eprt", "format_pasv", "format_epsv", "same_host", "ipv4_of", "port_allowed", "plain_ip"]

_ARGUMENT_ERROR = 501
_BAD_PROTOCOL = 522
_PORT = re.compile(r"[0-9]{1,5}")  # str.isdigit would accept "²" and friends
_BYTE = re.compile(r"[0-9]{1,3}")


def _port(text: str, code_text: str) -> int:
    port = int(text) if _PORT.fullmatch(text) else 0
    if not 1 <= port <= 65535:  # port 0 can never be connected to
        raise RemoteProtocolError(_ARGUMENT_ERROR, code_text)
    return port


def parse_port(arg: str) -> tuple[str, int]:
    """"h1,h2,h3,h4,p1,p2" -> ("h1.h2.h3.h4", p1*256+p2)."""
    fields = arg.split(",")
    if len(fields) != 6 or not all(_BYTE.fullmatch(f) and int(f) <= 255 for f in fields):
        raise RemoteProtocolError(_ARGUMENT_ERROR, "Illegal PORT command.")
    nums = [int(f) for f in fields]
    port = _port(str(nums[4] * 256 + nums[5]), "Illegal PORT command.")
    return ".".join(str(n) for n in nums[:4]), port


def parse_eprt(arg: str) -> tuple[int, str, int]:
    """"|1|132.235.1.2|6275|" or "|2|::1|5282|" -> (af, host, port).

    The delimiter is the first character (RFC 2428: ASCII 33-126).
    Unknown address family -> 522 (the client may retry with 1 or 2).
    """
    bad = RemoteProtocolError(_ARGUMENT_ERROR, "Illegal EPRT command.")
    if len(arg) < 2 or not 33 <= ord(arg[0]) <= 126 or arg[-1] != arg[0]:
        raise bad
    fields = arg[1:-1].split(arg[0])
    if len(fields) != 3:
        raise bad
    af_text, host_text, port_text = fields
    if not _PORT.fullmatch(af_text):
        raise bad
    if af_text not in ("1", "2"):
        raise RemoteProtocolError(_BAD_PROTOCOL, "Network protocol not supported, use (1,2)")
    af = int(af_text)
    if "%" in host_text:  # a scope id from the peer means nothing here
        raise bad
    try:
        ip = (ipaddress.IPv4Address if af == 1 else ipaddress.IPv6Address)(host_text)
    except ValueError:
        raise bad from None
    return af, str(ip), _port(port_text, "Illegal EPRT command.")


def format_pasv(host: str, port: int) -> str:
    """Text of the 227 reply; `host` must be IPv4 (or IPv4-mapped IPv6)."""
    v4 = ipv4_of(host)
    if v4 is None or not 0 < port <= 65535:
        raise LocalProtocolError(f"cannot express {host!r} port {port} in a PASV reply")
    h = v4.replace(".", ",")
    return f"Entering Passive Mode ({h},{port >> 8},{port & 0xFF})."


def format_epsv(port: int) -> str:
    """Text of the 229 reply (RFC 2428 section 3)."""
    if not 0 < port <= 65535:
        raise LocalProtocolError(f"bad EPSV port {port}")
    return f"Entering Extended Passive Mode (|||{port}|)"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in `text` without its zone (%eth0), ::ffff:1.2.3.4 as 1.2.3.4; None if none."""
    return _ip(text.split("%", 1)[0])


@functools.lru_cache(maxsize=1024)
def same_host(a: str, b: str) -> bool:
    """True if both are the same IP, ::ffff:1.2.3.4 being 1.2.3.4.

    Anything unparsable is never the same host (fail closed: this guards
    against FTP bounce and data-connection theft).
    """
    ia, ib = _ip(a), _ip(b)
    return ia is not None and ia == ib


def port_allowed(host: str, port: int, client_ip: str, *, promiscuous: bool) -> bool:
    """The PORT/EPRT rule (the session's reply and the monitor's check): without
    port_promiscuous, only the client's own address and an unprivileged port
    (no FTP bounce to a third host or to a privileged service)."""
    if not 0 < port < 65536:
        return False
    return promiscuous or (port >= 1024 and same_host(host, client_ip))


@functools.lru_cache(maxsize=1024)
def ipv4_of(host: str) -> str | None:
    """"::ffff:1.2.3.4" or "1.2.3.4" -> "1.2.3.4"; pure IPv6 or junk -> None."""
    ip = _ip(host)
    return str(ip) if isinstance(ip, ipaddress.IPv4Address) else None
