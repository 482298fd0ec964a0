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

__all__ = ["drop_privileges", "set_parent_death_signal", "no_new_privs", "CredentialError",
           "close_strays", "minimal_environment", "WORKER_PATH"]

WORKER_PATH = "/usr/bin:/bin"
_KEPT_VARIABLES = ("LANG", "LC_ALL", "TZ")  # the service's locale and zone, if it has them

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


def set_parent_death_signal(sig: int = signal.SIGKILL, *, parent: int | None = None, stat_fd: int = -1) -> None:
    """A worker dies with its monitor: no orphan keeps a client connection.

    With `parent` (the pid that forked us, read before the fork), also check it
    is still our parent: had it ended before the signal was armed, no signal
    would ever come, so we end now instead.
    """
    _prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and _parent_pid(stat_fd) != parent:
        raise CredentialError("the parent process ended before the death signal was set")


def _parent_pid(stat_fd: int = -1) -> int:
    """getppid(), except in the first process of a PID namespace (isolate), whose
    parent is outside it (getppid() is 0): then the parent's pid as /proc, the
    root namespace's, shows it, read through `stat_fd` (our /proc/self/stat,
    opened before a chroot) or by name.  0 if that cannot be read."""
    ppid = os.getppid()
    if ppid or os.getpid() != 1:
        return ppid
    try:
        if stat_fd >= 0:
            data = os.pread(stat_fd, 4096, 0)
        else:
            with open("/proc/self/stat", "rb") as f:
                data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[1])  # field 4, after the name in parentheses
    except (OSError, ValueError, IndexError):
        return 0


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
    `memory_limit`: the address space it may add to what it has mapped now
    (RLIMIT_AS).  Relative, because a fork inherits its parent's mappings: an
    absolute cap under them would fail every thread stack, and CPython then
    waits forever for a thread that never starts.
    """
    # in a PID namespace of its own (isolate) our parent is named by /proc, gone after the chroot
    stat_fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC) if os.getppid() == 0 else -1
    death_signal, parent = _parent_death_signal(), _parent_pid(stat_fd)
    mapped = _mapped_bytes() if memory_limit else 0  # /proc is gone after the chroot
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
        try:
            set_parent_death_signal(death_signal, parent=parent, stat_fd=stat_fd)
        finally:
            if stat_fd >= 0:
                os.close(stat_fd)
    elif stat_fd >= 0:
        os.close(stat_fd)
    no_new_privs()
    _prctl(_PR_SET_DUMPABLE, 0)  # no core files or ptrace from other processes of this uid
    if memory_limit:
        limit = mapped + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mapped_bytes() -> int:
    """This process's address space now (VmSize)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def close_strays(keep: set[int]) -> None:
    """Close every descriptor but `keep` and stderr (where a crash is reported):
    whatever the launcher left open must not reach a worker.  stdin and stdout
    become /dev/null unless kept, so a later socket never takes their numbers
    (a stray print would go to it)."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in (0, 1):
        if fd not in keep:
            os.dup2(devnull, fd, inheritable=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(soft, hard, max(keep, default=0) + 1)
    if top == resource.RLIM_INFINITY or top > 1 << 20:
        top = 1 << 20  # close_range(2) copes; a fallback loop must end
    low = 3
    for fd in sorted(keep | {0, 1, 2}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, top)  # devnull too, unless it took a free number below 3 (then it stays there)


def minimal_environment() -> None:
    """PATH, and the service's LANG, LC_ALL and TZ: nothing else of the launcher's
    environment (it may hold secrets).  The strings the kernel placed at exec
    (what /proc/PID/environ shows, and what this process could read back from
    its own memory) are overwritten too; unsetenv alone leaves them there."""
    keep = {"PATH": WORKER_PATH} | {k: os.environ[k] for k in _KEPT_VARIABLES if k in os.environ}
    os.environ.clear()
    os.environ.update(keep)
    _overwrite_exec_environment(b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0"
                                         for k, v in keep.items()))


def _overwrite_exec_environment(block: bytes) -> None:
    """Replace the exec-time environment strings with `block`, zero-padded.  After
    os.environ.clear() nothing in libc points there any more (setenv copied the
    new values); a block that does not fit leaves the area all zeros."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return  # no /proc: os.environ is still minimal
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50 and 51 of stat)
    size = end - start
    if size <= 0:
        return
    data = block if len(block) <= size else b""
    ctypes.memmove(start, data.ljust(size, b"\0"), size)
