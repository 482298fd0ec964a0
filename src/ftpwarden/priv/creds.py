"""The one place credentials and roots change, always in the same order.

chroot (while still root) -> chdir("/") -> setgroups -> setresgid -> setresuid
-> check all three ids -> parent-death signal again -> no_new_privs.  Any
failure raises: the caller's process must then exit, never carry on with
partial privileges.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

__all__ = ["drop_privileges", "set_parent_death_signal", "no_new_privs", "CredentialError"]

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class CredentialError(Exception):
    pass


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise CredentialError(f"prctl({option}) failed: {os.strerror(err)}")


def set_parent_death_signal(sig: int = signal.SIGKILL, *, parent: int | None = None) -> None:
    """A worker dies with its monitor: no orphan keeps a client connection.

    With `parent` (the pid that forked us, read before the fork), also check it
    is still our parent: had it ended before the signal was armed, no signal
    would ever come, so we end now instead.
    """
    _prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        raise CredentialError("the parent process ended before the death signal was set")


def _parent_death_signal() -> int:
    sig = ctypes.c_int(0)
    if _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) != 0:
        raise CredentialError(f"prctl(PR_GET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    return sig.value


def no_new_privs() -> None:
    """setuid binaries and file capabilities can never raise us again."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def drop_privileges(uid: int, gid: int, *, groups: list[int] | None = None, root: str | None = None,
                    memory_limit: int | None = None) -> None:
    """Become uid/gid for good, optionally jailed in `root`.

    `groups` are the supplementary groups (empty for nopriv, anonymous and guests).
    A parent-death signal set before survives the change: the kernel clears it
    on any uid/gid change, so it is set again after and the parent checked.
    """
    death_signal, parent = _parent_death_signal(), os.getppid()
    if root is not None:
        os.chroot(root)
    os.chdir("/")
    os.setgroups(groups or [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise CredentialError("ids did not change as asked")
    if uid != 0:
        try:  # there must be no way back
            os.setresuid(0, 0, 0)
        except PermissionError:
            pass
        else:
            raise CredentialError("could regain root after dropping it")
    if death_signal:  # cleared by setresuid; a parent dying meanwhile changes getppid()
        set_parent_death_signal(death_signal, parent=parent)
    no_new_privs()
    _prctl(_PR_SET_DUMPABLE, 0)  # no core files or ptrace from other processes of this uid
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
