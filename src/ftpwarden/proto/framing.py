"""Control-connection framing, sans I/O: bytes in, complete lines (or TOO_LONG) out.

The I/O layer feeds whatever the socket gave; `LineFramer.feed` returns the
lines that chunk completed, CRLF (or bare LF) removed.  A line that passes the
cap is reported as `TOO_LONG` the moment it does (so the client gets its 500 at
once) and the rest of it is dropped as it arrives, up to its newline: no more
than the cap is ever held.  Telnet IAC sequences are removed in one place,
`strip_telnet`, which `commands.parse_line` applies to every line.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LineFramer", "TOO_LONG", "TooLong", "Frame", "line_cap", "strip_telnet"]


class TooLong:
    """Stands for a line longer than the cap (its bytes were dropped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = TooLong()
Frame = bytes | TooLong


def line_cap(line_max: int | None) -> int:
    """Bytes one line may take with its CRLF: control_line_max (default 4096) + 2.
    Also the StreamReader limit, so the reader buffers about as much."""
    return int(line_max or 4096) + 2


class LineFramer:
    """Splits a byte stream into control lines; holds at most `cap` bytes."""

    __slots__ = ("cap", "_partial", "_discarding")

    def __init__(self, line_max: int | None = None) -> None:
        self.cap = line_cap(line_max)
        self._partial = bytearray()  # the line begun but not ended (< cap bytes)
        self._discarding = False     # inside a TOO_LONG line, waiting for its newline

    @property
    def buffered(self) -> int:
        return len(self._partial)

    @property
    def discarding(self) -> bool:
        return self._discarding

    def feed(self, data: bytes) -> list[Frame]:
        """The frames `data` completes, in order."""
        out: list[Frame] = []
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if self._discarding:
                if nl >= 0:
                    self._discarding = False
                start = end + 1
                continue
            room = self.cap - len(self._partial)
            if end - start >= room:  # the cap is reached before any newline (or at it)
                self._partial.clear()
                self._discarding = nl < 0
                out.append(TOO_LONG)
                start = end + 1
                continue
            self._partial += data[start:end]
            if nl < 0:
                break
            out.append(_unterminate(bytes(self._partial)))
            self._partial.clear()
            start = nl + 1
        return out

    def end(self) -> list[Frame]:
        """The peer closed: an unterminated last line still counts (as readuntil's partial did)."""
        line = bytes(self._partial)
        self._partial.clear()
        self._discarding = False
        return [_unterminate(line)] if line else []

    def unread(self, frames: list[Frame]) -> bytes:
        """Bytes that frame again to `frames` followed by what is held: what a
        handover passes on to the process that reads on."""
        parts = [_terminate(f) if isinstance(f, bytes) else b"X" * self.cap + b"\n" for f in frames]
        # a TOO_LONG whose newline has not come yet goes on without it (a TOO_LONG
        # answered here already: the rest of its line is dropped here too)
        if self._discarding and frames and frames[-1] is TOO_LONG:
            parts[-1] = parts[-1][:-1]
        parts.append(bytes(self._partial))
        return b"".join(parts)


def _terminate(line: bytes) -> bytes:
    """The shortest ending that frames back to `line`: LF, or CRLF when `line` ends
    in CR (the CR it lost came before that one)."""
    return line + (b"\r\n" if line.endswith(b"\r") else b"\n")


def _unterminate(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def strip_telnet(line: bytes) -> bytes:
    """Drop IAC commands (RFC 854): IAC IAC is a literal 0xFF, IAC WILL/WONT/DO/DONT x is 3 bytes."""
    if b"\xff" not in line:
        return line
    out = bytearray()
    i, n = 0, len(line)
    while i < n:
        b = line[i]
        if b != 0xFF:
            out.append(b)
            i += 1
            continue
        nxt = line[i + 1] if i + 1 < n else None
        if nxt == 0xFF:
            out.append(0xFF)
            i += 2
        elif nxt is not None and 251 <= nxt <= 254:
            i += 3
        else:
            i += 2
    return bytes(out)

