"""Anonymous FTP: users "ftp" and "anonymous" (any case), password = e-mail.

Not yet implemented: secure_email_list_enable, deny_email_enable.
"""

from __future__ import annotations

from ...proto.commands import Perm
from ..config import Config, number, text
from ..passwords import dummy_verify
from ..users import Account, UserClass, grants_for
from .base import LoginRefused, LoginRequest

__all__ = ["ANONYMOUS_NAMES", "AnonymousAuthenticator"]

ANONYMOUS_NAMES = frozenset({"ftp", "anonymous"})


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
