"""hosts.allow / hosts.deny (hosts_access(5), hosts_options(5)): parser and matcher, no I/O.

vsftpd's tcp_wrappers=YES asks libwrap; we read the same two files ourselves.
A line is `daemon_list : client_list [: option : ...]`; `\\` joins lines,
`#` starts a comment line.  Lists are separated by blanks or commas and may
use `EXCEPT`.  Access is granted by the first matching line of hosts.allow,
else denied by the first matching line of hosts.deny, else granted; the
options `allow` / `deny` turn a line's verdict around.

Daemon patterns: ALL, a daemon name (`ftpwarden` and `vsftpd` are ours),
`name@host` (host matched against the server's address).  Client patterns:
ALL, LOCAL, KNOWN, UNKNOWN, PARANOID, `.domain` (name suffix), `n.n.n.`
(address prefix), `n.n.n.n/m.m.m.m` and `n.n.n.n/len`, `[v6]` and
`[v6]/len`, `*`/`?` wildcards, an exact name or address, `/file` (patterns
read from that file), `ALL@host` / `UNKNOWN@host` (no ident lookup: the user
is unknown).  A pattern of digits, dots and wildcards is an address pattern
only, so it never needs a name; any other needs the client's name, and
`decide` then answers NEED_NAME: the caller looks the name up (bounded in
time, off its loop) and asks again with it.

Options: allow, deny, setenv, severity (no effect), twist (denies: we run no
command), spawn and the rest (no effect, reported by `Rules.warnings`).  A
file we cannot read or parse denies every client (fail closed).  vsftpd's
`setenv VSFTPD_LOAD_CONF FILE` (extra config for that client) is refused:
`check` denies a client whose deciding line carries it, rather than run its
session under a configuration other than the one written for it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["DAEMONS", "Peer", "Rule", "Rules", "Verdict", "Decision", "NEED_NAME", "parse", "load", "decide",
           "host_addr", "LOAD_CONF", "DENIED_REPLY", "DENIED_TEXT", "rules_dir", "check",
           "without_load_conf", "LOAD_CONF_REFUSED", "problems"]

DAEMONS = ("ftpwarden", "vsftpd")  # vsftpd's own name keeps a migrated hosts.allow working
LOAD_CONF = "VSFTPD_LOAD_CONF"
DENIED_REPLY = b"421 Service not available.\r\n"  # vsftpd's reply to a denied host (prelogin.c)
DENIED_TEXT = "Connection refused: tcp_wrappers denial."  # and its log line's text
LOAD_CONF_REFUSED = ("a per-address configuration would have to reach the broker, the password checker "
                     "and the identity workers; use user_config_dir, or a listener of its own (listen_address)")
_MAX_BYTES = 1 << 20  # a hosts file or a /file pattern list larger than this is refused
_ADDRESS_CHARS = frozenset("0123456789.*?")
_IGNORED_OPTIONS = frozenset({"severity", "spawn", "banners", "nice", "keepalive", "linger", "rfc931",
                              "umask", "user"})


class Verdict(Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    where: str = ""  # FILE:LINE of the deciding line, "" when no line matched
    load_conf: str = ""  # its `setenv VSFTPD_LOAD_CONF FILE`, if any


class _NeedName:
    def __repr__(self) -> str:
        return "NEED_NAME"


NEED_NAME = _NeedName()  # decide() needs the client's host name to go on


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the connection.  `name`: None = not looked up yet, "" = unknown."""

    addr: str
    name: str | None = None
    paranoid: bool = False  # a reverse name that does not map back to `addr`


def host_addr(addr: str) -> str:
    """The address as patterns see it: an IPv4-mapped IPv6 address is IPv4; scope dropped."""
    addr = addr.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True, slots=True)
class _List:
    """`include EXCEPT exclude` (exclude None: no EXCEPT)."""

    include: tuple[str, ...]
    exclude: _List | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    daemons: _List
    clients: _List
    verdict: Verdict | None  # from an allow / deny option; None: the file's own
    load_conf: str
    where: str


