"""The privileged side's channels (one message per datagram) and children (fork, wake, reap, end).

SOCK_SEQPACKET keeps message boundaries, so a message is never split or
merged; file descriptors travel alongside as SCM_RIGHTS.  Receiving is
blocking (the monitor is blocking by design; workers call it from a thread).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

from .creds import set_parent_death_signal
from .messages import MAX_MESSAGE, ChannelError, Message, decode, encode

__all__ = ["Channel", "ChannelClosed", "channel_pair", "fork_child", "fork_with_channel", "wake_on_signals", "drain",
           "reap_exited", "end_child"]


class ChannelClosed(ChannelError):
    """The other side went away."""


def channel_pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


def fork_child(body: Callable[[], int], on_error: Callable[[], None], death_signal: int = signal.SIGKILL) -> int:
    """Fork a child that runs `body()` and exits with what it returns; it dies
    with us (the death signal is armed and our pid re-checked first), and an
    exception in it goes to `on_error`, never back into our code."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            set_parent_death_signal(death_signal, parent=parent)
            code = body()
        except BaseException:
            on_error()
        finally:
            os._exit(code)
    return pid


def fork_with_channel(body: Callable[[Channel], int], on_error: Callable[[], None],
                      death_signal: int = signal.SIGKILL) -> tuple[int, Channel]:
    """fork_child with a channel: the child runs `body(its end)`; ours is returned."""
    mine, theirs = channel_pair()

    def child() -> int:
        mine.close()
        return body(theirs)

    pid = fork_child(child, on_error, death_signal)
    theirs.close()
    return pid, mine


def wake_on_signals() -> tuple[int, int]:
    """A pipe select can watch that every signal writes to, SIGCHLD included:
    a child that ends wakes the loop and is reaped at once."""
    wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wake


def drain(fd: int) -> None:
    """Empty wake_on_signals' pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def reap_exited() -> list[int]:
    """Reap every child that has ended; their pids."""
    ended: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append(pid)


def end_child(pid: int, wait: float, *, term: bool = False) -> int | None:
    """Reap our child `pid`, killing it if it has not ended within `wait` seconds;
    `term`: ask it first (SIGTERM).  Its wait status (None if it was reaped elsewhere)."""
    if term:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
        except ChildProcessError:
            return None
        if time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
                return os.waitpid(pid, 0)[1]
            except (ProcessLookupError, ChildProcessError):
                return None
        time.sleep(0.005)


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
