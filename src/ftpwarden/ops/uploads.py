"""What happens around an upload for quotas and hooks, called by net/transfer.py.

Before the 150: `charge` grants the upload what is left of its user's quota
(EDQUOT, 552, when nothing is).  After the file is complete on disk (renamed
into place): `completed` runs the upload hook (sync: its verdict decides 226
or 550) and then counts the upload in the user's usage, so an upload refused,
failed or stopped at its quota is never counted.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Any

from ..proto import paths
from ..proto.actions import ReceiveFile, TransferDone
from . import hooks, quota

__all__ = ["Charge", "charge", "completed", "quota_lines", "forget_file", "setup", "start_hooks"]

# `ctx.quota` is a quota backend: quota.LocalQuota (pooled), or in an isolated-mode worker
# priv.worker.BrokerQuota, which asks the broker; both have applies/grant/add/lines.
# `ctx.hooks` has `settings` and `async run(env, root, vpath) -> hooks.Result`.


@dataclass(slots=True)
class Charge:
    grant: int | None   # bytes this transfer may write (None: no byte limit)
    prior: int          # bytes counted for this name before the upload
    new_file: bool      # the upload adds a file
    size_after: int = 0


def charge(cc: Any, jail: Any, action: ReceiveFile, upload: Any) -> Charge | None:
    """The upload's budget (None: no quota applies); raises quota.Exceeded."""
    backend = cc.ctx.quota
    account = cc.session.account
    if backend is None or account is None or not backend.applies(account):
        return None
    fresh = not (action.append or action.offset or action.unique)
    if upload.partial is not None:  # atomic_uploads: the name is replaced at the end
        try:
            st = jail.stat(action.path)
            prior, new_file = (st.st_size if stat.S_ISREG(st.st_mode) else 0), False
        except OSError:
            prior, new_file = 0, True
    else:
        prior, new_file = upload.size_before, upload.created
    given = backend.grant(account, new_file=new_file, replaced=prior if fresh else 0)
    return Charge(given, prior, new_file)


async def completed(cc: Any, action: ReceiveFile, held: Charge | None, done: TransferDone) -> TransferDone:
    """The upload is whole on disk: the hook, then the usage.  Returns the transfer's outcome."""
    account = cc.session.account
    runner = cc.ctx.hooks
    if runner is not None and account is not None and cc.jail is not None:
        vpath = action.path
        if action.unique and done.name:
            vpath = paths.resolve(paths.parent(action.path), done.name)
        root = cc.jail.root
        env = hooks.hook_env(user=account.name, user_class=account.user_class.value,
                             root=root, vpath=vpath, size=done.size, client=cc.remote_ip)
        result = await runner.run(env, root, vpath)
        if runner.settings.sync and not result.ok:
            why = " (timed out)" if result.status == "timeout" else ""
            return TransferDone("refused", done.size, detail=why)
    if held is not None and cc.ctx.quota is not None and account is not None:
        try:
            cc.ctx.quota.add(account, held.size_after - held.prior, 1 if held.new_file else 0)
        except (OSError, ValueError):
            pass  # the file is there; `quota recompute` repairs the count
    return done


def quota_lines(cc: Any) -> tuple[str, ...]:
    """SITE QUOTA's answer: () when no quota applies."""
    account = cc.session.account
    backend = cc.ctx.quota
    if backend is None or account is None:
        return ()
    return tuple(backend.lines(account))


def forget_file(cc: Any, size: int) -> None:
    """A file of `size` bytes was deleted: it no longer counts."""
    account = cc.session.account
    backend = cc.ctx.quota
    if backend is None or account is None:
        return
    try:
        if backend.applies(account):
            backend.add(account, -size, -1)
    except (OSError, ValueError):
        pass


def setup(ctx: Any, cfg: Any) -> None:
    """At start: the hook's settings and the quota store on `ctx`; ValueError says what is wrong.
    The hook runner itself is forked later, by each process that serves sessions, before
    its sandbox (`start_hooks`)."""
    ctx.hook_settings = hooks.settings(cfg)
    ctx.quota = quota.LocalQuota(quota.open_store(cfg), cfg)


def start_hooks(ctx: Any) -> None:
    """In a process about to serve sessions, before its sandbox: fork its hook runner."""
    if getattr(ctx, "hook_settings", None) is not None and getattr(ctx, "hooks", None) is None:
        ctx.hooks = hooks.HookClient.start(ctx.hook_settings)
