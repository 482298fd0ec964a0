"""One server's operations state: its session table, its counters and their sink.

Made once at start-up (cli.py) when metrics_listen or control_socket is set, and
kept across SIGHUP: a reload builds new log sinks, the same OpsSink joins them.
"""

from __future__ import annotations

import os
from typing import Any

from .metrics import OpsMetrics, memory_by_kind
from .sink import OpsSink
from .table import SessionTable

__all__ = ["Ops", "ops_enabled"]


def ops_enabled(cfg: Any) -> bool:
    """The session table and the progress events are kept only when something reads them."""
    return bool(getattr(cfg, "metrics_listen", None) or getattr(cfg, "control_socket", None))


class Ops:
    def __init__(self, mode: str) -> None:
        self.table = SessionTable(mode)
        self.metrics = OpsMetrics()
        self.sink = OpsSink(self.table, self.metrics)
        self.listen_sock: Any = None  # metrics_listen's socket, when set

    def source(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics state, session snapshot): what /metrics and /status show."""
        memory, processes = memory_by_kind({self.table.mode: [os.getpid()]})
        return ({**self.metrics.state(), "mode": self.table.mode, "memory": memory, "processes": processes},
                self.table.snapshot())


def bind_metrics(value: str) -> Any:
    """metrics_listen's listening socket, bound now (before any fork or privilege drop).
    ValueError for a malformed value, OSError (filename = the address) when it cannot bind."""
    import socket

    from .http import parse_listen
    host, port = parse_listen(value)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, e.strerror, value) from None
    except BaseException:
        sock.close()
        raise
    return sock


def start(cfg: Any, mode: str) -> Ops | None:
    """The Ops of a server about to start (None when off), with metrics_listen's socket bound."""
    if not ops_enabled(cfg):
        return None
    ops = Ops(mode)
    ops.listen_sock = bind_metrics(cfg.metrics_listen) if getattr(cfg, "metrics_listen", None) else None
    return ops


def http_server(ops: Ops, cfg: Any) -> Any:
    """The in-process /metrics + /status server (pooled mode), or None without metrics_listen."""
    if ops.listen_sock is None:
        return None
    from .access import Access
    from .http import Feed, StatusServer
    return StatusServer(ops.listen_sock, Feed(ops.source), Access(getattr(cfg, "admin_group", None)))
