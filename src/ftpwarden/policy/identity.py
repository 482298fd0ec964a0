"""Isolated mode: the system account an `Account` runs as after login.

A real user (auth/local.py) already carries its uid/gid and chroot rules.
Anonymous sessions run as ftp_username and user-DB guests as
guest_username, both jailed in their root, as vsftpd runs them.
"""

from __future__ import annotations

import pwd
from dataclasses import replace
from typing import Any

from .auth.base import LoginRefused
from .users import Account, UserClass

__all__ = ["isolated_identity"]


def isolated_identity(cfg: Any, account: Account) -> Account:
    """`account` with uid, gid and chroot set; LoginRefused if the system
    account is missing, or if the session would run as root."""
    if account.user_class is UserClass.ANONYMOUS:
        name = cfg.ftp_username or "ftp"
    elif account.user_class is UserClass.GUEST and account.uid is None:
        name = cfg.guest_username or "ftp"
    else:
        name = None
    if name is not None:
        try:
            pw = pwd.getpwnam(name)
        except (KeyError, ValueError):
            raise LoginRefused(f"no such system user {name}") from None
        account = replace(account, uid=pw.pw_uid, gid=pw.pw_gid, chroot=True)
    if not account.uid or account.gid is None:  # None or 0: never hand a session root
        raise LoginRefused(f"{account.name}: no system uid, or uid 0")
    return account
