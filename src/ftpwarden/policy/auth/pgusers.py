"""Virtual users in PostgreSQL (`user_db_url`): the records of user_db_file, in a table.

One row per user in `ftpwarden_users`, the fields of `UserRecord` (NULL: the
server's default, as an absent option in the file).  `ftpwarden db init` makes
the table, `ftpwarden user ... --db postgresql://...` edits it.

Last in the login chain: `wants()` only checks the name (never a query), so every
other store decides first.  A lookup that cannot reach the database raises
`LoginUnavailable` (the client gets 421, no ban counted), and never blocks for
long: connect_timeout, a statement timeout, and for a server that stops answering
mid-query its socket is shut down after QUERY_DEADLINE.  Pooled mode keeps a
psycopg_pool per process, used only from the password-check thread, made after a
first direct connection succeeded and dropped when it fails (so a database that
is down costs one refused connect per login, and one that came back is used at
once; one that hangs is not asked again for HUNG_PAUSE seconds); isolated mode's
check children connect once per check, in parallel (nothing crosses a fork).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import Config
from ..users import Account
from .base import LoginRequest, LoginUnavailable
from .userfile import RecordLogin, UserRecord, format_record, valid_user_name

__all__ = ["USERS_SCHEMA", "check_url", "describe", "reason", "connect", "PgUserStore",
           "PgUserAuthenticator"]

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS ftpwarden_users (
    name text PRIMARY KEY,
    hash text NOT NULL,
    root text,
    write boolean,
    umask integer CHECK (umask BETWEEN 0 AND 511),
    quota_bytes bigint CHECK (quota_bytes >= 0),
    quota_files bigint CHECK (quota_files >= 0)
);
"""
CONNECT_TIMEOUT = 3  # seconds (libpq's connect_timeout: whole seconds)
STATEMENT_TIMEOUT_MS = 3000  # the server ends a query stuck on a lock
QUERY_DEADLINE = 4.0  # seconds; then the socket is shut down (a server that stopped answering)
POOL_WAIT = 4.0  # seconds a login waits for a pooled connection
# Pooled mode: a lookup that failed only after this long met a database that does not answer
# (not one that refuses): for HUNG_PAUSE seconds the next lookups fail at once instead of each
# holding the one password thread for seconds, which would queue every other login behind them.
SLOW_FAILURE = 1.0
HUNG_PAUSE = 5.0
_COLUMNS = "name, hash, root, write, umask, quota_bytes, quota_files"
_SELECT = f"SELECT {_COLUMNS} FROM ftpwarden_users WHERE name = %s"
_SCHEMES = ("postgresql", "postgres")

# psycopg_pool logs every failed reconnection at WARNING; our own line says it once per login
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def describe(url: str) -> str:
    """`url` without its password, for messages and logs."""
    if "://" not in url:
        return "(not a URL)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "(local socket)"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the database"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def check_url(url: str) -> str:
    """`url` if it names a PostgreSQL database (postgresql:// or postgres://), else ValueError."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if parts.scheme not in _SCHEMES or not url.startswith(parts.scheme + "://"):
        raise ValueError("expected postgresql://[user[:password]@]host[:port]/database")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    return url


def connect(url: str) -> psycopg.Connection[Any]:
    """One connection, autocommit, with our timeouts.  psycopg.Error if it fails."""
    return psycopg.connect(url, **_connect_args())


def _connect_args() -> dict[str, Any]:
    return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": "ftpwarden",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}


class _Deadline:
    """A server that stops answering (a stopped process, a lost network) would block a
    query forever: after `seconds` the connection's socket is shut down and the query
    fails; `fired` says so (a hung server, not one that restarted)."""

    def __init__(self, conn: psycopg.Connection[Any], seconds: float = QUERY_DEADLINE) -> None:
        self._fd = conn.fileno()
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                with socket.socket(fileno=os.dup(self._fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _record(row: tuple[Any, ...]) -> UserRecord:
    """A row as a record, checked as a line of the file would be (ValueError)."""
    name, hash_, root, write, umask, quota_bytes, quota_files = row
    rec = UserRecord(name, hash_, root, write, umask, quota_bytes, quota_files)
    format_record(rec)  # the file's checks: name, hash scheme, root, umask
    return rec


def reason(e: BaseException) -> str:
    """An error's first line, short: what a log line or a message says of it."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


