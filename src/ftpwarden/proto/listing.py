"""Directory listings from stat-like records: LIST, NLST, MLSD/MLST, MDTM.

Pure functions: the caller passes the records, names and "now"; nothing here
reads the clock, the locale or the file system.  LIST lines copy vsftpd's
ls.c (build_dir_line) field for field, because clients parse them.
"""

from __future__ import annotations

import calendar
import functools
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

try:  # optional C accelerator of ls_lines (setup.py): the same lines, or None to fall back
    from . import _lsfmt
except ImportError:
    _lsfmt = None  # type: ignore[assignment]

__all__ = [
    "Entry", "ls_line", "ls_lines", "mlsx_lines", "mlsx_facts", "perm_fact", "nlst_line", "parse_list_args",
    "mdtm", "parse_mfmt_time", "visible", "DEFAULT_FACTS", "SUPPORTED_FACTS",
]

# Fixed English names: a server's locale must not change what clients parse.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 60 * 60 * 24 * 182  # vsftpd's cut-off for "Mmm dd HH:MM"

# Order here is the order of facts in every MLSx line and in FEAT.
SUPPORTED_FACTS: tuple[str, ...] = (
    "type", "size", "modify", "perm", "unique",
    "unix.mode", "unix.owner", "unix.group", "unix.uid", "unix.gid",
)
DEFAULT_FACTS: frozenset[str] = frozenset(
    ("type", "size", "modify", "perm", "unique", "unix.mode"))


class Entry(NamedTuple):
    """What an lstat of one directory entry gives (plus a symlink's target).

    A NamedTuple, not a frozen dataclass: a listing makes one per file, and a
    tuple is several times cheaper to build.
    """

    name: str
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime: float
    ino: int
    dev: int
    link_target: str | None = None

    @classmethod
    def from_stat(cls, name: str, st: os.stat_result, link_target: str | None = None) -> Entry:
        return cls(name, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                   st.st_mtime, st.st_ino, st.st_dev, link_target)


# ------------------------------------------------------------------ LIST

_TYPE_CHAR = {
    stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
}


@functools.lru_cache(maxsize=512)  # a directory has few distinct modes
def _mode_string(mode: int) -> str:
    # vsftpd's vsf_sysutil_statbuf_get_perms: "?" for an unknown type.
    chars = [_TYPE_CHAR.get(stat.S_IFMT(mode), "?")]
    for bit, ch in ((stat.S_IRUSR, "r"), (stat.S_IWUSR, "w"), (stat.S_IXUSR, "x"),
                    (stat.S_IRGRP, "r"), (stat.S_IWGRP, "w"), (stat.S_IXGRP, "x"),
                    (stat.S_IROTH, "r"), (stat.S_IWOTH, "w"), (stat.S_IXOTH, "x")):
        chars.append(ch if mode & bit else "-")
    for bit, pos, on, off in ((stat.S_ISUID, 3, "s", "S"), (stat.S_ISGID, 6, "s", "S"),
                              (stat.S_ISVTX, 9, "t", "T")):
        if mode & bit:
            chars[pos] = on if chars[pos] == "x" else off
    return "".join(chars)


