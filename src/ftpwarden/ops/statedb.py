"""Bans and user_max_rate budgets shared by several nodes through PostgreSQL (state_db_url).

One `StateSync` per node process owns its own connection and runs in a thread
of its own, never on an event loop or the broker's loop:

- a failed login counted locally (net/bans.py) is queued here (bounded) and
  written as a row (node, ip, time); when the failures of that address within
  ban_window, across all nodes, reach ban_threshold, a ban row (one per
  address) says until when it holds (the database's clock);
- every ROUND seconds the bans in force are read and applied to the local
  BanList, so `is_banned()` stays a local lookup: a ban on one node holds on
  all within a second;
- user_max_rate: the accounts this node moved bytes for in the last second
  are written (node, account, seen); the nodes seen within NODES_WITHIN for
  each of them split its rate (net/limits.py `set_share`);
- old rows are pruned.

The database down or failing: the bans stay local, one warning when it goes and
one when it is back, retries with a growing pause; failures wait in the queue.

Pooled mode: `start_pooled` in each worker process.  Isolated mode: the same
sync in the unprivileged ftpwarden-state process (ops/stateproc.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..proto.addr import plain_ip

__all__ = ["STATE_SCHEMA", "BanRule", "StateSync", "node_name", "start_pooled", "ROUND"]

log = logging.getLogger("ftpwarden.statedb")

# Idempotent: `ftpwarden db init` runs it on every call.  Times are the DB's clock.
STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS ftpwarden_login_failures (
    node text NOT NULL,
    ip inet NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ftpwarden_login_failures_ip_at ON ftpwarden_login_failures (ip, at);
CREATE INDEX IF NOT EXISTS ftpwarden_login_failures_at ON ftpwarden_login_failures (at);
CREATE TABLE IF NOT EXISTS ftpwarden_bans (
    ip inet PRIMARY KEY,
    until timestamptz NOT NULL,
    node text NOT NULL
);
CREATE INDEX IF NOT EXISTS ftpwarden_bans_until ON ftpwarden_bans (until);
CREATE TABLE IF NOT EXISTS ftpwarden_rate_nodes (
    node text NOT NULL,
    account text NOT NULL,
    seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, node)
);
CREATE INDEX IF NOT EXISTS ftpwarden_rate_nodes_seen ON ftpwarden_rate_nodes (seen);
"""

ROUND = 0.5  # seconds between two reads of the bans in force
ACTIVE_WITHIN = 1.0  # an account that booked bytes this recently is active on this node
NODES_WITHIN = 2.0  # a node seen this recently for an account takes a share of its rate
PRUNE_EVERY = 30.0
KEEP_ROWS = 60.0  # seconds ended bans and old (node, account) rows are kept
QUEUE_MAX = 1000  # failures kept while the database cannot be reached
CONNECT_TIMEOUT = 3  # seconds
STATEMENT_TIMEOUT_MS = 3000
BACKOFF_MAX = 10.0  # seconds between two tries to reach a database that is down


@dataclass(frozen=True, slots=True)
class BanRule:
    """ban_threshold failures within ban_window seconds ban for ban_seconds."""

    threshold: int
    seconds: int
    window: int


def node_name(cfg: Any, port: int) -> str:
    """node_name, else this host's name and the listen port."""
    return str(cfg.node_name or f"{socket.gethostname()}:{port}")


def canonical_ip(ip: str) -> str | None:
    """The address as the tables keep it (IPv4-mapped IPv6 as IPv4, no zone); None if none."""
    a = plain_ip(ip)
    return str(a) if a is not None else None


def _where(url: str) -> str:
    """The database named for a log line: host, port and name, never the password."""
    try:
        from psycopg.conninfo import conninfo_to_dict
        d = conninfo_to_dict(url)
    except Exception:
        return "state_db_url"
    return f"{d.get('host') or 'local socket'}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


