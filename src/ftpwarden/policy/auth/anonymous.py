"""Anonymous FTP: users "ftp" and "anonymous" (any case), password = e-mail.

vsftpd's two e-mail lists (one password per line, exact match, read at each
login so an edit counts at once): deny_email_enable refuses a password listed
in banned_email_file; secure_email_list_enable accepts only one listed in
email_password_file (an empty password never).  A list that cannot be read
refuses every anonymous login (vsftpd will not start the session either).
"""

from __future__ import annotations

from ...proto.commands import Perm
from ..config import Config, number, text
from ..passwords import dummy_verify
from ..users import Account, UserClass, grants_for
from .base import LoginRefused, LoginRequest

__all__ = ["ANONYMOUS_NAMES", "AnonymousAuthenticator", "email_refusal"]

ANONYMOUS_NAMES = frozenset({"ftp", "anonymous"})
_LIST_MAX = 1 << 20  # bytes read of an e-mail list


def _lines(path: str) -> frozenset[str] | None:
    """The lines of `path` as vsftpd compares them (split at \\n only); None if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_LIST_MAX)
    except (OSError, ValueError):
        return None
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's last newline ends a line; it does not start an empty one
    return frozenset(lines)


def email_refusal(cfg: Config, password: str) -> str | None:
    """Why the anonymous password `password` is refused by the e-mail lists, or None."""
    if cfg.deny_email_enable:
        banned = _lines(text(cfg, "banned_email_file") or "")
        if banned is None:
            return f"cannot read banned_email_file {cfg.banned_email_file}"
        if password in banned:
            return "password listed in banned_email_file"
    if cfg.secure_email_list_enable:
        accepted = _lines(text(cfg, "email_password_file") or "")
        if accepted is None:
            return f"cannot read email_password_file {cfg.email_password_file}"
        if not password or password not in accepted:
            return "password not listed in email_password_file"
    return None


class AnonymousAuthenticator:
    def __init__(self, cfg: Config, default_root: str = "") -> None:
        """`default_root` serves when anon_root is unset (pooled quick mode,
        or the ftp_username's home found by the caller)."""
        self._cfg = cfg
        self._root = text(cfg, "anon_root") or default_root
        if cfg.anonymous_enable and not self._root:
            raise ValueError("anonymous_enable=YES needs anon_root (no default root given)")
        self._grants: frozenset[Perm] | None = None  # built at the first login, shared by all

    def wants(self, user: str) -> bool:
        return bool(self._cfg.anonymous_enable) and user.isascii() and user.lower() in ANONYMOUS_NAMES

    def needs_password(self, user: str) -> bool:
        return not self._cfg.no_anon_password

    def authenticate(self, req: LoginRequest) -> Account:
        if not self.wants(req.user):
            dummy_verify(req.password)  # same cost as any other refusal of an unknown name
            raise LoginRefused("not an anonymous login (or anonymous_enable=NO)")
        if why := email_refusal(self._cfg, req.password):
            raise LoginRefused(why)
        return Account(
            name=req.user,
            user_class=UserClass.ANONYMOUS,
            root=self._root,
            grants=self._anon_grants(),
            umask=number(self._cfg, "anon_umask"),
            anon_password=req.password,  # any text is accepted: it is the e-mail, for logs
        )

    def _anon_grants(self) -> frozenset[Perm]:
        if self._grants is None:
            self._grants = grants_for(self._cfg, UserClass.ANONYMOUS)
        return self._grants
