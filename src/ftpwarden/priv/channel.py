"""The socketpair between a session's monitor and its worker: one message per datagram.

SOCK_SEQPACKET keeps message boundaries, so a message is never split or
merged; file descriptors travel alongside as SCM_RIGHTS.  Receiving is
blocking (the monitor is blocking by design; workers call it from a thread).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

from .creds import set_parent_death_signal
from .messages import MAX_MESSAGE, ChannelError, Message, decode, encode

__all__ = ["Channel", "ChannelClosed", "channel_pair", "fork_with_channel"]


class ChannelClosed(ChannelError):
    """The other side went away."""


def channel_pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


def fork_with_channel(body: Callable[[Channel], int], on_error: Callable[[], None],
                      death_signal: int = signal.SIGKILL) -> tuple[int, Channel]:
    """Fork a child that runs `body(its end)` and exits with what it returns;
    it dies with us (the death signal is armed and our pid re-checked first),
    and an exception in it goes to `on_error`, never back into our code."""
    mine, theirs = channel_pair()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            set_parent_death_signal(death_signal, parent=parent)
            mine.close()
            code = body(theirs)
        except BaseException:
            on_error()
        finally:
            os._exit(code)
    theirs.close()
    return pid, mine


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: Message, fds: tuple[int, ...] = ()) -> None:
        data = encode(msg)
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionError) as e:
            raise ChannelClosed(str(e)) from None

    def recv(self, *expected: type[Message], max_fds: int = 0) -> tuple[Message, list[int]]:
        """The next message, which must be one of `expected`; else ChannelError."""
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE + 1, max(max_fds, 1))
        except ConnectionError as e:
            raise ChannelClosed(str(e)) from None
        try:
            if not data:
                raise ChannelClosed("peer closed the channel")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ChannelError("truncated message or descriptors")
            if len(fds) > max_fds:
                raise ChannelError("unexpected file descriptors")
            msg = decode(data)
            if expected and not isinstance(msg, expected):
                raise ChannelError(f"unexpected {type(msg).__name__}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return msg, fds

    def close(self) -> None:
        self.sock.close()
