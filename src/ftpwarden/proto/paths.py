"""Virtual paths: cwd + client argument -> normalised absolute path (strings only).

A virtual path is what the client sees: absolute, "/"-separated, rooted at the
user's root, with no ".", ".." or empty components and no trailing slash
(except "/" itself).  Only `net/jail.py` turns one into a real file, and the
kernel (openat2 RESOLVE_IN_ROOT) confines it again there; normalising here
keeps replies, logs and permission checks about one spelling per file.
"""

from __future__ import annotations

import fnmatch

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = ["MAX_PATH", "GLOB_MAX", "resolve", "parent", "basename", "to_relative", "quote_pwd", "name_patterns",
           "matches_any", "name_matches", "names_directory", "split_glob", "glob_match"]

MAX_PATH = 4096  # Linux PATH_MAX; vsftpd caps a command line at 4 KiB too
_BAD_FILE_NAME = 553
GLOB_MAX = 10_000  # names one LIST/NLST pattern may match (the listing fails past it)
_GLOB_CHARS = frozenset("*?[")


def resolve(cwd: str, arg: str) -> str:
    """Join `arg` to `cwd` and normalise; ".." stops at "/".

    "~" and "~/x" mean the user's root (vsftpd with tilde_user_enable=NO:
    everyone's home is "/"); "~name" is an ordinary file name.
    """
    if not cwd.startswith("/"):
        raise LocalProtocolError(f"cwd is not absolute: {cwd!r}")
    if "\0" in arg:
        raise RemoteProtocolError(_BAD_FILE_NAME, "File name not allowed (NUL byte).")
    if len(arg) > MAX_PATH:
        raise RemoteProtocolError(_BAD_FILE_NAME, "File name too long.")
    if arg == "~" or arg.startswith("~/"):
        arg = "/" + arg[1:]
    base = "" if arg.startswith("/") else cwd
    parts: list[str] = []
    for part in f"{base}/{arg}".split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def parent(vpath: str) -> str:
    """"/a/b" -> "/a"; the parent of "/" is "/"."""
    head = vpath.rsplit("/", 1)[0]
    return head or "/"


def basename(vpath: str) -> str:
    """"/a/b" -> "b"; "/" -> "" (the root has no name of its own)."""
    return vpath.rsplit("/", 1)[1]


def to_relative(vpath: str) -> str:
    """"/a/b" -> "a/b", "/" -> ".": the form openat2 takes beneath the root fd."""
    return vpath.lstrip("/") or "."


def quote_pwd(vpath: str) -> str:
    """RFC 959 appendix II: the 257 path is quoted, inner quotes doubled."""
    return '"' + vpath.replace('"', '""') + '"'


def name_patterns(value: str | None) -> tuple[str, ...]:
    """vsftpd's deny_file/hide_file syntax: `{*.mp3,*.mov,.private}`."""
    if not value:
        return ()
    return tuple(p for p in value.strip().strip("{}").split(",") if p)


def matches_any(patterns: tuple[str, ...], vpath: str) -> bool:
    """Does any component of `vpath` match any of the patterns?"""
    return any(fnmatch.fnmatchcase(part, p) for part in vpath.split("/") if part for p in patterns)


def name_matches(patterns: tuple[str, ...], vpath: str) -> bool:
    """Does the last component of `vpath` (the file's own name) match any pattern?"""
    name = basename(vpath)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def names_directory(arg: str) -> bool:
    """Did the client write "name/" (or "name/.")?  The kernel then accepts only a
    directory, and so do we, though `resolve` drops the slash."""
    return arg.endswith(("/", "/.")) and arg.strip("/") not in ("", ".")


def split_glob(arg: str) -> tuple[str, str] | None:
    """"sub/*.txt" -> ("sub/", "*.txt"): the directory part as the client wrote
    it, and the pattern.  None when the last component has no "*", "?" or "[".
    Only the last component is a pattern; the directories before it are literal."""
    head, sep, tail = arg.rpartition("/")
    if not _GLOB_CHARS.intersection(tail):
        return None
    return head + sep, tail


def glob_match(name: str, pattern: str) -> bool:
    """Shell-style match of one name ("*", "?", "[...]"; case-sensitive).  A name
    equal to the pattern matches too, so "a[1]" still finds a file of that name."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)