def _ls_date(mtime: float, now: float, localtime: bool) -> str:
    # vsftpd compares whole seconds: any future time, or older than 182 days,
    # shows the year instead of the time.
    secs, now_secs = int(mtime // 1), int(now // 1)
    recent = not (secs > now_secs or now_secs - secs > _SIX_MONTHS)
    return _date_text(secs // 60, recent, _zone(localtime))


def _zone(localtime: bool) -> tuple[str, ...] | None:
    """The cache key of local time: the zone in force (TZ may change, e.g. in tests)."""
    return time.tzname if localtime else None


@functools.lru_cache(maxsize=4096)  # files of one directory share minutes
def _date_text(minute: int, recent: bool, zone: tuple[str, ...] | None) -> str:
    secs = minute * 60
    tm = time.localtime(secs) if zone is not None else time.gmtime(secs)
    month = _MONTHS[tm.tm_mon - 1]
    if not recent:
        return f"{month} {tm.tm_mday:02d}  {tm.tm_year}"
    return f"{month} {tm.tm_mday:02d} {tm.tm_hour:02d}:{tm.tm_min:02d}"


def ls_line(e: Entry, now: float, *, owner: str, group: str, localtime: bool = False) -> str:
    """One `ls -l` line without CRLF, in vsftpd's exact layout:

    mode, nlink right-aligned in 4, owner and group left-aligned in 8,
    size right-aligned in 8, date, name ("name -> target" for symlinks).
    """
    name = e.name
    if stat.S_ISLNK(e.mode) and e.link_target is not None:
        name = f"{name} -> {e.link_target}"
    return (f"{_mode_string(e.mode)} {e.nlink:>4} {owner:<8} {group:<8} "
            f"{e.size:>8} {_ls_date(e.mtime, now, localtime)} {name}")


def _utc_recent(minute: int, days: dict[int, str]) -> str:
    """_date_text(minute, True, None), with "Mmm dd " taken from `days`."""
    day, left = divmod(minute, 1440)
    head = days.get(day) or days.setdefault(day, _date_text(day * 1440, True, None)[:7])
    return f"{head}{left // 60:02d}:{left % 60:02d}"


def ls_lines(entries: Iterable[Entry], now: float, *, owner: Callable[[int], str],
             group: Callable[[int], str], localtime: bool = False) -> list[str]:
    """`ls_line` of each entry, byte for byte, for a whole directory.

    A listing of 10,000 files repeats a few modes, owners and minutes: each
    is worked out once here, not per line (issue 16).
    """
    now_secs = int(now // 1)
    if _lsfmt is not None:
        if not isinstance(entries, (list, tuple)):  # read once: the Python loop may need it again
            entries = list(entries)
        fast: list[str] | None = _lsfmt.ls_lines(entries, now_secs, localtime, owner, group)
        if fast is not None:
            return fast
    oldest = now_secs - _SIX_MONTHS
    zone = _zone(localtime)
    modes: dict[int, str] = {}
    ids: dict[int, str] = {}
    recent_dates: dict[int, str] = {}
    old_dates: dict[int, str] = {}
    days: dict[int, str] = {}
    out: list[str] = []
    append = out.append
    for name, mode, nlink, uid, gid, size, mtime, _ino, _dev, target in entries:
        m = modes.get(mode)
        if m is None:
            m = modes[mode] = _mode_string(mode)
        key = uid << 32 | gid
        og = ids.get(key)
        if og is None:
            og = ids[key] = f"{owner(uid):<8} {group(gid):<8}"
        secs = int(mtime // 1)
        minute = secs // 60
        recent = oldest <= secs <= now_secs  # the negation of _ls_date's test
        if localtime:  # an offset may change at any minute (DST)
            dates = recent_dates if recent else old_dates
            date = dates.get(minute) or dates.setdefault(minute, _date_text(minute, recent, zone))
        elif recent:  # UTC: "Mmm dd " once per day, the time of day by arithmetic
            date = recent_dates.get(minute) or recent_dates.setdefault(minute, _utc_recent(minute, days))
        else:
            day = minute // 1440
            date = old_dates.get(day) or old_dates.setdefault(day, _date_text(day * 1440, False, None))
        if target is not None and mode & 0o170000 == stat.S_IFLNK:
            name = f"{name} -> {target}"
        append(f"{m} {nlink:>4} {og} {size:>8} {date} {name}")
    return out


def nlst_line(e: Entry) -> str:
    return e.name


def visible(name: str, *, show_hidden: bool) -> bool:
    """Dotfiles only with -a / force_dot_files; "." and ".." never (vsftpd)."""
    if name in (".", ".."):
        return False
    return show_hidden or not name.startswith(".")


_FLAGS = re.compile(r"-([A-Za-z0-9]+)(?: +|$)")  # "-1" too (ncftpls -1)


def parse_list_args(arg: str) -> tuple[set[str], str]:
    """Split LIST/NLST's argument into ls flags and a path.

    Clients send ls options ("-la", "-a -l dir").  Each leading token that is
    "-" plus letters or digits, followed by a space or the end, is a flag group;
    the rest is the path.  So "-foo.txt" or "-" are paths, and a file really
    named "-l" cannot be listed by name (as with vsftpd).
    """
    flags: set[str] = set()
    pos = 0
    while m := _FLAGS.match(arg, pos):
        flags.update(m.group(1))
        pos = m.end()
    return flags, arg[pos:]


# ------------------------------------------------------------------ MLSx, MDTM, MFMT

def _utc_stamp(mtime: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(int(mtime // 1)))


def mdtm(mtime: float) -> str:
    """"YYYYMMDDHHMMSS" in UTC (RFC 3659 time-val) for the 213 MDTM reply."""
    return _utc_stamp(mtime)


_MFMT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})(?:\.([0-9]{1,9}))?")


def parse_mfmt_time(s: str) -> float:
    """"YYYYMMDDHHMMSS[.fff]" (UTC) -> epoch seconds; ValueError on anything else."""
    m = _MFMT.fullmatch(s)
    if m is None:
        raise ValueError(f"not a time-val: {s!r}")
    year, mon, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    if not (1 <= mon <= 12 and 1 <= day <= calendar.monthrange(year, mon)[1]
            and hour <= 23 and minute <= 59 and sec <= 59):
        raise ValueError(f"no such time: {s!r}")
    whole = calendar.timegm((year, mon, day, hour, minute, sec, 0, 0, 0))
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    return whole + frac


def perm_fact(is_dir: bool, *, can_read: bool, can_write: bool, can_delete: bool,
              can_rename: bool, can_mkdir: bool, can_list: bool) -> str:
    """RFC 3659 7.5.5 perm letters, in the RFC's alphabetical order.

    Files: a (APPE) d (DELE) f (RNFR) r (RETR) w (STOR).
    Dirs:  c (STOR inside) d (RMD) e (CWD) f (RNFR) l (LIST) m (MKD) p (delete contents).
    """
    pairs: tuple[tuple[str, bool], ...]
    if is_dir:
        pairs = (("c", can_write), ("d", can_delete), ("e", can_read), ("f", can_rename),
                 ("l", can_list), ("m", can_mkdir), ("p", can_delete))
    else:
        pairs = (("a", can_write), ("d", can_delete), ("f", can_rename),
                 ("r", can_read), ("w", can_write))
    return "".join(letter for letter, ok in pairs if ok)


def mlsx_lines(entries: Iterable[Entry], *, perm_file: str, perm_dir: str,
               owner: Callable[[int], str], group: Callable[[int], str],
               facts: frozenset[str] = DEFAULT_FACTS) -> list[str]:
    """`mlsx_facts` of each entry, byte for byte, for MLSD of a whole directory.

    The selection of facts and the perm letters are decided once; stamps are
    built from a per-minute prefix (issue 16).
    """
    wanted = {f.lower() for f in facts}
    w_type, w_size, w_modify, w_perm, w_unique, w_mode, w_owner, w_group, w_uid, w_gid = (
        f in wanted for f in SUPPORTED_FACTS)
    if w_perm:
        perm_file, perm_dir = f"perm={perm_file};", f"perm={perm_dir};"
    else:
        perm_file = perm_dir = ""
    if _lsfmt is not None:
        if not isinstance(entries, (list, tuple)):  # read once: the Python loop may need it again
            entries = list(entries)
        bits = sum(1 << i for i, f in enumerate(SUPPORTED_FACTS) if f in wanted)
        fast: list[str] | None = _lsfmt.mlsx_lines(entries, bits, perm_file, perm_dir, owner, group)
        if fast is not None:
            return fast
    minutes: dict[int, str] = {}
    modes: dict[int, str] = {}
    owners: dict[int, str] = {}
    groups: dict[int, str] = {}
    out: list[str] = []
    append = out.append
    for name, mode, _nlink, uid, gid, size, mtime, ino, dev, target in entries:
        fmt = mode & 0o170000
        is_dir = fmt == stat.S_IFDIR
        kind = size_fact = modify = mode_fact = owner_fact = group_fact = ""
        if w_type:
            kind = ("type=dir;" if is_dir else "type=file;" if fmt == stat.S_IFREG
                    else f"type={_type_fact(mode, target)};")
        if w_size and not is_dir:
            size_fact = f"size={size};"
        if w_modify:
            secs = int(mtime // 1)
            minute = secs // 60
            head = minutes.get(minute)
            if head is None:
                head = minutes[minute] = time.strftime("%Y%m%d%H%M", time.gmtime(minute * 60))
            modify = f"modify={head}{secs - minute * 60:02d};"
        if w_mode:
            mode_fact = modes.get(mode) or modes.setdefault(mode, f"unix.mode=0{stat.S_IMODE(mode):03o};")
        if w_owner:
            owner_fact = owners.get(uid) or owners.setdefault(uid, f"unix.owner={owner(uid)};")
        if w_group:
            group_fact = groups.get(gid) or groups.setdefault(gid, f"unix.group={group(gid)};")
        append(f"{kind}{size_fact}{modify}{perm_dir if is_dir else perm_file}"
               f"{f'unique={dev:x}U{ino:x};' if w_unique else ''}{mode_fact}{owner_fact}{group_fact}"
               f"{f'unix.uid={uid};' if w_uid else ''}{f'unix.gid={gid};' if w_gid else ''} {name}")
    return out


def _type_fact(mode: int, link_target: str | None) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        # RFC 3659 7.7.4's example form, which clients parse (lftp, FileZilla,
        # WinSCP) and pure-ftpd and proftpd send.  The target is the link's own
        # text, as LIST shows it; one that would break the line's syntax (";",
        # a space, CR/LF) is left out, as pure-ftpd does.
        if link_target and not _FACT_BREAKERS.intersection(link_target):
            return "OS.unix=slink:" + link_target
        return "OS.unix=slink"
    kinds = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk"}
    return "OS.unix=" + kinds.get(stat.S_IFMT(mode), "unknown")


_FACT_BREAKERS = frozenset("; \r\n")


def mlsx_facts(e: Entry, *, perm: str, owner: str, group: str,
               facts: frozenset[str] = DEFAULT_FACTS, type_override: str | None = None) -> str:
    """One RFC 3659 entry: "fact=value;...; name" with the selected facts only.

    `type_override` is "cdir"/"pdir" for MLSD's "." and "..".  No size for
    directories (RFC 3659 7.5.7: size applies to non-directory types).
    """
    wanted = {f.lower() for f in facts}
    values = {
        "type": type_override or _type_fact(e.mode, e.link_target),
        "size": None if stat.S_ISDIR(e.mode) else str(e.size),
        "modify": _utc_stamp(e.mtime),
        "perm": perm,
        "unique": f"{e.dev:x}U{e.ino:x}",
        "unix.mode": f"0{stat.S_IMODE(e.mode):03o}",
        "unix.owner": owner,
        "unix.group": group,
        "unix.uid": str(e.uid),
        "unix.gid": str(e.gid),
    }
    head = "".join(f"{f}={values[f]};" for f in SUPPORTED_FACTS
                   if f in wanted and values[f] is not None)
    return f"{head} {e.name}"
