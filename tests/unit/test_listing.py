"""Listing lines: fixed records and a fixed "now" give exact strings."""

from __future__ import annotations

import calendar
import os
import stat
import time

import pytest

from ftpwarden.proto import listing
from ftpwarden.proto.listing import Entry

NOW = calendar.timegm((2026, 11, 26, 12, 34, 56))
DAY = 24 * 60 * 60


def entry(name: str = "name", *, mode: int = stat.S_IFREG | 0o644, nlink: int = 1,
          size: int = 1234, mtime: float = NOW - 3600, target: str | None = None) -> Entry:
    return Entry(name, mode, nlink, 1000, 1000, size, mtime, 0x12, 0x803, target)


def ls(e: Entry, **kw) -> str:
    return listing.ls_line(e, NOW, owner=kw.pop("owner", "1000"), group=kw.pop("group", "1000"), **kw)


# ------------------------------------------------------------------ LIST lines

def test_recent_file_matches_vsftpd_layout() -> None:
    assert ls(entry()) == "-rw-r--r--    1 1000     1000         1234 Nov 26 11:34 name"


@pytest.mark.parametrize("mtime,date", [
    (NOW, "Nov 26 12:34"),                                         # now: time
    (NOW - 182 * DAY, "May 28 12:34"),                             # exactly 182 days: time
    (NOW - 182 * DAY - 1, "May 28  2026"),                         # one second more: year
    (calendar.timegm((2025, 1, 5, 8, 9, 0)), "Jan 05  2025"),      # old: zero-padded day, year
    (NOW + 1, "Nov 26  2026"),                                     # any future time: year
    (NOW + 0.9, "Nov 26 12:34"),                                   # same whole second: not future
    (calendar.timegm((1999, 12, 31, 23, 59, 59)), "Dec 31  1999"),
])
def test_date_column(mtime: float, date: str) -> None:
    assert ls(entry(mtime=mtime)) == f"-rw-r--r--    1 1000     1000         1234 {date} name"


def test_localtime_uses_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "XST-02")  # POSIX TZ: two hours east of UTC
    time.tzset()
    try:
        assert ls(entry(), localtime=True).endswith(" Nov 26 13:34 name")
        assert ls(entry(), localtime=False).endswith(" Nov 26 11:34 name")
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("mode,text", [
    (stat.S_IFDIR | 0o2775, "drwxrwsr-x"),
    (stat.S_IFDIR | 0o1777, "drwxrwxrwt"),
    (stat.S_IFDIR | 0o1776, "drwxrwxrwT"),
    (stat.S_IFDIR | 0o2765, "drwxrwSr-x"),
    (stat.S_IFREG | 0o4755, "-rwsr-xr-x"),
    (stat.S_IFREG | 0o4644, "-rwSr--r--"),
    (stat.S_IFREG | 0o7777, "-rwsrwsrwt"),
    (stat.S_IFREG | 0o000, "----------"),
    (stat.S_IFIFO | 0o600, "prw-------"),
    (stat.S_IFSOCK | 0o755, "srwxr-xr-x"),
    (stat.S_IFCHR | 0o666, "crw-rw-rw-"),
    (stat.S_IFBLK | 0o660, "brw-rw----"),
    (0o644, "?rw-r--r--"),
])
def test_mode_string(mode: int, text: str) -> None:
    assert ls(entry(mode=mode)).startswith(text + " ")


def test_dir_with_names_and_wide_fields() -> None:
    e = entry("pub", mode=stat.S_IFDIR | 0o2775, nlink=12345, size=123456789012,
              mtime=calendar.timegm((2024, 2, 29, 0, 0, 0)))
    assert ls(e, owner="ftp", group="verylonggroup") == (
        "drwxrwsr-x 12345 ftp      verylonggroup 123456789012 Feb 29  2024 pub")


