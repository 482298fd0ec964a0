"""User classes and what each may do: vsftpd's tunables -> a set of `Perm`.

`grants_for` is the one place where write_enable, anon_*_enable, chmod_enable
and friends become permissions; the session only asks `perm in grants`.
`cfg` is read by attribute only (the real `Config` or a test stand-in).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..proto.commands import Perm

__all__ = ["UserClass", "Account", "grants_for"]


class UserClass(enum.Enum):
    REAL = "real"            # a system account (PAM)
    GUEST = "guest"          # a virtual user from the user DB
    ANONYMOUS = "anonymous"  # "ftp" / "anonymous"


@dataclass(frozen=True, slots=True)
class Account:
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


# What write_enable=YES gives a real or guest user, before chmod_enable/mdtm_write.
_LOCAL_WRITES = frozenset({Perm.UPLOAD, Perm.OVERWRITE, Perm.MKDIR, Perm.DELETE, Perm.RENAME})


def grants_for(cfg, user_class: UserClass, *, write: bool | None = None) -> frozenset[Perm]:
    """The permissions of a `user_class` user under `cfg`.

    `write` (the user DB's per-user flag) replaces write_enable for this user
    when it is not None; every other tunable still applies.  A guest without
    that flag has anonymous-like rights unless virtual_use_local_privs=YES
    (vsftpd's rule), so a migrated guest_enable setup keeps its limits; a
    per-user `write` flag is the operator's explicit choice and gives local rights.
    """
    grants: set[Perm] = set()
    if cfg.download_enable:
        grants.add(Perm.DOWNLOAD)
    if cfg.dirlist_enable:
        grants.add(Perm.LIST)
    if not (cfg.write_enable if write is None else write):
        return frozenset(grants)  # write_enable is the master switch for every write
    anon_like = user_class is UserClass.ANONYMOUS or (
        user_class is UserClass.GUEST and write is None and not getattr(cfg, "virtual_use_local_privs", False))
    if anon_like:
        # Each anonymous write needs its own opt-in; SITE CHMOD never (as in vsftpd).
        if cfg.anon_upload_enable:
            grants.add(Perm.UPLOAD)
        if cfg.anon_mkdir_write_enable:
            grants.add(Perm.MKDIR)
        if cfg.anon_other_write_enable:
            grants |= {Perm.DELETE, Perm.RENAME, Perm.OVERWRITE}
            if cfg.mdtm_write:  # vsftpd's sandbox allows utime to anonymous only here
                grants.add(Perm.SET_MTIME)
    else:
        grants |= _LOCAL_WRITES
        if cfg.chmod_enable:
            grants.add(Perm.CHMOD)
        if cfg.mdtm_write:
            grants.add(Perm.SET_MTIME)
    return frozenset(grants)
