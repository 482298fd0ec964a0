"""Real system users (vsftpd's local_enable): PAM, then vsftpd's login rules.

`authenticate` runs PAM first and the policy refusals after it (root,
/etc/ftpusers, userlist, check_shell), so every refusal costs one password
check and the client sees the same "530 Login incorrect." either way.
Where the session starts and whether it is jailed follows vsftpd's
twoprocess.c; `chroot_plan` is that decision as a pure function.

With guest_enable=YES every login becomes a guest running as guest_username,
and a name need not be in the passwd database: PAM decides (vsftpd's virtual
users, e.g. pam_userdb).
"""

from __future__ import annotations

import os
import posixpath
import pwd
import stat
from collections.abc import Callable
from typing import Any

from ..config import Config, ConfigError, load_config
from ..passwords import dummy_verify
from ..rdns import bounded
from ..users import Account, UserClass, grants_for
from .base import LoginRefused, LoginRequest
from .pam import hold_sessions, pam_check
from .userfile import valid_user_name

__all__ = ["LocalAuthenticator", "refused_at_user", "userlist_filter", "chroot_plan", "USERLIST_TEXT"]

# userlist_log's line, in vsftpd's words (its RHEL patch), by userlist_deny: fixed texts, so a
# pre-login process forwarding one only says which
USERLIST_TEXT = {True: "User is in the deny user list.", False: "User is not in the allow user list."}