class StateStore:
    """The SQL, on one connection (autocommit): each method is a few statements."""

    def __init__(self, conn: Any, node: str) -> None:
        self.conn = conn
        self.node = node

    def failure(self, ip: str, age: float, rule: BanRule) -> float:
        """Record one failure `age` seconds ago; the seconds of the ban it started, else 0."""
        cur = self.conn.execute(
            "INSERT INTO ftpwarden_login_failures (node, ip, at)"
            " SELECT %(node)s, %(ip)s::inet, now() - make_interval(secs => %(age)s)"
            " WHERE NOT EXISTS (SELECT 1 FROM ftpwarden_bans WHERE ip = %(ip)s::inet AND until > now())",
            {"node": self.node, "ip": ip, "age": float(age)})
        if cur.rowcount != 1:
            return 0.0  # banned already
        row = self.conn.execute(
            "INSERT INTO ftpwarden_bans (ip, until, node)"
            " SELECT %(ip)s::inet, now() + make_interval(secs => %(seconds)s), %(node)s"
            " WHERE (SELECT count(*) FROM ftpwarden_login_failures WHERE ip = %(ip)s::inet"
            "        AND at > now() - make_interval(secs => %(window)s)) >= %(threshold)s"
            " ON CONFLICT (ip) DO UPDATE SET until = excluded.until, node = excluded.node"
            "   WHERE ftpwarden_bans.until <= now()"
            " RETURNING extract(epoch FROM until - now())::float8",
            {"ip": ip, "seconds": float(rule.seconds), "node": self.node, "window": float(rule.window),
             "threshold": rule.threshold}).fetchone()
        if row is None:
            return 0.0
        # the failures that made the ban are spent: after it, counting starts again
        self.conn.execute("DELETE FROM ftpwarden_login_failures WHERE ip = %s::inet", (ip,))
        return float(row[0])

    def bans(self) -> list[tuple[str, float]]:
        """(address, seconds left) of every ban in force."""
        rows = self.conn.execute(
            "SELECT host(ip), extract(epoch FROM until - now())::float8 FROM ftpwarden_bans"
            " WHERE until > now()").fetchall()
        return [(str(ip), float(left)) for ip, left in rows]

    def shares(self, accounts: list[str]) -> dict[str, int]:
        """Say this node moves bytes for `accounts`; how many nodes do, for each."""
        if not accounts:
            return {}
        self.conn.execute(
            "INSERT INTO ftpwarden_rate_nodes (node, account, seen)"
            " SELECT %s, a, now() FROM unnest(%s::text[]) AS a"
            " ON CONFLICT (account, node) DO UPDATE SET seen = excluded.seen",
            (self.node, accounts))
        rows = self.conn.execute(
            "SELECT account, count(*) FROM ftpwarden_rate_nodes"
            " WHERE account = ANY(%s::text[]) AND seen > now() - make_interval(secs => %s)"
            " GROUP BY account", (accounts, NODES_WITHIN)).fetchall()
        return {str(a): int(n) for a, n in rows}

    def prune(self, window: float) -> None:
        self.conn.execute("DELETE FROM ftpwarden_login_failures WHERE at < now() - make_interval(secs => %s)",
                          (float(window),))
        self.conn.execute("DELETE FROM ftpwarden_bans WHERE until < now() - make_interval(secs => %s)",
                          (KEEP_ROWS,))
        self.conn.execute("DELETE FROM ftpwarden_rate_nodes WHERE seen < now() - make_interval(secs => %s)",
                          (KEEP_ROWS,))


Failure = tuple[str, float, BanRule]  # address, when (monotonic), the rule it counts under


