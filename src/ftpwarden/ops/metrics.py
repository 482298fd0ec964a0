"""Prometheus metrics: plain counters here, rendered by a prometheus_client collector.

The counters are a small JSON-able dict (`OpsMetrics.state()`), so the numbers
counted in one process (a pooled worker, the isolated broker) can be summed with
other processes' (`merge`) and rendered in another (the isolated `ftpwarden-ops`
process).  Labels are closed sets: class, mode, direction, result, reply code
class; never a user name, path or address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["OpsMetrics", "OpsCollector", "BUCKETS", "merge", "memory_by_kind", "render", "registry_for", "rss"]

BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)  # transfer seconds; +Inf added
CLASSES = ("anonymous", "guest", "real", "virtual", "none")
DIRECTIONS = ("in", "out")
BANS_MAX = 100_000
# what ftpwarden_memory_resident_bytes{kind} may say: a closed set (isolated: the
# broker's children by role; pooled: its workers and supervisor)
PROCESS_KINDS = ("broker", "checker", "zygote", "session", "ops", "pooled", "supervisor")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(pid: int | str = "self") -> int | None:
    """Resident bytes of `pid` (/proc/PID/statm), None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def memory_by_kind(pids: dict[str, list[int]]) -> tuple[dict[str, int], dict[str, int]]:
    """({kind: resident bytes summed}, {kind: processes counted}) for `pids` by kind."""
    memory, counts = {}, {}
    for kind, group in pids.items():
        sizes = [n for n in map(rss, group) if n is not None]
        memory[kind], counts[kind] = sum(sizes), len(sizes)
    return memory, counts


class OpsMetrics:
    """The counters of one process.  Every method is a few integer bumps."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.logins = {"ok": 0, "failed": 0}
        self.bytes = dict.fromkeys(DIRECTIONS, 0)
        self.files = dict.fromkeys(DIRECTIONS, 0)
        self.aborted = dict.fromkeys(DIRECTIONS, 0)
        self.replies = {f"{c}xx": 0 for c in "12345"}
        self.tls = {"ok": 0, "failed": 0}
        self.connections = 0
        self.durations = {d: [0] * (len(BUCKETS) + 1) for d in DIRECTIONS}  # per bucket, not cumulative
        self.duration_sum = dict.fromkeys(DIRECTIONS, 0.0)
        self._bans: dict[str, float] = {}  # address -> end (never exported: only their count)

    def connect(self) -> None:
        self.connections += 1

    def login(self, ok: bool) -> None:
        self.logins["ok" if ok else "failed"] += 1

    def reply(self, data: bytes) -> None:
        # one reply event may hold several lines; a reply is counted by its final line
        for line in data.split(b"\r\n"):
            if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" " and b"1" <= line[:1] <= b"5":
                self.replies[f"{chr(line[0])}xx"] += 1

    def tls_handshake(self, ok: bool) -> None:
        self.tls["ok" if ok else "failed"] += 1

    def transfer(self, upload: bool, size: int, seconds: float, complete: bool) -> None:
        d = "in" if upload else "out"
        self.bytes[d] += max(0, size)
        if complete:
            self.files[d] += 1
        else:
            self.aborted[d] += 1
        seconds = max(0.0, seconds)
        i = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
        self.durations[d][i] += 1
        self.duration_sum[d] += seconds

    def ban(self, address: str, seconds: int) -> None:
        now = self.clock()
        if len(self._bans) >= BANS_MAX:
            self._expire(now)
        if len(self._bans) < BANS_MAX:
            self._bans[address] = now + max(0, seconds)

    def _expire(self, now: float) -> None:
        for ip in [ip for ip, end in self._bans.items() if end <= now]:
            del self._bans[ip]

    def bans_active(self) -> int:
        self._expire(self.clock())
        return len(self._bans)

    def state(self) -> dict[str, Any]:
        """Everything exported, as JSON-able data (summable with `merge`)."""
        return {"logins": dict(self.logins), "bytes": dict(self.bytes), "files": dict(self.files),
                "aborted": dict(self.aborted), "replies": dict(self.replies), "tls": dict(self.tls),
                "connections": self.connections, "bans_active": self.bans_active(),
                "durations": {d: list(v) for d, v in self.durations.items()},
                "duration_sum": dict(self.duration_sum)}


def merge(states: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several processes' `state()`s (unknown keys and bad values ignored)."""
    total = OpsMetrics().state()
    counters = list(total)  # the fixed keys; memory and processes are summed below
    for s in states:
        for key in counters:
            value = total[key]
            got = s.get(key)
            if isinstance(value, dict) and isinstance(got, dict):
                for k in value:
                    v = got.get(k)
                    if isinstance(value[k], list) and isinstance(v, list) and len(v) == len(value[k]):
                        value[k] = [a + int(b) for a, b in zip(value[k], v, strict=True)]
                    elif isinstance(v, (int, float)) and not isinstance(value[k], list):
                        value[k] += v
            elif isinstance(got, (int, float)) and isinstance(value, (int, float)):
                total[key] = value + got
        for key in ("memory", "processes"):  # keyed by process kind: the union, summed
            got = s.get(key)
            if isinstance(got, dict):
                into = total.setdefault(key, {})
                for kind, n in got.items():
                    if kind in PROCESS_KINDS and isinstance(n, int):
                        into[kind] = into.get(kind, 0) + n
    return total