class PgUserStore:
    """The table, for `ftpwarden user` and `db init`: one connection, statements in autocommit."""

    def __init__(self, url: str) -> None:
        self.conn = connect(check_url(url))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PgUserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def init(self, *more: str) -> None:
        """Create the users table (and `more` schemas) if missing: idempotent."""
        with self.conn.transaction():
            for sql in (USERS_SCHEMA, *more):
                self.conn.execute(sql.encode())  # bytes: several statements in one go

    def get(self, name: str) -> UserRecord | None:
        row = self.conn.execute(_SELECT, (name,)).fetchone()
        return None if row is None else _record(row)

    def list(self) -> list[UserRecord]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM ftpwarden_users ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    def add(self, rec: UserRecord) -> bool:
        """False if the name is taken."""
        format_record(rec)
        cur = self.conn.execute(f"INSERT INTO ftpwarden_users ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                                "ON CONFLICT (name) DO NOTHING", _values(rec))
        return cur.rowcount == 1

    def replace(self, rec: UserRecord) -> bool:
        """False if there is no such user."""
        format_record(rec)
        cur = self.conn.execute("UPDATE ftpwarden_users SET hash = %s, root = %s, write = %s, umask = %s, "
                                "quota_bytes = %s, quota_files = %s WHERE name = %s", (*_values(rec)[1:], rec.name))
        return cur.rowcount == 1

    def delete(self, name: str) -> bool:
        """False if there is no such user."""
        return self.conn.execute("DELETE FROM ftpwarden_users WHERE name = %s", (name,)).rowcount == 1


def _values(rec: UserRecord) -> tuple[Any, ...]:
    return (rec.name, rec.hash, rec.root, rec.write, rec.umask, rec.quota_bytes, rec.quota_files)


class PgUserAuthenticator:
    """Logins against `ftpwarden_users`.  `pooled`: keep a connection pool (pooled
    mode's password thread); else a connection per check (isolated mode's check
    children, which exit after one login).  Nothing connects before the first login."""

    def __init__(self, cfg: Config, url: str, default_root: str, *, pooled: bool) -> None:
        self._url = check_url(url)
        self._login = RecordLogin(cfg, default_root)
        self._pooled = pooled
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._pool_pid = 0
        self._forsaken: list[ConnectionPool[Any]] = []  # inherited across a fork: never touched again
        self._hung_until = 0.0  # pooled: until then the database is taken as not answering

    def wants(self, user: str) -> bool:
        return valid_user_name(user)  # last in the chain; no query here (the event loop calls it)

    def needs_password(self, user: str) -> bool:
        return True

    def authenticate(self, req: LoginRequest) -> Account:
        started = time.monotonic()
        if self._pooled and started < self._hung_until:
            raise LoginUnavailable("user database unreachable: it did not answer a moment ago; "
                                   f"tried again after {HUNG_PAUSE:.0f} s")
        try:
            row = self._lookup(req.user)
        except (psycopg.Error, PoolTimeout, OSError) as e:
            if time.monotonic() - started >= SLOW_FAILURE:
                self._hung_until = time.monotonic() + HUNG_PAUSE
            raise LoginUnavailable(f"user database unreachable: {reason(e)}") from None
        try:
            rec = None if row is None else _record(row)
        except (ValueError, TypeError) as e:
            return self._login.account(None, req, f"bad row in ftpwarden_users: {e}")
        return self._login.account(rec, req)

    def _lookup(self, name: str) -> tuple[Any, ...] | None:
        if not self._pooled:
            return self._direct(name)
        pool = self._pool_here()
        if pool is not None:
            deadline = None
            try:
                with pool.connection(timeout=POOL_WAIT) as conn, _Deadline(conn) as deadline:
                    row: tuple[Any, ...] | None = conn.execute(_SELECT, (name,)).fetchone()
                return row
            except (psycopg.OperationalError, PoolTimeout):
                # its reconnection backoff could outlast the outage: the pool goes
                self._drop(pool)
                if deadline is None or deadline.fired:
                    raise  # no connection to be had, or a server that does not answer
            # else a connection from before the server restarted: one direct try
        row = self._direct(name)  # a server that is down refuses at once: 421 without a wait
        self._start_pool()  # it answers: the next logins use a pool again
        return row

    def _direct(self, name: str) -> tuple[Any, ...] | None:
        with connect(self._url) as conn, _Deadline(conn):
            row: tuple[Any, ...] | None = conn.execute(_SELECT, (name,)).fetchone()
        return row

    def _pool_here(self) -> ConnectionPool[Any] | None:
        """This process's pool, if it has one (a pool inherited across a fork is not)."""
        with self._lock:
            if self._pool is not None and self._pool_pid != os.getpid():
                self._forsaken.append(self._pool)  # the parent's: its threads are not here
                self._pool = None
            return self._pool

    def _start_pool(self) -> None:
        """A pool for this process, opened in the background (its first connection comes meanwhile)."""
        with self._lock:
            if self._pool is not None:
                return
            self._pool = ConnectionPool(self._url, kwargs=_connect_args(), min_size=1, max_size=2,
                                        open=False, name="ftpwarden-users", timeout=POOL_WAIT,
                                        reconnect_timeout=CONNECT_TIMEOUT * 2, num_workers=1)
            self._pool.open(wait=False)
            self._pool_pid = os.getpid()

    def _drop(self, pool: ConnectionPool[Any]) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.close(timeout=1.0)
