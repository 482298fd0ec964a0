"""What every session of one server process shares: config, authenticator, TLS
contexts, shared tables, the uid/gid name cache, the password-check thread."""

from __future__ import annotations

import concurrent.futures
import grp
import itertools
import os
import pwd
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..logs.events import EventLog
from ..policy.auth.local import userlist_filter
from . import tls
from .limits import SessionLimits

if TYPE_CHECKING:
    from .control import ControlConnection

__all__ = ["ServerContext", "password_checks"]


class ServerContext:
    """What every session of one server shares: config, authenticator, name cache."""

    def __init__(self, cfg: Any, authenticator: Any, *, banner: str | None = None,
                 events: EventLog | None = None, broker: Any = None,
                 handover: Callable[[ControlConnection, Any], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.authenticator = authenticator  # .authenticate(LoginRequest) -> account, blocking
        self.banner = banner
        self.events = events or EventLog()
        # Isolated mode: `broker` asks the monitor for port-20 sockets and upload
        # chowns; `handover` passes a good login to the monitor, which starts the
        # post-login process.  Pooled mode: both None (done in-process).
        self.broker = broker
        self.handover = handover
        self.tls_contexts: tls.Contexts | None = None  # ssl_enable: makes an SSLContext per control connection
        self.tls_link: Any = None  # isolated post-login: priv.tlshelper.TlsLink to the TLS helper
        # Temporary bans of addresses that keep failing logins (net/bans.py), shared
        # by every process of the server; None when the options leave it off.
        self.bans: Any = None
        self.account_rates: Any = None  # net.limits.AccountRates when user_max_rate is set
        self.refuse_user = userlist_filter(cfg)  # read now, before any chroot
        self.limits: SessionLimits | None = None  # pooled mode: shared by the worker processes
        # who/kick and sd_notify (ops/control.py, ops/sdnotify.py, ops/pooledlink.py), pooled mode:
        # (control socket, admin gid), the Notifier, and a worker's link to its supervisor
        self.ops_control: Any = None
        self.notifier: Any = None
        self.ops_link: Any = None
        # upload_hook (ops/hooks.py): settings, and the client of this process's hook runner
        self.hook_settings: Any = None
        self.hooks: Any = None
        self.quota: Any = None  # ops.quota.QuotaStore when quotas are on (pooled: kept in-process)
        # proxy_protocol_enable: net.proxyproto.TrustedSources (proxy_protocol_from), parsed at start
        self.proxy_trusted: Any = None
        self._names: dict[tuple[int, bool], str] = {}
        self._next_id = itertools.count(1)

    def preload_names(self, names: dict[tuple[int, bool], str]) -> None:
        """Names read before a chroot hid /etc/passwd and /etc/group."""
        self._names.update(names)

    def session_id(self) -> str:
        return f"{os.getpid()}.{next(self._next_id)}"

    def name_of(self, ident: int, user: bool) -> str:
        key = (ident, user)
        name = self._names.get(key)
        if name is None:
            name = str(ident)
            try:
                if not self.cfg.text_userdb_names:  # vsftpd shows numeric ids by default
                    raise KeyError(ident)
                name = pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
            except (KeyError, OverflowError):
                pass
            if len(self._names) < 65536:
                self._names[key] = name
        return name


_PASSWORD_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _forget_password_pool() -> None:
    """A forked child has none of its parent's threads: an inherited pool would
    take checks that no thread ever runs."""
    global _PASSWORD_POOL
    _PASSWORD_POOL = None


os.register_at_fork(after_in_child=_forget_password_pool)


def password_checks() -> concurrent.futures.ThreadPoolExecutor:
    """One thread per process checks passwords: slow hashes stay off the event
    loop, and their 16 MiB scrypt buffer is reused instead of multiplied."""
    global _PASSWORD_POOL
    if _PASSWORD_POOL is None:
        _PASSWORD_POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="password")
    return _PASSWORD_POOL
