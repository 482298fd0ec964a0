"""Jail: the only way a session touches files (pooled-mode confinement).

We hold an O_PATH fd of the user's root and resolve every client path with
openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) beneath it.  The kernel then
treats the root fd as "/" for the whole lookup: "..", absolute symlinks and
relative symlinks all stay inside, /proc magic links are refused, and a
concurrent rename cannot move a lookup out half-way (no check-then-use race).

Operations on a name (mkdir, unlink, rename, lstat) open the *parent* with
openat2 and act on one plain component with the *at() call, so the last
component is never resolved outside the root either.

All calls block; the caller decides whether to run them in a thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable

from ..proto.listing import Entry
from ..proto.paths import basename, parent, resolve, to_relative

try:  # optional C accelerator of listdir (setup.py); same entries, fewer objects
    from . import _scandir
except ImportError:
    _scandir = None  # type: ignore[assignment]

__all__ = ["Jail"]

_SYS_OPENAT2 = 437  # same number on x86-64 and arm64 (unified syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
# Jail never creates or sets setuid/setgid/sticky bits: in pooled mode every
# file belongs to the service uid, and a client-made setuid file would hand
# that uid to any local user (vsftpd masks chmod with 0777 for the same reason).
_MODE_MASK = 0o777


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
log = logging.getLogger("ftpwarden.jail")


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    if "\0" in path:
        raise ValueError("NUL in path")
    how = _OpenHow(flags, mode, _RESOLVE)
    tries = 0
    while True:
        fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                      ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        tries += 1
        # EAGAIN: a concurrent rename raced a ".." lookup; the kernel refused
        # rather than risk an escape, and openat2(2) says to retry.
        if err == errno.EINTR or (err == errno.EAGAIN and tries < 8):
            continue
        raise OSError(err, os.strerror(err), path)


def _norm(vpath: str) -> str:
    # Callers pass paths.resolve() output; normalising again costs nothing and
    # means a stray ".." can never be the one name given to an *at() call.
    # (NUL is refused there too: ctypes would silently cut the path at it.)
    if not vpath.startswith("/"):
        raise ValueError(f"virtual path is not absolute: {vpath!r}")
    return resolve("/", vpath)


class Jail:
    """Files beneath `root`, confined by the kernel. Also a context manager."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)  # for messages only
        self._fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # probe now: without openat2 there is no confinement, so no jail
            os.close(_openat2(self._fd, ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            os.close(self._fd)
            self._fd = -1
            raise OSError(exc.errno, f"openat2(2) with RESOLVE_IN_ROOT is unavailable "
                          f"({exc.strerror}); pooled mode needs Linux >= 5.6 and a "
                          f"seccomp policy that allows it") from None

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    # ------------------------------------------------------------ helpers

    def _open_path(self, vpath: str, flags: int, mode: int = 0) -> int:
        flags |= os.O_CLOEXEC
        if not flags & os.O_PATH:  # openat2 is strict: O_PATH takes no O_NOCTTY
            flags |= os.O_NOCTTY
        return _openat2(self._fd, to_relative(_norm(vpath)), flags, mode)

    def _parent(self, vpath: str) -> tuple[int, str]:
        """O_PATH fd of the parent directory, and the last component."""
        vpath = _norm(vpath)
        name = basename(vpath)
        if not name:  # the root itself cannot be created, removed or renamed
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), vpath)
        return self._open_path(parent(vpath), os.O_PATH | os.O_DIRECTORY), name

    # ------------------------------------------------------------ opening and stat

    def open(self, vpath: str, flags: int, mode: int = 0o666) -> int:
        """Raw fd of `vpath`; O_CLOEXEC|O_NOCTTY always added."""
        # openat2 rejects a non-zero mode unless a file may be created.
        creating = flags & os.O_CREAT or (flags & os.O_TMPFILE) == os.O_TMPFILE
        return self._open_path(vpath, flags, mode & _MODE_MASK if creating else 0)

    def stat(self, vpath: str) -> os.stat_result:
        """Follows symlinks, but only inside the root."""
        fd = self._open_path(vpath, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lstat(self, vpath: str) -> os.stat_result:
        if _norm(vpath) == "/":
            return os.fstat(self._fd)
        pfd, name = self._parent(vpath)
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def is_dir(self, vpath: str) -> bool:
        """True for a directory (symlinks followed inside the root); False if it cannot be stat'ed."""
        try:
            return stat.S_ISDIR(self.stat(vpath).st_mode)
        except OSError:
            return False

    def listdir(self, vpath: str) -> list[Entry]:
        """lstat data of each entry, sorted by name, with symlink targets."""
        fd = self._open_path(vpath, os.O_RDONLY | os.O_DIRECTORY)
        if _scandir is not None:
            try:  # the same loop in C, on this fd: only single names beneath it
                return _scandir.scan(fd, Entry)
            finally:
                os.close(fd)
        # Names first (os.listdir makes no per-name object), sorted as plain
        # strings, then one lstat each: a directory may hold 10,000 names and
        # this loop is most of a LIST's cost (issue 16).
        try:
            names = os.listdir(fd)
            names.sort()
            entries: list[Entry] = []
            append = entries.append
            lstat, readlink = os.stat, os.readlink
            new = tuple.__new__
            for name in names:
                try:
                    st = lstat(name, dir_fd=fd, follow_symlinks=False)
                    mode = st.st_mode
                    target = readlink(name, dir_fd=fd) if mode & 0o170000 == stat.S_IFLNK else None
                except FileNotFoundError:  # removed while we listed
                    continue
                append(new(Entry, (name, mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                                   st.st_mtime, st.st_ino, st.st_dev, target)))
            return entries
        finally:
            os.close(fd)

    # ------------------------------------------------------------ changes

    def mkdir(self, vpath: str, mode: int = 0o777) -> None:
        self._in_parent(vpath, lambda name, pfd: os.mkdir(name, mode & _MODE_MASK, dir_fd=pfd))

    def rmdir(self, vpath: str) -> None:
        self._in_parent(vpath, lambda name, pfd: os.rmdir(name, dir_fd=pfd))

    def unlink(self, vpath: str) -> None:
        self._in_parent(vpath, lambda name, pfd: os.unlink(name, dir_fd=pfd))

    def _in_parent(self, vpath: str, act: Callable[[str, int], None]) -> None:
        """`act(name, parent_fd)` on the last part of `vpath`, in its parent directory."""
        pfd, name = self._parent(vpath)
        try:
            act(name, pfd)
        finally:
            os.close(pfd)

    def rename(self, src_vpath: str, dst_vpath: str, *, replace: bool = True) -> None:
        """`replace=False`: fail with EEXIST if `dst_vpath` exists, atomically
        (renameat2 RENAME_NOREPLACE; an exists() check first would be a race)."""
        spfd, sname = self._parent(src_vpath)
        try:
            dpfd, dname = self._parent(dst_vpath)
            try:
                if replace:
                    os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
                else:
                    _rename_noreplace(spfd, sname, dpfd, dname)
            finally:
                os.close(dpfd)
        finally:
            os.close(spfd)

    def move_out(self, vpath: str, dst_dir_fd: int, dst_name: str) -> None:
        """Move `vpath` out of the root into a directory given by its fd (upload
        quarantine), never replacing; the lookup of `vpath` stays confined."""
        pfd, name = self._parent(vpath)
        try:
            _rename_noreplace(pfd, name, dst_dir_fd, dst_name)
        finally:
            os.close(pfd)

    # chmod and utime: there is no chmodat/utimensat that takes a path *and*
    # RESOLVE_IN_ROOT, and fchmod/futimens refuse O_PATH fds (a plain open
    # could block on a FIFO or need read permission).  So we resolve with
    # openat2 to an O_PATH fd and act on that inode, never on the client's path
    # again: through /proc/self/fd/N when /proc really is procfs, else with the
    # calls that take an O_PATH fd (fchmodat2 and utimensat with AT_EMPTY_PATH,
    # Linux 6.6), else by the path only where the jail's root is the process's
    # own root (an isolated-mode chroot: no lookup can leave it), else not at
    # all (550).  Anywhere else a second lookup of the path would follow a
    # planted symlink out of the root.

    def chmod(self, vpath: str, mode: int) -> None:
        fd = self._open_path(vpath, os.O_PATH)
        try:
            _on_inode(fd, self._by_path(vpath), "chmod",
                      lambda name, dir_fd: os.chmod(name, mode & _MODE_MASK, dir_fd=dir_fd),
                      lambda: _fchmodat2_empty(fd, mode & _MODE_MASK))
        finally:
            os.close(fd)

    def utime(self, vpath: str, mtime: float) -> None:
        """Set the modification time; the access time is kept."""
        fd = self._open_path(vpath, os.O_PATH)
        try:
            times = (os.fstat(fd).st_atime_ns, round(mtime * 1e9))
            _on_inode(fd, self._by_path(vpath), "utime",
                      lambda name, dir_fd: os.utime(name, ns=times, dir_fd=dir_fd),
                      lambda: _utimensat_empty(fd, times))
        finally:
            os.close(fd)

    def _by_path(self, vpath: str) -> tuple[str, int] | None:
        """(name, dir_fd) to reach `vpath` by a plain lookup, only when that cannot
        leave the root: the root is this process's "/" itself (a kernel chroot)."""
        root, mine = os.fstat(self._fd), os.stat("/")
        if (root.st_dev, root.st_ino) != (mine.st_dev, mine.st_ino):
            return None
        return to_relative(_norm(vpath)), self._fd


# ------------------------------------------------------------ acting on an O_PATH fd

_PROC_FDS = "/proc/self/fd"
_PROC_SUPER_MAGIC = 0x9FA0  # statfs f_type of procfs: a user cannot fake a filesystem type
_SYS_FCHMODAT2 = 452  # x86-64 and arm64 (Linux 6.6)
_AT_EMPTY_PATH = 0x1000
_refusal_logged = False


def _proc_fds() -> int | None:
    """An fd of our /proc/self/fd directory, or None when that is not procfs
    (no /proc, or a directory a jailed user made to look like it)."""
    try:
        fd = os.open(_PROC_FDS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
    if _libc.fstatfs(fd, buf) != 0 or ctypes.c_long.from_buffer(buf).value != _PROC_SUPER_MAGIC:
        os.close(fd)
        return None
    return fd


_RENAME_NOREPLACE = 1


def _rename_noreplace(sfd: int, sname: str, dfd: int, dname: str) -> None:
    if _libc.renameat2(ctypes.c_int(sfd), ctypes.c_char_p(os.fsencode(sname)), ctypes.c_int(dfd),
                       ctypes.c_char_p(os.fsencode(dname)), ctypes.c_uint(_RENAME_NOREPLACE)) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL and _link_then_unlink(sfd, sname, dfd, dname):
            return
        raise OSError(err, os.strerror(err), dname)


def _link_then_unlink(sfd: int, sname: str, dfd: int, dname: str) -> bool:
    """NFS and CephFS have no RENAME_NOREPLACE (EINVAL): link(2) refuses an existing
    name just as atomically (EEXIST), then the old name goes.  False: no link either."""
    try:
        os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        return False
    os.unlink(sname, dir_fd=sfd)
    return True


def _done(res: int) -> bool:
    """The result of a call on an O_PATH fd: False when this kernel cannot do it."""
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EBADF, errno.EOPNOTSUPP):
        return False  # too old a kernel (or a seccomp policy without the call)
    raise OSError(err, os.strerror(err))


def _fchmodat2_empty(fd: int, mode: int) -> bool:
    return _done(_syscall(ctypes.c_long(_SYS_FCHMODAT2), ctypes.c_int(fd), ctypes.c_char_p(b""),
                          ctypes.c_uint(mode), ctypes.c_int(_AT_EMPTY_PATH)))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _utimensat_empty(fd: int, times_ns: tuple[int, int]) -> bool:
    ts = (_Timespec * 2)(*(_Timespec(*divmod(t, 10**9)) for t in times_ns))
    return _done(_libc.utimensat(ctypes.c_int(fd), ctypes.c_char_p(b""), ts, ctypes.c_int(_AT_EMPTY_PATH)))


def _on_inode(fd: int, path: tuple[str, int] | None, what: str,
              by_name: Callable[[str, int], None], by_fd: Callable[[], bool]) -> None:
    """Run `by_name(name, dir_fd)` on /proc's link to the inode `fd` holds, or `by_fd()`,
    or `by_name(*path)` when the caller found a lookup safe; else refuse (EPERM: 550)."""
    global _refusal_logged
    procfd = _proc_fds()
    if procfd is not None:
        try:
            by_name(str(fd), procfd)  # the magic link: no lookup of the client's path
            return
        finally:
            os.close(procfd)
    if by_fd():
        return
    if path is not None:
        by_name(*path)
        return
    if not _refusal_logged:
        _refusal_logged = True
        log.warning("%s refused: no procfs at %s and no fchmodat2/utimensat on O_PATH fds in this "
                    "kernel; re-resolving the path could follow a symlink out of the root", what, _PROC_FDS)
    raise OSError(errno.EPERM, f"{what} is not possible safely here")