def _counter(name: str, doc: str, label: str, values: dict[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class OpsCollector(Collector):
    """Renders `source()` = (metrics state, session snapshot) as metric families."""

    def __init__(self, source: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        state, sessions = self.source()
        open_ = GaugeMetricFamily("ftpwarden_sessions", "Sessions open, by user class (none: not logged in) "
                                  "and mode.", labels=["class", "mode"])
        mode = str(state.get("mode", ""))
        counts: dict[tuple[str, str], int] = {(cls, mode): 0 for cls in CLASSES} if mode else {}
        precounted = state.get("open")
        if isinstance(precounted, dict):  # isolated: counted over the whole table by the broker
            for cls, n in precounted.items():
                key = (cls if cls in CLASSES else "other", mode)
                counts[key] = counts.get(key, 0) + int(n)
        else:
            for row in sessions:
                cls = row.get("class") or "none"
                key = (cls if cls in CLASSES else "other", str(row.get("mode", "")))
                counts[key] = counts.get(key, 0) + 1
        for (cls, mode), n in sorted(counts.items()):
            open_.add_metric([cls, mode], n)
        yield open_
        moving = GaugeMetricFamily("ftpwarden_transfers", "Transfers under way, by direction.",
                                   labels=["direction"])
        for d in DIRECTIONS:
            name = "upload" if d == "in" else "download"
            moving.add_metric([d], sum(1 for r in sessions if (r.get("transfer") or {}).get("direction") == name))
        yield moving
        yield CounterMetricFamily("ftpwarden_connections", "Control connections accepted.",
                                  value=state["connections"])
        yield _counter("ftpwarden_logins", "Login attempts, by result.", "result", state["logins"])
        yield GaugeMetricFamily("ftpwarden_bans_active", "Addresses banned now for failed logins.",
                                value=state["bans_active"])
        yield _counter("ftpwarden_transfer_bytes", "Bytes of file transfers (in = upload).",
                       "direction", state["bytes"])
        yield _counter("ftpwarden_files", "Files transferred completely (in = upload).",
                       "direction", state["files"])
        yield _counter("ftpwarden_transfers_failed", "Transfers aborted or failed midway.",
                       "direction", state["aborted"])
        yield _counter("ftpwarden_replies", "Final replies sent, by code class.", "code", state["replies"])
        yield _counter("ftpwarden_tls_handshakes", "TLS handshakes on control connections, by result.",
                       "result", state["tls"])
        memory, processes = state.get("memory"), state.get("processes")
        if isinstance(memory, dict) and isinstance(processes, dict):
            rss_family = GaugeMetricFamily("ftpwarden_memory_resident_bytes",
                                           "Resident memory of the server's processes, by kind.", labels=["kind"])
            count_family = GaugeMetricFamily("ftpwarden_processes", "The server's processes, by kind.",
                                             labels=["kind"])
            for kind in PROCESS_KINDS:
                if kind in memory:
                    rss_family.add_metric([kind], memory[kind])
                    count_family.add_metric([kind], processes.get(kind, 0))
            yield rss_family
            yield count_family
        hist = HistogramMetricFamily("ftpwarden_transfer_duration_seconds", "Duration of file transfers.",
                                     labels=["direction"])
        for d in DIRECTIONS:
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, BUCKETS), "+Inf"], state["durations"][d], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            hist.add_metric([d], buckets, state["duration_sum"][d])
        yield hist


def registry_for(source: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]],
                 process: bool = True) -> CollectorRegistry:
    """A registry of our collector (and this process's memory/CPU, `process_*`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OpsCollector(source))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