@dataclass
class Rules:
    allow: list[Rule] = field(default_factory=list)
    deny: list[Rule] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # any: every client is denied
    warnings: list[str] = field(default_factory=list)
    files: dict[str, frozenset[str]] = field(default_factory=dict)  # /file patterns, read at load


class _Bad(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    return text.replace(",", " ").split()


def _split_list(tokens: list[str]) -> _List:
    if not tokens:
        raise _Bad("an empty list")
    if "EXCEPT" in tokens:
        i = tokens.index("EXCEPT")
        if i == 0:
            raise _Bad("EXCEPT without a list before it")
        return _List(tuple(tokens[:i]), _split_list(tokens[i + 1:]))
    return _List(tuple(tokens))


def _fields(line: str) -> list[str]:
    """`line` split at colons a backslash does not escape, outside `[...]` (IPv6)."""
    out, cur, i, bracket = [], [], 0, False
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] == ":":
            cur.append(":")
            i += 2
            continue
        bracket = (bracket or c == "[") and c != "]"
        if c == ":" and not bracket:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with `\\`-newline joins and comments dropped."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.split("\n"), 1):
        if not buf:
            start = n
            if raw.lstrip().startswith("#"):
                continue
        if raw.endswith("\\"):
            buf += raw[:-1]
            continue
        buf += raw
        if buf.strip():
            out.append((start, buf))
        buf = ""
    if buf.strip():
        out.append((start, buf))
    return out


def _rule(line: str, where: str, rules: Rules) -> Rule:
    parts = _fields(line)
    if len(parts) < 2:
        raise _Bad("expected `daemons : clients [: options]`")
    daemons, clients = _split_list(_tokens(parts[0])), _split_list(_tokens(parts[1]))
    verdict: Verdict | None = None
    load_conf = ""
    options = [p.strip() for p in parts[2:]]
    for i, option in enumerate(options):
        if not option:
            raise _Bad("an empty option")
        word, _, value = option.partition(" ")
        word, value = word.lower(), value.strip()
        if word in ("allow", "deny"):
            if value or i != len(options) - 1:
                raise _Bad(f"`{word}` takes no value and must be the last option")
            verdict = Verdict(word)
        elif word == "setenv":
            name, _, env_value = value.partition(" ")
            if not name:
                raise _Bad("setenv needs a name")
            if name == LOAD_CONF:
                load_conf = env_value.strip()
                rules.warnings.append(f"{where}: setenv {LOAD_CONF} is refused ({LOAD_CONF_REFUSED}): "
                                      "the clients of this line are denied")
            else:
                rules.warnings.append(f"{where}: setenv {name}: no effect (only {LOAD_CONF} is read)")
        elif word == "twist":
            verdict = Verdict.DENY  # the connection would go to a command we do not run: never to us
            rules.warnings.append(f"{where}: twist: no command is run; the connection is refused")
        elif word in _IGNORED_OPTIONS:
            if word != "severity":
                rules.warnings.append(f"{where}: option {word}: no effect here")
        else:
            raise _Bad(f"unknown option {word!r}")
    return Rule(daemons, clients, verdict, load_conf, where)


def parse(text: str, filename: str, rules: Rules, allow_file: bool) -> None:
    """Add the lines of one file to `rules` (hosts.allow when `allow_file`)."""
    for lineno, line in _logical_lines(text):
        where = f"{filename}:{lineno}"
        try:
            rule = _rule(line, where, rules)
        except _Bad as e:
            rules.errors.append(f"{where}: {e}")
            continue
        (rules.allow if allow_file else rules.deny).append(rule)


