"""Read vsftpd.conf (and `-o name=value`) into a frozen Config.

Syntax follows vsftpd's parseconf.c: one NAME=VALUE per line, `#` starts a
comment line, booleans are YES/NO/TRUE/FALSE/1/0, numbers starting with 0 are
octal, an empty string value means unset.  Stricter than vsftpd on purpose:
an unknown name, a bad value or a line without `=` stops start-up at its line,
instead of being guessed at or ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType

from .tunables import TUNABLES, Kind, Tunable, Value, format_value

__all__ = ["ConfigError", "Config", "default_config", "load_config", "parse_value", "flag", "number", "text"]

_SPACE = " \t\r\n\v\f"  # C isspace(), as vsftpd strips; not Python's Unicode set
_BOOLS = {"YES": True, "TRUE": True, "1": True, "NO": False, "FALSE": False, "0": False}
_UINT_MAX = 2**32 - 1  # vsftpd stores numbers in an unsigned int
_MAX_ERRORS = 20  # bad lines reported at once
_PORTS = ("listen_port", "pasv_min_port", "pasv_max_port", "ftp_data_port", "implicit_ssl_port")


class ConfigError(Exception):
    """A configuration mistake; str() is "WHERE: message", WHERE being FILE:LINE.

    One error may carry several (`problems`, from `ConfigError.several`): then
    str() is one "WHERE: message" line per problem, so all are shown at once.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.problems: list[ConfigError] = [self]

    @classmethod
    def several(cls, problems: Sequence[ConfigError]) -> ConfigError:
        """One error standing for `problems` (at least one), in the order given."""
        first = problems[0]
        if len(problems) == 1:
            return first
        e = cls(first.where, first.message)
        e.problems = list(problems)
        e.args = ("\n".join(str(p) for p in problems),)
        return e


class Config:
    """Immutable settings: one attribute per tunable (`cfg.anon_root`).

    `explicit` holds the names given a value other than by the table
    default (by the file, `-o`, default_config() or replace()); `where`
    maps those set by load_config to where they were set ("FILE:LINE",
    "-o NAME=VALUE", "--port"), for messages about them.
    """

    __slots__ = ("_values", "explicit", "where")
    _values: Mapping[str, Value]
    explicit: frozenset[str]
    where: Mapping[str, str]

    def __init__(self, values: Mapping[str, Value], explicit: frozenset[str],
                 where: Mapping[str, str] | None = None) -> None:
        # Callers go through default_config()/load_config(), which validate.
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "explicit", frozenset(explicit))
        object.__setattr__(self, "where", MappingProxyType(dict(where or {})))

    def __getattr__(self, name: str) -> Value:
        if not name.startswith("_"):  # guard: _values may be unset (copy, pickle)
            try:
                return self._values[name]
            except KeyError:
                pass
        raise AttributeError(f"no tunable named {name!r}{_hint(name)}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable; use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is immutable")

    def replace(self, **changes: Value) -> Config:
        """A copy with `changes` applied (validated like default_config)."""
        for name, value in changes.items():
            _check_type("replace", name, value)
        return Config({**self._values, **changes}, self.explicit | changes.keys(), self.where)

    def items(self) -> Iterator[tuple[str, Value]]:
        """(name, value) pairs in table order, e.g. for `check-config`."""
        return iter(self._values.items())

    def __reduce__(self) -> tuple[object, ...]:  # copy/pickle despite __setattr__
        return Config, (dict(self._values), self.explicit, dict(self.where))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = (f"{n}={v!r}" for n, v in self._values.items() if v != TUNABLES[n].default)
        return f"Config({', '.join(changed)})"


# Typed reads of one tunable, for code mypy checks (an attribute is bool | int | str | None).
# Functions, not methods: tests hand the authenticators plain stand-ins.

def flag(cfg: Config, name: str) -> bool:
    return bool(getattr(cfg, name))


def number(cfg: Config, name: str) -> int:
    value = getattr(cfg, name)
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        raise TypeError(f"{name} is not a number: {value!r}")
    return int(value)


def text(cfg: Config, name: str) -> str | None:
    value = getattr(cfg, name)
    return None if value is None or value == "" else str(value)


