"""Who is logged in: the typed outcome of a good login (`Authenticate`).

Defined here, in the core, because the session reads it; `policy` builds it
(policy/auth/*, policy/users.py) and re-exports it as `Account`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .commands import Perm

__all__ = ["UserClass", "Principal"]


class UserClass(enum.Enum):
    REAL = "real"            # a system account (PAM)
    GUEST = "guest"          # a virtual user from the user DB
    ANONYMOUS = "anonymous"  # "ftp" / "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """The outcome of a good login."""

    name: str                 # login name as typed (anonymous: "ftp"/"anonymous")
    user_class: UserClass
    root: str                 # real directory that becomes the session's "/"
    grants: frozenset[Perm]
    umask: int
    anon_password: str = ""   # the e-mail an anonymous user gave (for logs)
    # Isolated mode: who the post-login process runs as, and how it is confined.
    uid: int | None = None    # None: the service's own (pooled mode)
    gid: int | None = None
    chroot: bool = True       # False: a real user not jailed (vsftpd's chroot_local_user=NO)
    start_dir: str = "/"      # first cwd, inside `root` (a non-chrooted user starts at home)
    quota_bytes: int | None = None  # the user file's quotas; None: the config's default (ops/quota.py)
    quota_files: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_class is UserClass.ANONYMOUS
