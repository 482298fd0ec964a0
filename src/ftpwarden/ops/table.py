"""The live session table: who is connected, doing what, moving how many bytes.

Fed by the log events every mode already produces (through `ops.sink.OpsSink`),
so pooled workers and the isolated broker fill it the same way.  Read with
`snapshot()`: plain dicts, ready for JSON, `/status` and `ftpwarden who`.

What it holds is bounded: at most MAX_ROWS sessions (the oldest idle row makes
room), every text field cut to a fixed length, and a command's argument never
kept for PASS or ACCT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SessionTable", "MAX_ROWS", "shown_command"]

MAX_ROWS = 100_000
TEXT_MAX = 200          # characters of a user name, command or path kept
_SECRET_VERBS = frozenset({"PASS", "ACCT"})


def _cut(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text[:TEXT_MAX])
    return text


def shown_command(line: bytes | str) -> str:
    """The command as shown to an operator: the verb alone for PASS and ACCT
    (in any spelling the session accepts: leading blanks, lower case)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip("\r\n")
    # the verb's letters alone: Telnet bytes or blanks inside it (which the session's
    # parser may drop) do not hide a PASS
    verb = "".join(c for c in text.strip().split(" ", 1)[0] if c.isascii() and c.isalpha()).upper()
    if verb in _SECRET_VERBS:
        return verb
    return _cut(text)


@dataclass(slots=True)
class _Transfer:
    name: str
    direction: str          # "upload" or "download"
    started: float
    bytes: int = 0
    size: int | None = None
    rate: float = 0.0       # bytes/second over the last progress interval
    _mark: tuple[float, int] = (0.0, 0)


@dataclass(slots=True)
class _Row:
    id: str
    client: str
    since: float
    last: float
    mode: str
    user: str = ""
    user_class: str = ""    # empty until login
    command: str = ""
    transfer: _Transfer | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SessionTable:
    """Sessions by id.  Every method is cheap and ignores unknown ids."""

    def __init__(self, mode: str, clock: Callable[[], float] = time.time) -> None:
        self.mode = mode    # "pooled" or "isolated"
        self.clock = clock
        self._rows: dict[str, _Row] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def connect(self, sid: str, client: str) -> None:
        if sid in self._rows:
            return
        if len(self._rows) >= MAX_ROWS:  # a lost disconnect must not grow us without end
            oldest = min(self._rows.values(), key=lambda r: r.last)
            del self._rows[oldest.id]
        now = self.clock()
        self._rows[sid] = _Row(sid, _cut(client), now, now, self.mode)

    def _row(self, sid: str) -> _Row | None:
        row = self._rows.get(sid)
        if row is not None:
            row.last = self.clock()
        return row

    def login(self, sid: str, user: str, user_class: str | None) -> None:
        row = self._row(sid)
        if row is not None:
            row.user, row.user_class = _cut(user), _cut(user_class or "")

    def command(self, sid: str, line: bytes | str) -> None:
        row = self._row(sid)
        if row is not None:
            row.command = shown_command(line)

    def transfer_start(self, sid: str, path: str, upload: bool, size: int | None = None) -> None:
        row = self._row(sid)
        if row is not None:
            now = self.clock()
            row.transfer = _Transfer(_cut(path), "upload" if upload else "download", now, size=size,
                                     _mark=(now, 0))

    def progress(self, sid: str, moved: int) -> None:
        row = self._row(sid)
        if row is None or row.transfer is None or moved < 0:
            return
        t = row.transfer
        now = self.clock()
        then, before = t._mark
        if now > then:
            t.rate = max(0, moved - before) / (now - then)
        t.bytes, t._mark = moved, (now, moved)

    def transfer_end(self, sid: str) -> None:
        row = self._row(sid)
        if row is not None:
            row.transfer = None

    def disconnect(self, sid: str) -> None:
        self._rows.pop(sid, None)

    def ids(self) -> list[str]:
        return list(self._rows)

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per session, oldest first: id, user, class, client, since, idle
        (seconds), command, mode, transfer (None or name, direction, bytes, size, rate)."""
        now = self.clock()
        out = []
        for r in sorted(self._rows.values(), key=lambda r: r.since):
            t = r.transfer
            out.append({
                "id": r.id, "user": r.user, "class": r.user_class, "client": r.client,
                "since": round(r.since, 3), "last": round(r.last, 3), "idle": round(max(0.0, now - r.last), 1),
                "command": r.command, "mode": r.mode,
                "transfer": None if t is None else {
                    "name": t.name, "direction": t.direction, "bytes": t.bytes, "size": t.size,
                    "rate": round(t.rate), "started": round(t.started, 3)},
            })
        return out