def parse_value(t: Tunable, raw: str) -> Value:
    """The value of `raw` (already stripped) for tunable `t`; ValueError if bad.

    An empty string option means unset (None), as in vsftpd.
    """
    if t.kind is Kind.STR:
        return raw or None
    if not raw:
        raise ValueError(f"missing value for {t.name!r}")
    if t.kind is Kind.BOOL:
        try:
            return _BOOLS[raw.upper()]
        except KeyError:
            raise ValueError(f"{t.name!r} must be YES or NO (or TRUE/FALSE, 1/0), "
                             f"not {raw!r}") from None
    # [0-9] only: int() would also take "+5", "1_0", " 5" and non-ASCII digits.
    if not re.fullmatch(r"[0-9]+", raw) or (raw[0] == "0" and not re.fullmatch("[0-7]+", raw)):
        raise ValueError(f"{t.name!r} must be a non-negative number "
                         f"(a leading 0 means octal), not {raw!r}")
    value = int(raw, 8 if raw[0] == "0" else 10)  # leading 0: octal, as vsftpd
    if value > _UINT_MAX:
        raise ValueError(f"{t.name!r} is too large: {raw}")
    return value


def default_config(**values: Value) -> Config:
    """Table defaults, then `values` (Python values, checked by name and type)."""
    for name, value in values.items():
        _check_type("default_config", name, value)
    return Config({n: t.default for n, t in TUNABLES.items()} | values, frozenset(values))


def load_config(path: str | None, overrides: Sequence[str] = (), *,
                base: Sequence[tuple[str, str]] = (),
                flags: Sequence[tuple[str, str]] = ()) -> tuple[Config, list[str]]:
    """Read `base`, then `path` (if any), then each `-o` override ("name=value"),
    then the command line's `flags`, in that order.

    `base` and `flags` are (where, "name=value") pairs: the caller's defaults
    (quick mode) and options given by a flag (`--port` -> listen_port).  A flag
    and an `-o` setting the same option to different values is an error, so
    the two never silently disagree.  Each `-o` is named as typed.

    Returns the Config and warnings (option set twice in one source, or set
    to a non-default value it has no effect for yet).  Raises ConfigError,
    carrying every bad line at once (`ConfigError.problems`).
    """
    values = {n: t.default for n, t in TUNABLES.items()}
    where: dict[str, str] = {}  # name -> location of its last setting, in order set
    warnings: list[str] = []
    errors: list[ConfigError] = []
    sources: list[tuple[str, Iterator[tuple[str, str]] | Sequence[tuple[str, str]]]] = [("base", base)]
    if path is not None:
        sources.append(("file", _read_lines(path)))
    sources.append(("-o", [(_dash_o(line), line) for line in overrides]))
    sources.append(("flag", flags))
    by_source: dict[str, dict[str, tuple[str, Value]]] = {}
    for kind, lines in sources:
        first: dict[str, tuple[str, Value]] = {}  # duplicates are looked for within one source
        for loc, line in lines:
            try:
                setting = _parse_line(loc, line)
            except ConfigError as e:
                errors.append(e)
                if len(errors) == _MAX_ERRORS:  # not a config file at all, most likely
                    errors.append(ConfigError(loc, f"stopped after {_MAX_ERRORS} errors"))
                    raise ConfigError.several(errors) from None
                continue
            if setting is None:
                continue
            name, value = setting
            if name in first and kind != "flag":
                warnings.append(f"{loc}: option {name!r} is set again (first at "
                                f"{first[name][0]}); the last value wins")
            dash_o = by_source.get("-o", {}).get(name)
            if kind == "flag" and dash_o is not None and dash_o[1] != value:
                errors.append(ConfigError(loc, f"says {name}={format_value(TUNABLES[name], value)} "
                                               f"but {dash_o[0]} says otherwise; give one of them"))
                continue
            first[name] = (loc, value)
            values[name] = value
            where.pop(name, None)  # re-insert so dict order is "order last set"
            where[name] = loc
        by_source[kind] = first
    if not errors:
        errors += _merge_aliases(values, where)
    if not errors:
        try:
            _check_combinations(values, where)
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise ConfigError.several(errors)
    for name, loc in where.items():
        t = TUNABLES[name]
        if t.refused and values[name] != t.default:
            warnings.append(f"{loc}: option {name}={format_value(t, values[name])} is refused "
                            f"and has no effect: {t.refused}")
        elif not t.implemented and values[name] != t.default:
            warnings.append(f"{loc}: option {name!r} is recognised but not implemented yet; "
                            "it has no effect")
    return Config(values, frozenset(where), where), warnings


def _dash_o(line: str) -> str:
    """An `-o` option's location: what the user typed, shortened if long."""
    text = line.strip(_SPACE)
    return f"-o {text if len(text) <= 60 else text[:57] + '...'}"


