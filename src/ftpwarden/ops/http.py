"""The metrics listener: GET /metrics (Prometheus text) and /status (HTML), nothing else.

A deliberately small HTTP/1.x server on asyncio: one request per connection, a
request head of at most HEAD_MAX bytes read within READ_TIMEOUT, only GET and HEAD,
at most MAX_CONNECTIONS at once; the answer closes the connection.  /metrics is
public on its listen address like any exporter (no user names or addresses in it);
/status names users and addresses, so it is served only to `Access.allowed` peers.
It parses untrusted bytes: in isolated mode it runs in the unprivileged
`ftpwarden-ops` process (ops/process.py), never in a root process.
"""

from __future__ import annotations

import asyncio
import collections
import html
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from .access import Access
from .metrics import registry_for, render

__all__ = ["Feed", "StatusServer", "parse_listen"]

log = logging.getLogger("ftpwarden.ops")

HEAD_MAX = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
HISTORY_STEP = 5.0      # seconds between throughput samples
HISTORY_POINTS = 120    # ten minutes of them
STATUS_ROWS = 500       # sessions listed on /status at most

Source = Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]


def parse_listen(value: str) -> tuple[str, int]:
    """metrics_listen's ADDR:PORT ([v6]:PORT) -> (host, port); ValueError with a reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: want ADDR:PORT, e.g. 127.0.0.1:9121")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"{value!r}: an address is needed (127.0.0.1, or 0.0.0.0 for every one)")
    return host, int(port)


class Feed:
    """What the pages show: `source()` (metrics state, session snapshot) and a throughput history."""

    def __init__(self, source: Source, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock
        self.registry = registry_for(source)
        self.history: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=HISTORY_POINTS + 1)

    def sample(self) -> None:
        """Bytes moved so far: finished transfers plus the running ones' progress."""
        state, sessions = self.source()
        moved = {"upload": int(state["bytes"]["in"]), "download": int(state["bytes"]["out"])}
        for row in sessions:
            t = row.get("transfer") or {}
            if t.get("direction") in moved:
                moved[t["direction"]] += int(t.get("bytes") or 0)
        self.history.append((self.clock(), moved["upload"], moved["download"]))

    def metrics(self) -> bytes:
        return render(self.registry)

    def status(self) -> bytes:
        state, sessions = self.source()
        return _status_page(state, sessions, list(self.history), self.clock()).encode()


