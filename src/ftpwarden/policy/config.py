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

from .tunables import TUNABLES, Kind, Tunable, Value

__all__ = ["ConfigError", "Config", "default_config", "load_config", "parse_value"]

_SPACE = " \t\r\n\v\f"  # C isspace(), as vsftpd strips; not Python's Unicode set
_BOOLS = {"YES": True, "TRUE": True, "1": True, "NO": False, "FALSE": False, "0": False}
_UINT_MAX = 2**32 - 1  # vsftpd stores numbers in an unsigned int
_PORTS = ("listen_port", "pasv_min_port", "pasv_max_port", "ftp_data_port")


class ConfigError(Exception):
    """A configuration mistake; str() is "WHERE: message", WHERE being FILE:LINE."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class Config:
    """Immutable settings: one attribute per tunable (`cfg.anon_root`).

    `explicit` holds the names given a value other than by the table
    default (by the file, `-o`, default_config() or replace()).
    """

    __slots__ = ("_values", "explicit")
    _values: Mapping[str, Value]
    explicit: frozenset[str]

    def __init__(self, values: Mapping[str, Value], explicit: frozenset[str]) -> None:
        # Callers go through default_config()/load_config(), which validate.
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "explicit", frozenset(explicit))

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
        return Config({**self._values, **changes}, self.explicit | changes.keys())

    def items(self) -> Iterator[tuple[str, Value]]:
        """(name, value) pairs in table order, e.g. for `check-config`."""
        return iter(self._values.items())

    def __reduce__(self) -> tuple[object, ...]:  # copy/pickle despite __setattr__
        return Config, (dict(self._values), self.explicit)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = (f"{n}={v!r}" for n, v in self._values.items() if v != TUNABLES[n].default)
        return f"Config({', '.join(changed)})"


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


def load_config(path: str | None, overrides: Sequence[str] = ()) -> tuple[Config, list[str]]:
    """Read `path` (if any), then each `-o` override ("name=value"), in order.

    Returns the Config and warnings (option set twice in one source, or set
    to a non-default value it has no effect for yet).  Raises ConfigError.
    """
    values = {n: t.default for n, t in TUNABLES.items()}
    where: dict[str, str] = {}  # name -> location of its last setting, in order set
    warnings: list[str] = []
    sources = [_read_lines(path)] if path is not None else []
    sources.append(((f"-o:{i}", line) for i, line in enumerate(overrides, 1)))
    for lines in sources:
        first: dict[str, str] = {}  # duplicates are looked for within one source
        for loc, line in lines:
            setting = _parse_line(loc, line)
            if setting is None:
                continue
            name, value = setting
            if name in first:
                warnings.append(f"{loc}: option {name!r} is set again (first at "
                                f"{first[name]}); the last value wins")
            first[name] = loc
            values[name] = value
            where.pop(name, None)  # re-insert so dict order is "order last set"
            where[name] = loc
    _check_combinations(values, where)
    for name, loc in where.items():
        t = TUNABLES[name]
        if not t.implemented and values[name] != t.default:
            warnings.append(f"{loc}: option {name!r} is recognised but not implemented yet; "
                            "it has no effect")
    return Config(values, frozenset(where)), warnings


def _read_lines(path: str) -> Iterator[tuple[str, str]]:
    """(location, text) per line; split on "\\n" only, like vsftpd."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror or e}") from None
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
