"""What every authenticator offers, and `chain` to try several in order.

An authenticator turns (user, password) into an `Account` or raises
`LoginRefused`.  The reason is for the operator's log only: the client always
gets the same "530 Login incorrect.", and an unknown user costs the same
hashing time as a wrong password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..passwords import dummy_verify
from ..users import Account

__all__ = ["LoginRequest", "LoginRefused", "LoginUnavailable", "Authenticator", "chain"]


@dataclass(frozen=True, slots=True)
class LoginRequest:
    user: str
    password: str = field(repr=False)  # kept out of reprs, hence out of logs and tracebacks
    remote_ip: str = ""


class LoginRefused(Exception):
    """A login failed.  `reason` is for logs; it never holds the password."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginUnavailable(LoginRefused):
    """No decision possible now (the user database cannot be reached): the client
    gets 421 and the connection closes; not a failed login (no ban, no delay)."""


@runtime_checkable
class Authenticator(Protocol):
    def wants(self, user: str) -> bool:
        """May this authenticator handle `user`?  Cheap: no password, no hashing."""
        ...

    def authenticate(self, req: LoginRequest) -> Account:
        """Blocking (may hash).  Raises `LoginRefused`."""
        ...

    def needs_password(self, user: str) -> bool:
        """False only where no password is asked (anonymous, no_anon_password=YES)."""
        ...


class _Chain:
    def __init__(self, auths: tuple[Authenticator, ...]) -> None:
        self._auths = auths

    def _pick(self, user: str) -> Authenticator | None:
        return next((a for a in self._auths if a.wants(user)), None)

    def wants(self, user: str) -> bool:
        return self._pick(user) is not None

    def needs_password(self, user: str) -> bool:
        auth = self._pick(user)
        return True if auth is None else auth.needs_password(user)  # unknown users are asked too

    def authenticate(self, req: LoginRequest) -> Account:
        auth = self._pick(req.user)
        if auth is None:
            dummy_verify(req.password)
            raise LoginRefused("unknown user")
        return auth.authenticate(req)


def chain(*auths: Authenticator) -> Authenticator:
    """The first authenticator that wants a user decides for that user."""
    return _Chain(auths)