class StateSync:
    """One node process's link to the shared state.  `failed()` and `active`
    are safe to call from any thread; everything else runs in `run()`'s thread.

    `apply_ban(ip, seconds)`: a ban in force (every ROUND, for each); `apply_share(account,
    nodes)`: the nodes moving bytes for an account; `active()`: the accounts this node moved
    bytes for in the last ACTIVE_WITHIN seconds."""

    def __init__(self, url: str, node: str, *,
                 apply_ban: Callable[[str, float], None] | None = None,
                 apply_share: Callable[[str, int], None] | None = None,
                 active: Callable[[], Iterable[str]] = lambda: (),
                 connect: Callable[[str], Any] | None = None) -> None:
        self.url = url
        self.node = node
        self.apply_ban = apply_ban
        self.apply_share = apply_share
        self.active = active
        self._connect = connect or _connect
        self._queue: collections.deque[Failure] = collections.deque(maxlen=QUEUE_MAX)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._down = False
        self._retry_at = 0.0
        self._backoff = ROUND
        self._pruned = 0.0
        self._window = 600.0
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------ any thread

    def failed(self, ip: str, rule: BanRule) -> None:
        """A failed login from `ip` was counted here: count it for every node."""
        ip_ = canonical_ip(ip)
        if ip_ is None or rule.threshold <= 0:
            return
        self._queue.append((ip_, time.monotonic(), rule))  # the oldest goes when full
        self._wake.set()

    def start(self, name: str = "ftpwarden-state") -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def down(self) -> bool:
        return self._down

    # ------------------------------------------------------------ the sync thread

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.round()
                self._wake.wait(ROUND)
                self._wake.clear()
        finally:
            self._close()

    def round(self) -> None:
        """One round: failures out, bans and shares in; errors mark the database down."""
        now = time.monotonic()
        if self._down and now < self._retry_at:
            return
        try:
            if self._conn is None:
                self._conn = self._connect(self.url)
            self._step(StateStore(self._conn, self.node))
        except Exception as e:  # psycopg.Error, OSError, a closed connection: all the same here
            self._close()
            if not self._down:
                log.warning("state database %s cannot be reached (%s): bans and rate budgets stay "
                            "local until it is back", _where(self.url), _first_line(e))
                self._down, self._backoff = True, ROUND
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._retry_at = time.monotonic() + self._backoff
            return
        if self._down:
            log.warning("state database %s reachable again: bans and rate budgets are shared again",
                        _where(self.url))
            self._down = False

    def _step(self, store: StateStore) -> None:
        while self._queue:
            ip, at, rule = self._queue[0]
            age = time.monotonic() - at
            if age < rule.window:
                seconds = store.failure(ip, age, rule)
                self._window = float(rule.window)
                if seconds > 0 and self.apply_ban is not None:
                    self.apply_ban(ip, seconds)
            self._queue.popleft()  # only once written: a failing write keeps it for the next try
        if self.apply_ban is not None:
            for ip, left in store.bans():
                self.apply_ban(ip, left)
        if self.apply_share is not None:
            for account, nodes in store.shares(sorted(set(self.active()))).items():
                self.apply_share(account, nodes)
        if time.monotonic() - self._pruned >= PRUNE_EVERY:
            store.prune(self._window)
            self._pruned = time.monotonic()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _connect(url: str) -> Any:
    import psycopg
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                           application_name="ftpwarden-state",
                           # a peer that vanishes without a reset: noticed in seconds, not hours
                           keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                           tcp_user_timeout=STATEMENT_TIMEOUT_MS + 2000)


def load_driver() -> None:
    """psycopg and what it loads on first use, imported now (no code is loaded under seccomp)."""
    import encodings.idna  # noqa: F401 - a host name in the URL

    import psycopg
    import psycopg.conninfo
    import psycopg.errors
    psycopg.pq.version()  # libpq itself


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ------------------------------------------------------------ pooled mode

def start_pooled(ctx: Any, loop: Any) -> Callable[[], None]:
    """In a pooled worker process (its loop running): the sync thread of this
    process, fed by its BanList; the loop only enqueues.  Returns what stops it."""
    settings = getattr(ctx, "state_db", None)
    bans: Any = getattr(ctx, "bans", None)
    rates: Any = getattr(ctx, "account_rates", None)
    if settings is None or (bans is None and rates is None):
        return lambda: None
    url, node = settings
    events = ctx.events
    load_driver()  # now: a seccomp sandbox comes next, and loads no code after it

    def apply_ban(ip: str, seconds: float) -> None:  # in the sync thread
        seconds = min(seconds, bans.ban_seconds + 1.0)  # never longer than this node would ban
        if bans.ban(ip, seconds) and events is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(events.ban, ip, max(1, round(seconds)))  # logged once, like a local ban

    sync = StateSync(url, node,
                     apply_ban=apply_ban if bans is not None else None,
                     apply_share=rates.set_share if rates is not None else None,
                     active=(lambda: rates.recently_active(ACTIVE_WITHIN)) if rates is not None else (lambda: ()))
    if bans is not None:
        bans.report = lambda ip: sync.failed(ip, BanRule(bans.threshold, bans.ban_seconds, bans.window_seconds))
    sync.start()

    def stop() -> None:
        if bans is not None:
            bans.report = None
        sync.stop()
    return stop
