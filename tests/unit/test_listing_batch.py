"""The batch renderers (ls_lines, mlsx_lines) give exactly what the one-entry
functions (ls_line, mlsx_facts) give, on random entries (issue 16), with the
C accelerator (proto/_lsfmt.c) and with the pure-Python loops."""

from __future__ import annotations

import itertools
import random
import stat
import time

import pytest

from ftpwarden.proto import listing
from ftpwarden.proto.listing import SUPPORTED_FACTS, Entry, ls_line, ls_lines, mlsx_facts, mlsx_lines

NOW = 1_780_000_000.5


@pytest.fixture(autouse=True, params=["c", "python"])
def renderer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "c" and listing._lsfmt is None:
        pytest.skip("C accelerator not built")
    if request.param == "python":
        monkeypatch.setattr(listing, "_lsfmt", None)
_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
          stat.S_IFBLK, 0)


def _entries(seed: int, n: int = 3000) -> list[Entry]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = rnd.choice(_TYPES)
        mtime = rnd.choice((NOW, NOW + 0.9, NOW + 1, NOW - 182 * 86400, NOW - 182 * 86400 - 1,
                            rnd.uniform(-2e9, 4e9), rnd.uniform(NOW - 3e7, NOW + 1e5),
                            float(rnd.randrange(-10**6, 10**6))))
        target = rnd.choice((None, "t", "a b", "x;y", "")) if kind == stat.S_IFLNK else None
        out.append(Entry(f"n{i} {rnd.random()}", kind | rnd.randrange(0o10000), rnd.randrange(1, 70000),
                         rnd.choice((0, 1000, 2**32 - 2)), rnd.choice((0, 50, 2**32 - 2)),
                         rnd.choice((0, 7, 10**12)), mtime, rnd.randrange(2**40), rnd.randrange(2**20),
                         target))
    return out


def _owner(uid: int) -> str:
    return {0: "root", 1000: "averylongname"}.get(uid, str(uid))


def _group(gid: int) -> str:
    return {0: "wheel", 50: "g"}.get(gid, str(gid))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"])
@pytest.mark.parametrize("localtime", [False, True])
def test_ls_lines_equal_ls_line(tz: str, localtime: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        entries = _entries(len(tz) * 2 + localtime)  # fixed seeds: reproducible
        want = [ls_line(e, NOW, owner=_owner(e.uid), group=_group(e.gid), localtime=localtime)
                for e in entries]
        assert ls_lines(entries, NOW, owner=_owner, group=_group, localtime=localtime) == want
    finally:
        monkeypatch.undo()
        time.tzset()


_SUBSETS = [frozenset(c) for r in (0, 1, 2, 6, 10) for c in itertools.combinations(SUPPORTED_FACTS, r)][:400]


def test_mlsx_lines_equal_mlsx_facts() -> None:
    entries = _entries(7, 400)
    for facts in _SUBSETS + [frozenset(("TYPE", "Size", "UNIX.mode"))]:
        want = [mlsx_facts(e, perm="cdeflmp" if stat.S_ISDIR(e.mode) else "adfrw", owner=_owner(e.uid),
                           group=_group(e.gid), facts=facts) for e in entries]
        got = mlsx_lines(entries, perm_file="adfrw", perm_dir="cdeflmp", owner=_owner, group=_group,
                         facts=facts)
        assert got == want, facts


def test_mlsx_lines_empty_perm_still_listed() -> None:
    (e,) = _entries(3, 1)
    want = mlsx_facts(e, perm="", owner="o", group="g")
    assert mlsx_lines([e], perm_file="", perm_dir="", owner=_owner, group=_group) == [want]