def _read(path: str) -> str | None:
    """The file's text; None when it does not exist (an empty table).  OSError/ValueError otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > _MAX_BYTES:
        raise ValueError("larger than 1 MiB")
    return data.decode("utf-8", "surrogateescape")


def load(directory: str) -> Rules:
    """Read `directory`/hosts.allow and hosts.deny (and the /file patterns they name).
    Never raises: a problem is in `errors` (and then every client is denied)."""
    rules = Rules()
    for name, allow in (("hosts.allow", True), ("hosts.deny", False)):
        path = os.path.join(directory, name)
        try:
            text = _read(path)
        except (OSError, ValueError) as e:
            rules.errors.append(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}")
            continue
        if text is not None:
            parse(text, path, rules, allow)
    for rule in rules.allow + rules.deny:
        for pattern in _all_patterns(rule.clients):
            if pattern.startswith("/") and pattern not in rules.files:
                try:
                    text = _read(pattern)
                except (OSError, ValueError) as e:
                    rules.errors.append(f"{rule.where}: {pattern}: cannot read: {getattr(e, 'strerror', None) or e}")
                    continue
                rules.files[pattern] = frozenset(_tokens("\n".join(
                    line for line in (text or "").split("\n") if not line.lstrip().startswith("#"))))
    return rules


def _all_patterns(lst: _List | None) -> list[str]:
    out: list[str] = []
    while lst is not None:
        out.extend(lst.include)
        lst = lst.exclude
    return out


# ---------------------------------------------------------------------- matching

def _string_match(pattern: str, value: str) -> bool:
    """libwrap's string_match: `.suffix`, `prefix.`, wildcards, else equal (no case)."""
    pattern, value = pattern.lower(), value.lower()
    if pattern.startswith("."):
        return value.endswith(pattern)
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern)
    if pattern.endswith("."):
        return value.startswith(pattern)
    return pattern == value


def _net_match(pattern: str, addr: str) -> bool:
    """`n.n.n.n/m.m.m.m`, `n.n.n.n/len`, `[v6]`, `[v6]/len`: False for another family."""
    try:
        ip = ipaddress.ip_address(addr)
        if pattern.startswith("["):
            net, _, length = pattern.partition("]")
            net = net[1:]
            if length and not length.startswith("/"):
                return False
            spec = f"{net}{length}" if length else net
            return ip in ipaddress.IPv6Network(spec, strict=False) if ip.version == 6 else False
        net, _, mask = pattern.partition("/")
        return ip.version == 4 and ip in ipaddress.IPv4Network(f"{net}/{mask}", strict=False)
    except ValueError:
        return False


def _host_match(pattern: str, peer: Peer, files: dict[str, frozenset[str]]) -> bool | _NeedName:
    """Does `pattern` match `peer`?  NEED_NAME when only its name can tell."""
    upper = pattern.upper()
    if upper == "ALL":
        return True
    if pattern.startswith("/"):
        return _any(files.get(pattern, frozenset()), peer, files)
    if pattern.startswith("@"):
        return False  # NIS netgroups: not supported (never matches)
    if "/" in pattern or pattern.startswith("["):
        return _net_match(pattern, peer.addr)
    if set(pattern) <= _ADDRESS_CHARS:
        return _string_match(pattern, peer.addr)  # an address pattern: the name is never asked
    if upper in ("LOCAL", "KNOWN", "UNKNOWN", "PARANOID"):
        if peer.name is None:
            return NEED_NAME
        known = bool(peer.name) and not peer.paranoid
        return {"LOCAL": known and "." not in peer.name, "KNOWN": known,
                "UNKNOWN": not peer.name and not peer.paranoid, "PARANOID": peer.paranoid}[upper]
    if ":" in pattern:
        return _string_match(pattern, peer.addr)  # a bare IPv6 address
    if _string_match(pattern, peer.addr):
        return True
    if peer.name is None:
        return NEED_NAME
    return bool(peer.name) and not peer.paranoid and _string_match(pattern, peer.name)


def _client_match(pattern: str, peer: Peer, files: dict[str, frozenset[str]]) -> bool | _NeedName:
    if "@" in pattern[1:] and not pattern.startswith("@"):
        user, _, host = pattern.partition("@")
        if user.upper() not in ("ALL", "UNKNOWN"):
            return False  # no ident lookup: the client's user is unknown
        return _host_match(host, peer, files)
    return _host_match(pattern, peer, files)