# ------------------------------------------------------------------ the page

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
progress{width:12em;height:1em}.muted{color:#777}
.chart{display:flex;align-items:flex-end;gap:2px;height:80px;border-bottom:1px solid #999;max-width:860px}
.chart div{flex:none;width:5px;display:flex;flex-direction:column;justify-content:flex-end}
.chart span{display:block}.in{background:#2a7ae2}.out{background:#e2892a}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dd{margin:0}
"""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _transfer_cell(t: dict[str, Any] | None) -> str:
    if not t:
        return '<td class="muted">-</td><td></td>'
    e = html.escape
    size = t.get("size")
    moved = int(t.get("bytes") or 0)
    if size:
        bar = (f'<progress class="transfer-progress" value="{moved}" max="{int(size)}">'
               f'{moved * 100 // int(size)}%</progress>')
    else:  # size unknown (upload, or a download not yet measured): an indeterminate bar
        bar = '<progress class="transfer-progress">running</progress>'
    arrow = "&#8593;" if t.get("direction") == "upload" else "&#8595;"
    return (f'<td>{arrow} {e(str(t.get("name", "")))}</td>'
            f'<td>{bar} {e(_size(moved))} at {e(_size(float(t.get("rate") or 0)))}/s</td>')


def _chart(history: list[tuple[float, int, int]]) -> str:
    rates = []
    for (t0, i0, o0), (t1, i1, o1) in itertools.pairwise(history):
        dt = max(t1 - t0, 1e-3)
        rates.append((max(0, i1 - i0) / dt, max(0, o1 - o0) / dt))
    if not rates:
        return '<p class="muted">Throughput appears after the first samples (every 5 s).</p>'
    top = max(max(a, b) for a, b in rates)
    if not top:
        return '<div class="chart" role="img" aria-label="throughput"></div><p class="muted">No transfer lately.</p>'

    bars = "".join(
        f'<div title="in {_size(a)}/s, out {_size(b)}/s"><span class="in" style="height:{a / top * 38:.0f}px"></span>'
        f'<span class="out" style="height:{b / top * 38:.0f}px"></span></div>' for a, b in rates)
    return (f'<div class="chart" role="img" aria-label="throughput">{bars}</div>'
            f'<p class="legend">peak {html.escape(_size(top))}/s<span class="in"></span>in (uploads)'
            f'<span class="out"></span>out (downloads)</p>')


def _status_page(state: dict[str, Any], sessions: list[dict[str, Any]], history: list[tuple[float, int, int]],
                 now: float) -> str:
    e = html.escape
    rows = []
    for s in sessions[:STATUS_ROWS]:
        rows.append(
            f'<tr class="session" id="session-{e(str(s["id"]))}"><td>{e(str(s["id"]))}</td>'
            f'<td>{e(s["user"]) or "-"}</td>'
            f'<td>{e(s["class"]) or "not logged in"}</td><td>{e(s["client"])}</td>'
            f'<td class="num">{_ago(now - float(s["since"]))}</td><td class="num">{_ago(float(s["idle"]))}</td>'
            f'<td>{e(s["command"])}</td>{_transfer_cell(s.get("transfer"))}</tr>')
    more = f'<p class="muted">and {len(sessions) - STATUS_ROWS} more</p>' if len(sessions) > STATUS_ROWS else ""
    table = ('<table><thead><tr><th>id</th><th>user</th><th>class</th><th>client</th><th>since</th><th>idle</th>'
             '<th>command</th><th>transfer</th><th>progress</th></tr></thead><tbody>'
             + ("".join(rows) or '<tr><td colspan="9" class="muted">no session</td></tr>') + "</tbody></table>")
    facts = {
        "sessions": len(sessions), "logins ok / failed": f'{state["logins"]["ok"]} / {state["logins"]["failed"]}',
        "bans active": state["bans_active"],
        "uploaded": f'{_size(state["bytes"]["in"])} in {state["files"]["in"]} files',
        "downloaded": f'{_size(state["bytes"]["out"])} in {state["files"]["out"]} files',
    }
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in facts.items())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="5"><title>ftpwarden status</title>'
            f'<style>{_CSS}</style></head><body><h1>ftpwarden status</h1><p class="muted">{stamp}, '
            f'refreshed every 5 s</p><dl>{dl}</dl><h2>Sessions</h2>{table}{more}'
            f'<h2>Throughput</h2>{_chart(history)}</body></html>')


# ------------------------------------------------------------------ the server

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Connection": "close"}


def _response(code: int, reason: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
              head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in _HEADERS.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


class StatusServer:
    """Serves `feed` on an already bound, listening socket."""

    def __init__(self, sock: socket.socket, feed: Feed, access: Access) -> None:
        self.sock = sock
        self.feed = feed
        self.access = access
        self.open = 0
        self.server: asyncio.Server | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        self.server = await asyncio.start_server(self._client, sock=self.sock, limit=HEAD_MAX)
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            try:
                self.feed.sample()
            except Exception:
                log.exception("ops: throughput sample failed")
            await asyncio.sleep(HISTORY_STEP)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self.server is not None:
            self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            writer.close()
            return
        self.open += 1
        try:
            answer = await self._answer(reader, writer)
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT * 2)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:  # our bug: this request fails, the listener lives on
            log.exception("ops: a request failed")
        finally:
            self.open -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _response(431, "Request Header Fields Too Large", b"request head too large\n")
        except asyncio.IncompleteReadError:
            return b""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
            return _response(400, "Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"only GET and HEAD\n")
        head_only = method == b"HEAD"
        if target == b"/metrics":
            return _response(200, "OK", self.feed.metrics(), CONTENT_TYPE_LATEST, head_only)
        if target in (b"/status", b"/status/"):
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            if not self.access.allowed(peer[:2], local[:2]):
                return _response(403, "Forbidden", b"/status: only root or admin_group, over loopback\n",
                                 head_only=head_only)
            return _response(200, "OK", self.feed.status(), "text/html; charset=utf-8", head_only)
        if target == b"/":
            return _response(200, "OK", b'<!DOCTYPE html><title>ftpwarden</title><a href="/metrics">metrics</a> '
                             b'<a href="/status">status</a>\n', "text/html; charset=utf-8", head_only)
        return _response(404, "Not Found", b"not found\n", head_only=head_only)
