"""Errors of the protocol core: whose fault it is decides what happens next."""

from __future__ import annotations

__all__ = ["FtpError", "RemoteProtocolError", "LocalProtocolError"]


class FtpError(Exception):
    """A handler stops early with this reply; the session goes on."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class RemoteProtocolError(FtpError):
    """The peer sent nonsense (bad syntax, bad address). `close` ends the session."""

    def __init__(self, code: int, text: str, *, close: bool = False) -> None:
        super().__init__(code, text)
        self.close = close


class LocalProtocolError(Exception):
    """Our own bug: the session must end (fail closed), the server lives on."""