def _getpw(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: NUL or unencodable name
        return None


def _listed(path: str, name: str) -> bool | None:
    """Is `name` a line of `path` (surrounding blanks ignored)?  None: unreadable."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return any(line.strip() == name for line in f)
    except (OSError, ValueError):
        return None


def refused_at_user(cfg: Any, user: str) -> bool:
    """vsftpd's userlist check, made at USER before any password is asked.

    userlist_deny=YES refuses the names in userlist_file, NO refuses all
    others.  It applies to every name, anonymous ones too, as in vsftpd.  An
    unreadable list refuses everyone (vsftpd will not serve without it).
    """
    refuse = userlist_filter(cfg)
    return refuse is not None and refuse(user)


def userlist_filter(cfg: Any) -> Callable[[str], bool] | None:
    """refused_at_user with the list read once, now: a pre-login process reads
    no file after its chroot.  None when userlist_enable is off."""
    if not cfg.userlist_enable:
        return None
    try:
        with open(cfg.userlist_file or "", encoding="utf-8", errors="surrogateescape") as f:
            names = frozenset(line.strip() for line in f)
    except (OSError, ValueError):
        return lambda user: True  # as refused_at_user: no list, nobody
    deny = bool(cfg.userlist_deny)
    return lambda user: (user in names) == deny


def chroot_plan(cfg: Any, user: str, home: str, in_chroot_list: bool) -> tuple[str, bool, str]:
    """(root, chroot, start_dir) of a non-anonymous login, by vsftpd's rules.

    `user` is the login name, `home` the passwd home of the account it runs
    as (guest_username's under guest_enable).  user_sub_token in `home` and
    local_root becomes `user`.  chroot_list names the exceptions to
    chroot_local_user; guests are always jailed unless
    virtual_use_local_privs=YES.  With passwd_chroot_enable, a home such as
    /home/./alice jails at /home and starts in /alice (before local_root).
    Chrooted: root is the jail and start_dir is inside it.  Not chrooted:
    root is "/" and start_dir the directory itself.
    """
    def expand(path: str) -> str:
        return path.replace(cfg.user_sub_token, user) if cfg.user_sub_token else path

    home = expand(home)
    chroot = bool(cfg.chroot_local_user) != bool(cfg.chroot_list_enable and in_chroot_list)
    if cfg.guest_enable and not cfg.virtual_use_local_privs:
        chroot = True  # guests get the anonymous confinement, as in vsftpd
    top, inside = expand(cfg.local_root) if cfg.local_root else home, ""
    if cfg.passwd_chroot_enable and "/./" in home:
        top, inside = home.split("/./", 1)
    top = posixpath.normpath(top or "/")
    if chroot:
        return top, True, posixpath.normpath("/" + inside)
    return "/", False, posixpath.normpath(posixpath.join(top, inside.lstrip("/")))


class LocalAuthenticator:
    """Logins of system accounts through PAM service `pam_service_name`.

    The paths, `pam` and `lookup` (address -> name or "") are parameters for tests.
    """

    def __init__(self, cfg: Any, *, ftpusers_file: str = "/etc/ftpusers", shells_file: str = "/etc/shells",
                 pam: Callable[[str, str, str, str], tuple[bool, str]] = pam_check,
                 lookup: Callable[[str], str] = lambda ip: bounded(ip, verify=False)[0]) -> None:
        self._cfg = cfg
        self._lookup = lookup
        self._ftpusers = ftpusers_file
        self._shells = shells_file
        self._pam = pam
        hold_sessions(bool(cfg.session_support))  # the checker's session holder takes the handle

    def wants(self, user: str) -> bool:
        if not (self._cfg.local_enable and valid_user_name(user)):  # the name may end up in a path
            return False
        return bool(self._cfg.guest_enable) or _getpw(user) is not None

    def needs_password(self, user: str) -> bool:
        return True

    def authenticate(self, req: LoginRequest) -> Account:
        cfg = self._cfg
        if not self.wants(req.user):
            dummy_verify(req.password)  # as slow as a wrong password: no user enumeration
            raise LoginRefused("unknown user")
        ok, why = self._pam(cfg.pam_service_name or "ftp", req.user, req.password, self._rhost(req.remote_ip))
        if not ok:
            raise LoginRefused(f"PAM: {why}")
        pw = _getpw(req.user)  # None only for a PAM-only guest name
        if pw is not None and pw.pw_uid == 0:
            raise LoginRefused("root may not log in")
        if _listed(self._ftpusers, req.user):
            raise LoginRefused(f"listed in {self._ftpusers}")
        if refused_at_user(cfg, req.user):
            raise LoginRefused("refused by userlist_file")
        if cfg.check_shell and pw is not None and not _listed(self._shells, pw.pw_shell):
            raise LoginRefused(f"shell {pw.pw_shell} not in {self._shells} (check_shell=YES)")
        try:
            return self._account(self.user_config(cfg, req.user), req.user, pw)
        except ConfigError as e:
            raise LoginRefused(f"user_config_dir: {e}") from None

    def _rhost(self, remote_ip: str) -> str:
        """PAM_RHOST: with reverse_lookup_enable (vsftpd's default), the client's name
        when a reverse lookup finds one in time (for pam_access by name), else its address.
        The lookup runs in a child of this process (the checker's check child): never a loop."""
        if not self._cfg.reverse_lookup_enable or not remote_ip:
            return remote_ip
        return self._lookup(remote_ip) or remote_ip

    @staticmethod
    def user_config(cfg: Config, user: str) -> Config:
        """`cfg` with the options set in user_config_dir/<user> on top (vsftpd's
        per-user config); `cfg` itself when there is no such file.  The file
        must be a regular file owned by us (root), as vsftpd demands;
        otherwise, or if it is invalid, ConfigError."""
        if not cfg.user_config_dir or not valid_user_name(user):
            return cfg
        path = os.path.join(str(cfg.user_config_dir), user)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cfg
        except OSError as e:
            raise ConfigError(path, f"cannot read: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(path, "not a regular file owned by the server's user")
        per_user, _warnings = load_config(path)
        return cfg.replace(**{name: getattr(per_user, name) for name in per_user.explicit})

    def _account(self, cfg: Any, user: str, pw: pwd.struct_passwd | None) -> Account:
        """The Account of a login that passed every check; `cfg` is per-user."""
        guest = bool(cfg.guest_enable)
        runas_name = (cfg.guest_username or "ftp") if guest else user
        runas = _getpw(runas_name) if guest else pw
        if runas is None:
            raise LoginRefused(f"no such system user {runas_name}")
        if runas.pw_uid == 0:
            raise LoginRefused(f"would run as root ({runas.pw_name})")
        in_list = False
        if cfg.chroot_list_enable:
            listed = _listed(str(cfg.chroot_list_file or ""), user)
            if listed is None:  # vsftpd ends the session too
                raise LoginRefused(f"cannot read chroot_list_file {cfg.chroot_list_file}")
            in_list = listed
        root, chroot, start_dir = chroot_plan(cfg, user, runas.pw_dir, in_list)
        if not root.startswith("/") or not start_dir.startswith("/"):
            raise LoginRefused(f"not an absolute directory: {root if chroot else start_dir}")
        user_class = UserClass.GUEST if guest else UserClass.REAL
        anon_like = guest and not cfg.virtual_use_local_privs  # vsftpd: such guests use anon_umask
        return Account(
            name=user, user_class=user_class, root=root, grants=grants_for(cfg, user_class),
            umask=cfg.anon_umask if anon_like else cfg.local_umask,
            uid=runas.pw_uid, gid=runas.pw_gid, chroot=chroot, start_dir=start_dir,
        )