def test_symlink_shows_target() -> None:
    e = entry("etc", mode=stat.S_IFLNK | 0o777, size=4, target="/etc")
    assert ls(e) == "lrwxrwxrwx    1 1000     1000            4 Nov 26 11:34 etc -> /etc"


def test_nlst_line_is_the_name() -> None:
    assert listing.nlst_line(entry("a b.txt")) == "a b.txt"


# ------------------------------------------------------------------ arguments, visibility

@pytest.mark.parametrize("arg,flags,path", [
    ("", set(), ""),
    ("-l", {"l"}, ""),
    ("-la", {"l", "a"}, ""),
    ("-al dir", {"a", "l"}, "dir"),
    ("-a -l dir", {"a", "l"}, "dir"),
    ("-aL", {"a", "L"}, ""),
    ("dir", set(), "dir"),
    ("-foo.txt", set(), "-foo.txt"),
    ("-", set(), "-"),
    ("-l -foo.txt", {"l"}, "-foo.txt"),
    ("-l my file", {"l"}, "my file"),
    ("dir -l", set(), "dir -l"),
    ("-la/x", set(), "-la/x"),
    ("-1", {"1"}, ""),  # ncftpls -1 sends NLST -1 (vsftpd lists the directory)
    ("-1 sub", {"1"}, "sub"),
])
def test_parse_list_args(arg: str, flags: set[str], path: str) -> None:
    assert listing.parse_list_args(arg) == (flags, path)


@pytest.mark.parametrize("name,hidden,shown", [
    ("a", False, True), (".profile", False, False), (".profile", True, True),
    (".", True, False), ("..", True, False), ("..x", True, True), ("..x", False, False),
])
def test_visible(name: str, hidden: bool, shown: bool) -> None:
    assert listing.visible(name, show_hidden=hidden) is shown


# ------------------------------------------------------------------ MDTM, MFMT

def test_mdtm_is_utc_whole_seconds() -> None:
    assert listing.mdtm(NOW + 0.999) == "20261126123456"
    assert listing.mdtm(0) == "19700101000000"


@pytest.mark.parametrize("text,value", [
    ("20261126123456", NOW),
    ("20261126123456.5", NOW + 0.5),
    ("20240229000000", calendar.timegm((2024, 2, 29, 0, 0, 0))),
    ("19700101000000", 0.0),
])
def test_parse_mfmt_time(text: str, value: float) -> None:
    assert listing.parse_mfmt_time(text) == pytest.approx(value)
    assert listing.mdtm(listing.parse_mfmt_time(text)) == text[:14]


@pytest.mark.parametrize("text", [
    "", "2026112612345", "202611261234567", "2026-11-26 12:34", "20261326123456",
    "20261100123456", "20230229000000", "20261126243456", "20261126126056",
    "20261126123460", "20261126123456.", "20261126123456.x", " 20261126123456",
    "２0261126123456",  # noqa: RUF001 - a fullwidth digit, which int() would accept
])
def test_parse_mfmt_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        listing.parse_mfmt_time(text)


# ------------------------------------------------------------------ MLSx

ALL = frozenset(listing.SUPPORTED_FACTS)


def test_mlsx_default_facts() -> None:
    e = entry("name", size=12, mtime=NOW)
    assert listing.mlsx_facts(e, perm="adfrw", owner="alice", group="staff") == (
        "type=file;size=12;modify=20261126123456;perm=adfrw;unique=803U12;unix.mode=0644; name")


def test_mlsx_all_facts_in_fixed_order() -> None:
    e = entry("x y", size=12, mtime=NOW, mode=stat.S_IFREG | 0o4755)
    assert listing.mlsx_facts(e, perm="r", owner="alice", group="staff", facts=ALL) == (
        "type=file;size=12;modify=20261126123456;perm=r;unique=803U12;unix.mode=04755;"
        "unix.owner=alice;unix.group=staff;unix.uid=1000;unix.gid=1000; x y")


