"""Isolated mode: quotas and upload hooks as the broker (root) serves them.

Session processes cannot run a program (seccomp: no execve) and must not
keep the usage (a user's process could rewrite it), so the broker does both
for the session's own account (the worker names none): `QuotaAsk` ->
`QuotaGrant`, `QuotaUsed` -> `Done`, `QuotaShow` -> `QuotaLines`,
`UploadHook` -> `HookDone`.  The hook runner (ops/hooks.py) is forked by the
broker before the first accept; it starts each program as `upload_hook_user`
and, for a refused sync upload, moves the file out of the user's root through
openat2 (net/jail.py), so no symlink the user planted leads a root process
elsewhere.  A sync `UploadHook` is answered when the runner answers (the
broker's loop never waits); the runner is bounded by the hook's timeout, and
if it dies every waiting session is answered "error" (550).

The real path given to the hook is the account's root joined with the
session's path: the broker never reads it; the runner reaches the file only
through the jail.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..priv.messages import (
    Done,
    HookDone,
    Message,
    QuotaAsk,
    QuotaGrant,
    QuotaLines,
    QuotaShow,
    QuotaUsed,
    UploadHook,
)
from . import hooks, quota

__all__ = ["BrokerUploads", "REQUESTS"]

log = logging.getLogger("ftpwarden.hooks")

REQUESTS = (QuotaAsk, QuotaUsed, QuotaShow, UploadHook)


class BrokerUploads:
    def __init__(self, cfg: Any) -> None:
        """Raises ValueError for a bad hook setting or an unusable quota_state_dir."""
        self.settings = hooks.settings(cfg)
        self.store = quota.open_store(cfg)
        self.runner: socket.socket | None = None
        self._ids = iter(range(1, 1 << 62))
        # request id -> (session, answer(session, msg)): the sync hooks under way
        self.waiting: dict[int, tuple[Any, Callable[[Any, Message], None]]] = {}

    def start_runner(self) -> socket.socket | None:
        """Fork the hook runner (the broker watches the returned socket)."""
        if self.settings is not None and self.runner is None:
            self.runner = hooks.start_runner(self.settings)
            self.runner.setblocking(False)
        return self.runner

    def handle(self, s: Any, msg: Message, answer: Callable[[Any, Message], None]) -> None:
        """One request of session `s` (post-login, its account known)."""
        account = s.account
        cfg = s.site.cfg
        local = quota.LocalQuota(self.store, cfg)
        if isinstance(msg, QuotaAsk):
            if account is None or not local.applies(account):
                answer(s, QuotaGrant(False, -1, ""))
            elif msg.probe:
                answer(s, QuotaGrant(True, -1, ""))
            else:
                try:
                    left = local.grant(account, new_file=msg.new_file, replaced=max(0, msg.replaced))
                    answer(s, QuotaGrant(True, -1 if left is None else left, ""))
                except quota.Exceeded as e:
                    answer(s, QuotaGrant(True, 0, e.strerror or "quota exceeded"))
                except (OSError, ValueError) as e:
                    log.error("quota for %s: %s", account.name, e)
                    answer(s, QuotaGrant(True, 0, "quota usage unavailable"))
        elif isinstance(msg, QuotaUsed):
            if account is not None and local.applies(account):
                try:
                    local.add(account, msg.nbytes, msg.files)
                except (OSError, ValueError) as e:
                    log.error("quota for %s: %s", account.name, e)
            answer(s, Done())
        elif isinstance(msg, QuotaShow):
            try:
                text = "\n".join(local.lines(account)) if account is not None else ""
            except (OSError, ValueError):
                text = "Quota usage unavailable."
            answer(s, QuotaLines(text))
        elif isinstance(msg, UploadHook):
            self._hook(s, msg, answer)

    def _hook(self, s: Any, msg: UploadHook, answer: Callable[[Any, Message], None]) -> None:
        account = s.account
        st = self.settings
        if st is None or self.runner is None or account is None:
            answer(s, HookDone("ok", 0, ""))  # no hook configured: nothing to wait for
            return
        root = account.root
        env = hooks.hook_env(user=account.name, user_class=account.user_class.value, root=root, vpath=msg.path,
                             size=max(0, msg.size), client=s.remote_ip)
        vpath = env["FTPW_VPATH"]
        rid = next(self._ids)
        data = json.dumps({"id": rid, "sync": st.sync, "env": env, "path": env["FTPW_PATH"],
                           "root": root, "vpath": vpath}).encode()
        try:
            self.runner.send(data)
        except OSError as e:  # full (BlockingIOError) or gone
            log.warning("upload hook: not run for %s (%s)", vpath, e.__class__.__name__)
            answer(s, HookDone("busy" if isinstance(e, BlockingIOError) else "error", -1, ""))
            return
        if st.sync:
            self.waiting[rid] = (s, answer)
        else:
            answer(s, HookDone("queued", -1, ""))

    def on_runner(self) -> bool:
        """The runner's socket is readable: its answers.  False when it has ended."""
        assert self.runner is not None
        while True:
            try:
                data = self.runner.recv(hooks.MESSAGE_MAX)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                log.error("upload hook runner ended; hooks are not run any more")
                for s, answer in self.waiting.values():
                    answer(s, HookDone("error", -1, ""))
                self.waiting.clear()
                return False
            try:
                reply = json.loads(data)
                result = hooks.Result(str(reply["status"]), reply.get("code"), str(reply.get("output") or ""),
                                      str(reply.get("moved_to") or ""))
            except (ValueError, KeyError, TypeError):
                continue
            hooks.log_result(result)
            waiter = self.waiting.pop(reply.get("id"), None)
            if waiter is not None:
                s, answer = waiter
                answer(s, HookDone(result.status, -1 if result.code is None else int(result.code),
                                   result.moved_to))

    def forget(self, s: Any) -> None:
        """Session `s` ended: no answer goes to it."""
        for rid in [rid for rid, (t, _) in self.waiting.items() if t is s]:
            del self.waiting[rid]
