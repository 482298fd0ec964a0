"""setproctitle_enable: a process's status in its title, as `ps` shows it (vsftpd's form).

`ps` shows /proc/PID/cmdline, which the kernel reads from the memory where
exec placed the command line and, right after it, the environment strings.
`take_over()` makes that memory ours once, as vsftpd's Linux code does: it
copies the environment elsewhere for libc (`environ`, and the program name
glibc keeps pointing into argv[0]), then `show()` writes the title there.
Python copied both at start-up, so nothing of ours reads that memory.

Why not prctl(PR_SET_MM_ARG_START/END) on a buffer of our own: it needs
CAP_SYS_RESOURCE, which containers drop (Docker does).  Why not the
`setproctitle` package: it also renames the process (/proc/PID/comm, which
names our processes: ftpwarden-login, ...) with a prctl per call.  Here a title
change is a write to our own memory: no system call, so nothing for the
seccomp allow-list, and it works after the privilege drop and the chroot.
`take_over()` reads /proc/self/stat: call it before either.

A forked child inherits the area (its own copy); each process shows its own
title.  Disabled (the default), nothing is taken over and `show()` returns at
once.  The kernel shows the area up to the first NUL when the byte ending the
original arguments is not NUL (its setproctitle rule): `show()` keeps it so.
"""

from __future__ import annotations

import ctypes
from typing import Any, TypeVar, cast

__all__ = ["take_over", "show", "active", "printable", "titled", "CommandTitles", "PREFIX"]

PREFIX = "ftpwarden: "
_MIN_ROOM = 32  # vsftpd's too: less room than this and no title is shown

_area: tuple[int, int, int] | None = None  # (start, size, offset of the arguments' last byte)
_kept: list[object] = []  # the C copies of the environment: libc points at them for good


def active() -> bool:
    return _area is not None


def take_over() -> bool:
    """Make the exec-time argument and environment strings our title's room (once).
    False where it cannot be done (no /proc, a layout we do not know)."""
    global _area
    if _area is not None:
        return True
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(v) for v in fields[45:49])
    except (OSError, ValueError, IndexError):
        return False
    if not 0 < arg_start < arg_end:
        return False
    end = env_end if env_start == arg_end and env_end > env_start else arg_end
    if end - arg_start < _MIN_ROOM:
        return False
    try:
        libc = ctypes.CDLL(None)
        if end != arg_end:
            _move_environment(libc, env_start, env_end)
        _move_program_name(libc, arg_start, arg_end)
    except (OSError, ValueError):
        return False
    original = ctypes.string_at(arg_start, arg_end - arg_start).rstrip(b"\0").replace(b"\0", b" ")
    _area = (arg_start, end - arg_start, arg_end - 1 - arg_start)
    _write(original)
    return True


def show(text: str) -> None:
    """The title becomes "ftpwarden: `text`" (cut to the room there is); a no-op unless taken over."""
    if _area is not None:
        _write((PREFIX + printable(text)).encode("utf-8", "replace"))


def printable(text: str) -> str:
    """What a client sent, safe for a title: no control character (vsftpd puts '?')."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _write(title: bytes) -> None:
    assert _area is not None
    start, size, last = _area
    title = title[:size - 1]
    ctypes.memset(start, 0, size)
    ctypes.memmove(start, title, len(title))
    if len(title) < last:  # the kernel's sign that the title, not the arguments, is shown
        ctypes.memset(start + last, 0x20, 1)


def _move_environment(libc: ctypes.CDLL, env_start: int, env_end: int) -> None:
    """libc's `environ` gets copies of the strings it points at inside the area."""
    environ = ctypes.c_void_p.in_dll(libc, "environ")
    if not environ.value:
        return
    table = ctypes.cast(environ.value, ctypes.POINTER(ctypes.c_char_p))
    entries: list[bytes] = []
    while (entry := table[len(entries)]) is not None:
        entries.append(entry)
    copies = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)  # ctypes owns copies of the bytes
    _kept.append(copies)
    _kept.extend(entries)
    environ.value = ctypes.addressof(copies)


def _move_program_name(libc: ctypes.CDLL, arg_start: int, arg_end: int) -> None:
    """glibc's program_invocation_name(s) point into argv[0] (syslog's default ident)."""
    for name in ("program_invocation_name", "program_invocation_short_name"):
        try:
            pointer = ctypes.c_void_p.in_dll(libc, name)
        except ValueError:  # not glibc
            continue
        if pointer.value and arg_start <= pointer.value < arg_end:
            copy = ctypes.create_string_buffer(ctypes.string_at(pointer.value))
            _kept.append(copy)
            pointer.value = ctypes.addressof(copy)


class CommandTitles:
    """In front of a session's EventLog: each command becomes the title, as vsftpd's
    post-login process shows it ("IP/user: RETR file"), and "IP/user: IDLE" once
    its final reply is out.  For a process that hosts one session only."""

    def __init__(self, events: Any, who: str) -> None:
        self._events = events
        self._who = who
        show(f"{who}: IDLE")

    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        verb, _, arg = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
        shown = verb if verb.upper() in _SECRET else f"{verb} {arg}" if arg else verb
        show(f"{self._who}: {shown}")
        self._events.command(session, remote_ip, user, line)

    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        if data[:1] in (b"2", b"3", b"4", b"5"):  # final: the command is done (1xx: a transfer runs)
            show(f"{self._who}: IDLE")
        self._events.reply(session, remote_ip, user, data)

    def __getattr__(self, name: str) -> Any:  # every other event goes through as it is
        return getattr(self._events, name)


_SECRET = frozenset({"PASS", "ACCT"})  # their argument never reaches a title

Events = TypeVar("Events")


def titled(events: Events, who: str) -> Events:
    """`events` with CommandTitles in front: every event still reaches it."""
    return cast(Events, CommandTitles(events, who))
