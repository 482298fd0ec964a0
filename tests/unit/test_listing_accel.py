"""The optional C listing accelerators (net/_scandir.c, proto/_lsfmt.c) give
exactly what the pure-Python paths give (issue 16): the golden tree, and a
directory of odd names, links, sockets, huge files, far dates and unknown ids."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpwarden.net import jail as jail_mod
from ftpwarden.net import transfer
from ftpwarden.net.jail import Jail
from ftpwarden.proto import actions as A
from ftpwarden.proto import listing
from ftpwarden.proto.listing import Entry, ls_line, ls_lines

from . import test_listing_golden as golden

NOW = 1_780_000_000.25
DAY = 86400


def test_accelerators_are_built() -> None:
    # scripts/test-setup installs a compiler and runs `pip install -e .[test]`,
    # which builds them; without them LIST costs about twice as much
    assert jail_mod._scandir is not None, "net/_scandir.c not built: run scripts/test-setup"
    assert listing._lsfmt is not None, "proto/_lsfmt.c not built: run scripts/test-setup"


@pytest.fixture
def pure_python(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(jail_mod, "_scandir", None)
    monkeypatch.setattr(listing, "_lsfmt", None)
    yield


ACCEL = (jail_mod._scandir, listing._lsfmt)
needs_accel = pytest.mark.skipif(jail_mod._scandir is None or listing._lsfmt is None,
                                 reason="C accelerators not built")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")


def _golden_bytes(root: Path) -> bytes:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(time, "time", lambda: golden.NOW)
        m.setenv("TZ", "Asia/Kolkata")
        time.tzset()
        try:
            root.mkdir()
            golden._tree(root)
            return golden._render_all(root)
        finally:
            m.undo()
            time.tzset()


@needs_accel
@needs_root
def test_golden_tree_both_paths(tmp_path: Path, pure_python: None) -> None:
    slow = _golden_bytes(tmp_path / "py")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jail_mod, "_scandir", ACCEL[0])
        m.setattr(listing, "_lsfmt", ACCEL[1])
        fast = _golden_bytes(tmp_path / "c")
    assert slow == golden.GOLDEN.read_bytes()
    assert fast == slow


# ------------------------------------------------------------------ odd directory

_ODD_NAMES = [b"plain", b"\xc3\xa9t\xc3\xa9", b"\x80raw", b"bad\xff\xfe", b"\xed\xa0\x80surrogate",
              b"\xf0\x9f\x98\x80emoji", b"new\nline", b"cr\rname", b"-l", b" lead", b"trail ",
              b"semi;colon", b".dot", b"..dots", b"x" * 255, b"\xe2\x82\xac" * 80, b"Zed", b"a\tb"]


def _odd_tree(d: Path) -> None:
    base = os.fsencode(d)
    for i, name in enumerate(_ODD_NAMES):
        p = os.path.join(base, name)
        with open(p, "wb") as f:
            f.write(b"x" * i)
    links = [(b"ln_dangling", b"nowhere"), (b"ln_abs", b"/etc/passwd"), (b"ln_space", b"a b"),
             (b"ln_raw", b"t\xff\x80"), (b"ln_long", b"d/" * 2000), (b"ln_semi", b"x;y"),
             (b"ln_emoji\xf0\x9f\x98\x80", b"\xc3\xa9")]
    for name, target in links:
        os.symlink(target, os.path.join(base, name))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(base, b"sock"))
    os.mkfifo(os.path.join(base, b"fifo"))
    os.mkdir(os.path.join(base, b"subdir"))
    huge = os.path.join(base, b"huge")
    with open(huge, "wb") as f:
        for size in (2**44 - 4096, 2**40, 2**33):  # as large as the file system allows
            try:
                f.truncate(size)
                break
            except OSError:
                continue
    for name in (b"hard1", b"hard2"):
        os.link(os.path.join(base, b"plain"), os.path.join(base, name))
    times = {
        b"plain": (int(NOW) - 3600, 0),
        b"-l": (int(NOW), 999_999_999),          # rounds up as a float: Python's view is kept
        b"Zed": (int(NOW) + 1, 0),                # the next second: the future
        b" lead": (int(NOW) - 182 * DAY, 0),      # the six-month edge, both sides
        b"trail ": (int(NOW) - 182 * DAY - 1, 999_999_999),
        b"semi;colon": (-2_000_000_000, 123),     # 1906
        b".dot": (0, 0),
        b"..dots": (-1, 500_000_000),             # just before the epoch
        b"huge": (16_000_000_000, 0),             # year 2477
        b"new\nline": (4_102_444_800, 0),         # 2100-01-01
        b"x" * 255: (int(NOW) - 200 * DAY, 0),
    }
    for name, (sec, ns) in times.items():
        try:
            os.utime(os.path.join(base, name), ns=(sec * 10**9 + ns, sec * 10**9 + ns))
        except OSError:
            pass  # a file system without that range keeps its time
    if os.geteuid() == 0:
        ids = [(b"plain", 54321, 54321), (b"x" * 255, 4_294_967_294, 0), (b"bad\xff\xfe", 0, 99999),
               (b"ln_raw", 70000, 70001), (b"fifo", 1, 2)]
        for name, uid, gid in ids:
            os.lchown(os.path.join(base, name), uid, gid)
        os.chmod(os.path.join(base, b"\x80raw"), 0o7777)
        os.chmod(os.path.join(base, b"Zed"), 0o7000)


def _names(i: int, user: bool) -> str:
    return {(0, True): "root", (0, False): "root", (54321, True): "ünïcode-owner",
            (99999, False): "grp\u20ac"}.get((i, user), str(i))


@needs_accel
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/St_Johns"])
def test_odd_directory_both_paths(tmp_path: Path, tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    _odd_tree(tmp_path / "d")
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        with Jail(str(tmp_path)) as jail:
            fast_entries = jail.listdir("/d")
            fast = _bodies(jail)
            with monkeypatch.context() as m:
                m.setattr(jail_mod, "_scandir", None)
                m.setattr(listing, "_lsfmt", None)
                slow_entries = jail.listdir("/d")
                slow = _bodies(jail)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [e.name for e in slow_entries] == sorted(os.fsdecode(n) for n in os.listdir(tmp_path / "d"))
    assert fast_entries == slow_entries
    for a, b in zip(fast_entries, slow_entries, strict=True):  # == on floats; the types too
        assert [type(x) for x in a] == [type(x) for x in b]
    assert fast == slow
    assert b" -> " + b"d/" * 2000 + b"\r\n" in fast["LIST -a"]


def _bodies(jail: Jail) -> dict[str, bytes]:
    out = {}
    for localtime in (False, True):
        session = golden._session(use_localtime=localtime)
        session.name_of = _names
        cc = SimpleNamespace(session=session)
        for label, kind, hidden in (("LIST", "LIST", False), ("LIST -a", "LIST", True), ("NLST", "NLST", True),
                                    ("MLSD", "MLSD", True)):
            action = A.SendListing(kind=kind, path="/d", given="", pattern="", show_hidden=hidden,
                                   dir_only=kind == "MLSD")
            with pytest.MonkeyPatch.context() as m:
                m.setattr(time, "time", lambda: NOW)
                body = transfer._render_listing(cc, jail, action)  # type: ignore[arg-type]
            out[f"{label} {localtime}"] = body
            out.setdefault(label, body)
    return out


# ------------------------------------------------------------------ the formatter alone

def _owner(uid: int) -> str:
    return {0: "root", 7: "sëven", 8: "\U0001f600x"}.get(uid, str(uid))


@needs_accel
def test_formatter_falls_back_on_what_it_does_not_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        base = Entry("n", stat.S_IFREG | 0o644, 1, 0, 0, 5, NOW - 60, 1, 1)
        odd = [base._replace(uid=-1), base._replace(gid=2**32), base._replace(size=2**70),
               base._replace(mtime=1e300), base._replace(mtime=NOW - 5), base._replace(nlink=-3),
               base._replace(mode=stat.S_IFLNK | 0o777, link_target="t\udcff"),
               base._replace(name="\udc80x", uid=7, gid=8), base._replace(uid=8),
               base._replace(mode=stat.S_IFLNK, link_target=None), base._replace(mode=stat.S_IFLNK, link_target=""),
               base._replace(mode=0o170777, ino=2**64 - 1, dev=2**40), base._replace(ino=-1),
               base._replace(mode=stat.S_IFSOCK | 0o7777, uid=2**40)]
        odd += [base._replace(mtime=t) for t in (-6.3e10, -1e12, 1e14, 6.7e16, 1e17, -1e18, 1e19, float("nan"))]
        for e in odd:
            for facts in (listing.DEFAULT_FACTS, frozenset(listing.SUPPORTED_FACTS)):
                perm = "cdeflmp" if stat.S_ISDIR(e.mode) else "adfrw"
                try:
                    want = [listing.mlsx_facts(e, perm=perm, owner=_owner(e.uid), group=_owner(e.gid), facts=facts)]
                except (OverflowError, OSError, ValueError) as exc:
                    with pytest.raises(type(exc)):
                        listing.mlsx_lines([e], perm_file="adfrw", perm_dir="cdeflmp", owner=_owner,
                                           group=_owner, facts=facts)
                    continue
                assert listing.mlsx_lines(iter([e]), perm_file="adfrw", perm_dir="cdeflmp", owner=_owner,
                                          group=_owner, facts=facts) == want
            for localtime in (False, True):
                try:
                    want = [ls_line(e, NOW, owner=_owner(e.uid), group=_owner(e.gid), localtime=localtime)]
                except (OverflowError, OSError, ValueError) as exc:
                    with pytest.raises(type(exc)):
                        ls_lines([e], NOW, owner=_owner, group=_owner, localtime=localtime)
                    continue
                assert ls_lines([e], NOW, owner=_owner, group=_owner, localtime=localtime) == want
                assert ls_lines(iter([e, e]), NOW, owner=_owner, group=_owner, localtime=localtime) == want * 2
    finally:
        monkeypatch.undo()
        time.tzset()


@needs_accel
def test_formatter_owner_errors_propagate() -> None:
    def boom(uid: int) -> str:
        raise KeyError(uid)

    with pytest.raises(KeyError):
        ls_lines([Entry("n", stat.S_IFREG, 1, 0, 0, 5, NOW, 1, 1)], NOW, owner=boom, group=str)


@needs_accel
def test_scan_refuses_a_file_fd(tmp_path: Path) -> None:
    assert jail_mod._scandir is not None
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(NotADirectoryError):
            jail_mod._scandir.scan(fd, Entry)
    finally:
        os.close(fd)
