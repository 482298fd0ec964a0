"""The client's host name from a reverse lookup, for PAM_RHOST and hosts.allow.

`lookup` blocks as long as the resolver does; `bounded` runs it in a forked
child and gives up after `timeout` seconds (the child is killed), so a slow
name server costs one login at most that long and leaves no thread behind
in a process that goes on to parse client bytes.  Pooled mode runs `lookup`
in an executor under asyncio.wait_for instead (no fork of a busy process).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - getaddrinfo(name) needs it; nothing is imported after a jail or a sandbox
import os
import select
import signal
import socket

__all__ = ["LOOKUP_SECONDS", "lookup", "bounded"]

LOOKUP_SECONDS = 3.0  # vsftpd has none (libc's resolver timeouts); a login should not wait longer
_MAX_NAME = 1025  # NI_MAXHOST


def _sockaddr(addr: str) -> tuple[str, int] | tuple[str, int, int, int]:
    return (addr, 0, 0, 0) if ":" in addr else (addr, 0)


def lookup(addr: str, verify: bool = True) -> tuple[str, bool]:
    """(name, paranoid): the reverse name of `addr` ("" if none).  With `verify`,
    a name whose forward lookup does not give `addr` back is no name and
    `paranoid` is True (hosts_access(5)'s PARANOID)."""
    try:
        name = socket.getnameinfo(_sockaddr(addr), socket.NI_NAMEREQD)[0]
    except (OSError, UnicodeError, ValueError, LookupError):
        return "", False
    if not verify:
        return name, False
    try:
        back = {str(info[4][0]).split("%", 1)[0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError, ValueError, LookupError):
        back = set()
    return (name, False) if addr.split("%", 1)[0] in back else ("", True)


def bounded(addr: str, timeout: float = LOOKUP_SECONDS, verify: bool = True) -> tuple[str, bool]:
    """`lookup` in a child process, at most `timeout` seconds; ("", False) when it takes longer."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return "", False
    if pid == 0:  # the child: answer and exit, whatever happens
        try:
            os.close(r)
            name, paranoid = lookup(addr, verify)
            os.write(w, (("P" if paranoid else "N") + name).encode("utf-8", "replace")[:_MAX_NAME + 1])
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        if poller.poll(max(0, int(timeout * 1000))):
            data = os.read(r, _MAX_NAME + 1)
    finally:
        os.close(r)
        if not data:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    if not data:
        return "", False
    text = data.decode("utf-8", "replace")
    return text[1:], text[0] == "P"
