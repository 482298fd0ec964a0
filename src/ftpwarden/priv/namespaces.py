"""isolate and isolate_network: every session process in namespaces of its own (vsftpd 3's defaults).

`isolate`: new PID and IPC namespaces, so a session process sees no other
process (no kill, no ptrace target, no /proc of them) and no SysV IPC object or
POSIX message queue of the host.  `isolate_network`: a new network namespace
holding only a loopback that is down, so the process can make no connection
nor listen anywhere; every socket it uses (its client's, PASV listeners, PORT
connections) is made by the root side, in the root namespaces, and passed in.

The forking process (the zygote; inetd mode's monitor) is root in the root
namespaces and stays there.  unshare(CLONE_NEWPID) changes only where its next
children go, so `Namespaces.fork` asks for it right before one fork and goes
back to its own namespace (setns) right after; the child unshares IPC and
network itself (`Namespaces.enter`), as root, before its privilege drop.

The child is PID 1 of its namespace.  The kernel drops a signal whose action
is the default there (SIGKILL and SIGSTOP from outside excepted), so `enter`
gives the terminating signals left at their default a handler that ends the
process as the default would: SIGTERM from the broker (and as the identity
worker's parent-death signal) still ends it.  It forks nothing, so it has no
child to reap.  Its pid as the broker and the logs know it is the outer one,
fork's answer in the parent.

Where the kernel refuses (EPERM, EINVAL: a container without CAP_SYS_ADMIN, a
kernel built without them), sessions run without those namespaces and the
forking process says so once.  Any other failure in a child ends that child:
its session never runs outside the namespaces it was configured for.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["Namespaces", "enter", "keep_signals", "wanted", "CLONE_NEWIPC", "CLONE_NEWNET", "CLONE_NEWPID"]

CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_REFUSALS = (errno.EPERM, errno.EINVAL)  # the kernel will not: run without, as vsftpd does
# the signals whose default action ends a process (SIGKILL cannot be caught, and needs no help)
_ENDING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGALRM)
_NAMES = {CLONE_NEWPID: "PID", CLONE_NEWIPC: "IPC", CLONE_NEWNET: "network"}

log = logging.getLogger("ftpwarden.namespaces")
_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def wanted(cfg: Any) -> int:
    """The namespaces `cfg` asks for (CLONE_* flags)."""
    return ((CLONE_NEWPID | CLONE_NEWIPC) if cfg.isolate else 0) | (CLONE_NEWNET if cfg.isolate_network else 0)


class Namespaces:
    """One forking process's use of namespaces: what the kernel refused (asked once)
    and the descriptor of its own PID namespace, to come back to after each fork."""

    def __init__(self) -> None:
        self.refused = 0  # CLONE_* flags the kernel refused: never asked again
        self.probed = 0  # the flags whose answer is known (a reload may ask for more)
        self._own_pid_ns = -1

    def fork(self, cfg: Any, fork: Callable[[int], int], without: int = 0) -> int:
        """Call `fork(flags)`, which forks once (its child passes `flags` to `enter`
        and never returns into it), so that the child starts in a new PID namespace
        if `cfg` wants one and the kernel lets it; fork's answer.  `without`: the
        namespaces this child must not get (CLONE_NEWNET for one that needs the network)."""
        flags = wanted(cfg) & ~without
        if flags & ~CLONE_NEWPID & ~self.probed:
            self._probe(flags & ~CLONE_NEWPID & ~self.probed)
        flags &= ~self.refused
        if not flags & CLONE_NEWPID:
            return fork(flags)
        if self._own_pid_ns < 0:
            self._own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _unshare(CLONE_NEWPID)
        except OSError as e:
            if e.errno not in _REFUSALS:
                raise
            self._refuse(CLONE_NEWPID, e)
            return fork(flags & ~CLONE_NEWPID)
        try:
            return fork(flags)
        finally:  # the next child must not be born into this one's namespace
            try:
                _setns(self._own_pid_ns, CLONE_NEWPID)
            except OSError as e:  # never seen; carrying on would put every later child in one namespace
                raise RuntimeError(f"cannot return to our own PID namespace: {e}") from None

    def close_in_child(self) -> None:
        """The descriptor of the parent's PID namespace is no child's business."""
        if self._own_pid_ns >= 0:
            os.close(self._own_pid_ns)
            self._own_pid_ns = -1

    def _probe(self, flags: int) -> None:
        """Whether the kernel lets a child unshare `flags` (IPC, network): a child
        that tries and exits with the errno, so the answer is logged here, once."""
        self.probed |= flags
        for flag in (CLONE_NEWIPC, CLONE_NEWNET):
            if not flags & flag:
                continue
            pid = os.fork()
            if pid == 0:
                try:
                    _unshare(flag)
                    code = 0
                except OSError as e:
                    code = e.errno or 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code in _REFUSALS:
                self._refuse(flag, OSError(code, os.strerror(code)))

    def _refuse(self, flag: int, e: OSError) -> None:
        self.refused |= flag
        what = _NAMES[flag]
        option = "isolate_network" if flag == CLONE_NEWNET else "isolate"
        log.warning("%s=YES: the kernel refuses a new %s namespace (%s); sessions run without one",
                    option, what, os.strerror(e.errno) if e.errno else e)


def enter(flags: int) -> None:
    """In the child, first thing, as root: the IPC and network namespaces of `flags`;
    in a new PID namespace, the terminating signals keep their effect (see above).
    An error ends the child (the caller's fork_child): no session runs unconfined."""
    keep_signals(flags)
    rest = flags & (CLONE_NEWIPC | CLONE_NEWNET)
    if rest:
        _unshare(rest)


def keep_signals(flags: int) -> None:
    """The first process of a new PID namespace (`flags`): each terminating signal
    left at its default action gets a handler that ends the process, as the default
    would anywhere else.  Call it as early as the child can (enter calls it too)."""
    if flags & CLONE_NEWPID and os.getpid() == 1:
        for sig in _ENDING:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _end_as_default)


def _end_as_default(signum: int, _frame: Any) -> None:
    """What the default action would do: end the process now."""
    os._exit(128 + signum)
