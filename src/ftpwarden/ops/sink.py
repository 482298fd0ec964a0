"""OpsSink: the log events, counted into the session table and the metrics.

Registered beside the other sinks (logs/configured.py `build_event_log(ops=...)`),
so it sees what the sinks see: every event of a pooled worker's sessions, and in
isolated mode every session's events as the broker's LogRelay completed them
(user and class are the broker's, never what a worker claims).
"""

from __future__ import annotations

import logging
from typing import Any

from ..logs.events import EventLog, TransferRecord
from .metrics import OpsMetrics
from .table import SessionTable

__all__ = ["OpsSink"]

log = logging.getLogger("ftpwarden.ops")


class OpsSink(EventLog):
    """Never raises into a session: a failure is logged and the event dropped."""

    def __init__(self, table: SessionTable, metrics: OpsMetrics) -> None:
        self.table = table
        self.metrics = metrics

    def _safe(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("ops: counting an event failed")

    def connect(self, session: str, remote_ip: str) -> None:
        self._safe(self.table.connect, session, remote_ip)
        self._safe(self.metrics.connect)

    def login(self, session: str, remote_ip: str, user: str, user_class: str | None,
              ok: bool, reason: str = "") -> None:
        if ok:
            self._safe(self.table.login, session, user, user_class)
        self._safe(self.metrics.login, ok)

    def command(self, session: str, remote_ip: str, user: str, line: bytes) -> None:
        self._safe(self.table.command, session, line)

    def reply(self, session: str, remote_ip: str, user: str, data: bytes) -> None:
        self._safe(self.metrics.reply, data)

    def transfer_start(self, session: str, remote_ip: str, user: str, path: str, direction: str,
                       size: int | None = None) -> None:
        self._safe(self.table.transfer_start, session, path, direction == "i", size)

    def progress(self, session: str, moved: int) -> None:
        self._safe(self.table.progress, session, moved)

    def transfer(self, record: TransferRecord) -> None:
        self._safe(self.table.transfer_end, record.session)
        self._safe(self.metrics.transfer, record.direction == "i", record.size, record.seconds, record.complete)

    def tls_handshake(self, session: str, remote_ip: str, ok: bool) -> None:
        self._safe(self.metrics.tls_handshake, ok)

    def disconnect(self, session: str, remote_ip: str, user: str, reason: str) -> None:
        self._safe(self.table.disconnect, session)

    def ban(self, remote_ip: str, seconds: int) -> None:
        self._safe(self.metrics.ban, remote_ip, seconds)