def _any(patterns: frozenset[str] | tuple[str, ...], peer: Peer, files: dict[str, frozenset[str]]) -> bool | _NeedName:
    need = False
    for pattern in patterns:
        m = _client_match(pattern, peer, files)
        if m is True:
            return True
        need = need or m is NEED_NAME
    return NEED_NAME if need else False


def _list_match(lst: _List, test: Callable[[tuple[str, ...]], bool | _NeedName]) -> bool | _NeedName:
    """`include EXCEPT exclude` with three-valued logic (NEED_NAME propagates)."""
    matched = test(lst.include)
    if matched is False or lst.exclude is None:
        return matched
    excluded = _list_match(lst.exclude, test)
    if excluded is True:
        return False
    if matched is NEED_NAME or excluded is NEED_NAME:
        return NEED_NAME
    return True


def _daemon_match(patterns: tuple[str, ...], server: Peer) -> bool:
    for pattern in patterns:
        name, at, host = pattern.partition("@")
        if at and _host_match(host, server, {}) is not True:
            continue
        if name.upper() == "ALL" or name.lower() in DAEMONS:
            return True
    return False


def decide(rules: Rules, client: Peer, server: Peer) -> Decision | _NeedName:
    """The verdict for `client` connecting to `server`, or NEED_NAME: look the
    client's name up and ask again with `client.name` set ("" if unknown)."""
    if rules.errors:
        return Decision(Verdict.DENY, rules.errors[0])
    client = Peer(host_addr(client.addr), client.name, client.paranoid)
    server = Peer(host_addr(server.addr))
    for table, default in ((rules.allow, Verdict.ALLOW), (rules.deny, Verdict.DENY)):
        for rule in table:
            if _list_match(rule.daemons, lambda p: _daemon_match(p, server)) is not True:
                continue
            m = _list_match(rule.clients, lambda p: _any(p, client, rules.files))
            if m is NEED_NAME:
                return NEED_NAME
            if m is True:
                return Decision(rule.verdict or default, rule.where, rule.load_conf)
    return Decision(Verdict.ALLOW)


def rules_dir(cfg: object) -> str:
    """Where hosts.allow and hosts.deny are: tcp_wrappers_dir (tests, chroots), else /etc."""
    return str(getattr(cfg, "tcp_wrappers_dir", None) or "/etc")


def check(directory: str, client_addr: str, server_addr: str,
          lookup: Callable[[str], tuple[str, bool]]) -> Decision:
    """Read the files and decide; `lookup(addr)` -> (name or "", paranoid) is called
    only when a rule needs the client's name (blocking: the caller bounds it)."""
    rules = load(directory)
    client, server = Peer(client_addr), Peer(server_addr)
    decision = decide(rules, client, server)
    if decision is NEED_NAME:
        name, paranoid = lookup(host_addr(client_addr))
        decision = decide(rules, Peer(client_addr, name, paranoid), server)
    assert isinstance(decision, Decision)
    return without_load_conf(decision)


def without_load_conf(decision: Decision) -> Decision:
    """A grant that would load VSFTPD_LOAD_CONF is a denial (the option is refused)."""
    if decision.verdict is Verdict.ALLOW and decision.load_conf:
        return Decision(Verdict.DENY, f"{decision.where} (setenv {LOAD_CONF}: refused)", decision.load_conf)
    return decision


def problems(cfg: object) -> list[str]:
    """For check-config and start-up: with tcp_wrappers=YES, what is wrong in the two
    files (errors: every client is denied) and what has no effect or is refused."""
    if not getattr(cfg, "tcp_wrappers", False):
        return []
    rules = load(rules_dir(cfg))
    return [f"tcp_wrappers: {e} (every client is denied until it is fixed)" for e in rules.errors] + [
        f"tcp_wrappers: {w}" for w in rules.warnings]