def test_mlsx_selection_and_dir() -> None:
    e = entry("pub", mode=stat.S_IFDIR | 0o755, size=4096, mtime=NOW)
    got = listing.mlsx_facts(e, perm="el", owner="o", group="g",
                             facts=frozenset({"size", "type", "unix.gid"}))
    assert got == "type=dir;unix.gid=1000; pub"  # no size for a directory


def test_mlsx_type_override_and_no_facts() -> None:
    e = entry(".", mode=stat.S_IFDIR | 0o755)
    assert listing.mlsx_facts(e, perm="", owner="o", group="g", facts=frozenset({"type"}),
                              type_override="cdir") == "type=cdir; ."
    assert listing.mlsx_facts(e, perm="", owner="o", group="g", facts=frozenset()) == " ."


@pytest.mark.parametrize("mode,kind", [
    (stat.S_IFLNK | 0o777, "OS.unix=slink"), (stat.S_IFIFO | 0o600, "OS.unix=fifo"),
    (stat.S_IFSOCK | 0o600, "OS.unix=socket"), (stat.S_IFCHR | 0o600, "OS.unix=chr"),
])
def test_mlsx_special_types(mode: int, kind: str) -> None:
    got = listing.mlsx_facts(entry(mode=mode), perm="", owner="o", group="g",
                             facts=frozenset({"type"}))
    assert got == f"type={kind}; name"


def test_mlsx_uses_modify_utc_even_with_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "XST-02")
    time.tzset()
    try:
        got = listing.mlsx_facts(entry(mtime=NOW), perm="", owner="o", group="g",
                                 facts=frozenset({"modify"}))
        assert got == "modify=20261126123456; name"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_supported_facts_cover_defaults() -> None:
    assert set(listing.SUPPORTED_FACTS) >= listing.DEFAULT_FACTS
    assert listing.SUPPORTED_FACTS[0] == "type"


def test_entry_from_stat(tmp_path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    st = os.lstat(p)
    e = Entry.from_stat("f", st, None)
    assert (e.name, e.size, e.ino, e.dev, e.mode, e.mtime) == (
        "f", 3, st.st_ino, st.st_dev, st.st_mode, st.st_mtime)


# ------------------------------------------------------------------ perm letters

def _perm(is_dir: bool, **over: bool) -> str:
    kw = dict(can_read=True, can_write=True, can_delete=True, can_rename=True,
              can_mkdir=True, can_list=True)
    kw.update(over)
    return listing.perm_fact(is_dir, **kw)


@pytest.mark.parametrize("is_dir,over,letters", [
    (False, {}, "adfrw"),
    (True, {}, "cdeflmp"),
    (False, dict(can_write=False, can_delete=False, can_rename=False), "r"),
    (False, dict(can_read=False), "adfw"),
    (True, dict(can_write=False, can_delete=False, can_rename=False, can_mkdir=False), "el"),
    (True, dict(can_list=False, can_mkdir=False), "cdefp"),
    (False, dict(can_read=False, can_write=False, can_delete=False, can_rename=False), ""),
])
def test_perm_fact(is_dir: bool, over: dict, letters: str) -> None:
    assert _perm(is_dir, **over) == letters


@pytest.mark.parametrize("target,kind", [
    ("data.txt", "OS.unix=slink:data.txt"),
    ("../up/x", "OS.unix=slink:../up/x"),
    ("/abs/in/jail", "OS.unix=slink:/abs/in/jail"),
    # a target that would break the line's syntax is left out, never half-sent
    ("a;b", "OS.unix=slink"), ("a b", "OS.unix=slink"), ("a\r\nb", "OS.unix=slink"), ("", "OS.unix=slink"),
])
def test_mlsx_symlink_carries_its_target(target: str, kind: str) -> None:
    e = entry(mode=stat.S_IFLNK | 0o777)._replace(link_target=target)
    got = listing.mlsx_facts(e, perm="", owner="o", group="g", facts=frozenset({"type", "size"}))
    assert got == f"type={kind};size={e.size}; name"