def _read_lines(path: str) -> Iterator[tuple[str, str]]:
    """(location, text) per line; split on "\\n" only, like vsftpd."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror or e}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(repr(path), "cannot read: not a file name") from None
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            yield f"{path}:{number}", raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{number}", "not valid UTF-8") from None


def _parse_line(loc: str, line: str) -> tuple[str, Value] | None:
    """(name, value) from one line, None for a blank or comment line."""
    line = line.strip(_SPACE)
    if not line or line.startswith("#"):
        return None
    name, eq, raw = line.partition("=")
    name, raw = name.rstrip(_SPACE), raw.lstrip(_SPACE)
    if not eq:
        raise ConfigError(loc, f"expected NAME=VALUE, got {line!r}")
    t = TUNABLES.get(name)
    if t is None:
        raise ConfigError(loc, f"unknown option {name!r}{_hint(name)}")
    try:
        return name, parse_value(t, raw)
    except ValueError as e:
        raise ConfigError(loc, str(e)) from None


# The man page's names for the TLS version switches -> the 3.0.5 parser's (ours).
ALIASES = {"ssl_tlsv1_1": "ssl_tlsv11", "ssl_tlsv1_2": "ssl_tlsv12", "ssl_tlsv1_3": "ssl_tlsv13"}


def _merge_aliases(values: dict[str, Value], where: dict[str, str]) -> list[ConfigError]:
    """An alias and its option are one setting: whichever is set gives both their value;
    both set to different values is an error naming both places."""
    errors = []
    for alias, name in ALIASES.items():
        if alias not in where:
            if name in where:
                values[alias] = values[name]
            continue
        if name in where and values[name] != values[alias]:
            t = TUNABLES[name]
            errors.append(ConfigError(where[alias], f"{alias}={format_value(t, values[alias])} but "
                                      f"{where[name]} says {name}={format_value(t, values[name])}; "
                                      "they are one option (the man page's name and the parser's): give one"))
            continue
        values[name] = values[alias]
        where.setdefault(name, where[alias])
    return errors


def _check_combinations(values: Mapping[str, Value], where: Mapping[str, str]) -> None:
    """Settings that are clearly mistakes; named at the last line involved."""
    order = list(where)

    def at(*names: str) -> str:
        return where[max((n for n in names if n in where), key=order.index)]

    for name in _PORTS:
        if values[name] > 65535:  # type: ignore[operator]
            raise ConfigError(at(name), f"{name}={values[name]} is not a port number "
                                        "(0-65535)")
    lo, hi = values["pasv_min_port"], values["pasv_max_port"]
    if lo and hi and lo > hi:  # type: ignore[operator]
        lo_note = "" if "pasv_min_port" in where else ", the default"
        raise ConfigError(at("pasv_min_port", "pasv_max_port"),
                          f"pasv_min_port ({lo}{lo_note}) is above pasv_max_port ({hi})")
    if values["session_isolation"] not in (None, "identity", "process"):
        raise ConfigError(at("session_isolation"), f"session_isolation={values['session_isolation']} "
                                                   "is neither identity nor process")
    if values["identity_sessions_max"] < 1:  # type: ignore[operator]
        raise ConfigError(at("identity_sessions_max"), "identity_sessions_max must be 1 or more")
    if not values["ftp_enable"]:
        raise ConfigError(at("ftp_enable", "http_enable"),
                          "ftp_enable=NO leaves nothing to serve (HTTP is not offered: http_enable "
                          "is refused); vsftpd also stops here (\"both FTP and HTTP disabled\")")
    if values["listen"] and values["listen_ipv6"]:
        raise ConfigError(at("listen", "listen_ipv6"),
                          "listen and listen_ipv6 are both YES (listen defaults to YES); "
                          "set listen=NO (an IPv6 socket also takes IPv4 on Linux) "
                          "or run two copies")


def _check_type(who: str, name: str, value: object) -> None:
    t = TUNABLES.get(name)
    if t is None:
        raise ConfigError(who, f"unknown option {name!r}{_hint(name)}")
    ok = {
        Kind.BOOL: isinstance(value, bool),
        Kind.INT: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        Kind.STR: value is None or isinstance(value, str),
    }[t.kind]
    if not ok:
        raise ConfigError(who, f"{name!r} takes a {t.kind.value} value, not {value!r}")


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, TUNABLES, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""
