"""User classes and what each may do: vsftpd's tunables -> a set of `Perm`.

`grants_for` is the one place where write_enable, anon_*_enable, chmod_enable
and friends become permissions; the session only asks `perm in grants`.
"""

from __future__ import annotations

from ..proto.commands import Perm
from ..proto.principal import Principal, UserClass
from .config import Config

__all__ = ["UserClass", "Account", "grants_for"]

# The typed outcome of a good login lives in the core (proto/principal.py),
# which reads it; policy builds it under its historical name.
Account = Principal


# What write_enable=YES gives a real or guest user, before chmod_enable/mdtm_write.
_LOCAL_WRITES = frozenset({Perm.UPLOAD, Perm.OVERWRITE, Perm.MKDIR, Perm.DELETE, Perm.RENAME})


def grants_for(cfg: Config, user_class: UserClass, *, write: bool | None = None) -> frozenset[Perm]:
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
        # getattr: the test stand-ins for Config predate this tunable
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
