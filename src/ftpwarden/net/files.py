"""File actions a session performs through its Jail: open for download or
upload (atomic uploads included), directory changes, listings, messages, HASH.

Blocking calls, but for `perform`, which runs the slow ones in a thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import stat as stat_mod
import struct
import time
import zlib
from typing import Any, NamedTuple

from ..proto import paths
from ..proto.actions import (
    Action,
    ChangeDir,
    ComputeHash,
    ControlListing,
    FsChange,
    ReceiveFile,
    RestartBeyondEnd,
    SendFile,
    StatPath,
)
from ..proto.listing import Entry
from .jail import Jail

__all__ = ["perform", "open_download", "open_upload", "Upload", "partial_path", "exists", "fs_change", "entries",
           "read_message", "hash_file", "wait_lock", "discard_failed_upload", "keep_failed_upload", "PARTIAL_PREFIX",
           "UPLOAD_PREFIX", "MESSAGE_MAX", "flush_needed"]

MESSAGE_MAX = 8192  # a directory message file is shown up to this size


def open_download(jail: Jail, action: SendFile) -> tuple[int, int]:
    fd = jail.open(action.path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "Not a plain file") if stat_mod.S_ISDIR(st.st_mode) \
                else PermissionError(13, "Not a plain file")
        if action.world_readable_only and not st.st_mode & stat_mod.S_IROTH:
            raise PermissionError(13, "File not world-readable")
        if action.offset > st.st_size:
            raise RestartBeyondEnd(action.offset, st.st_size)
        os.set_blocking(fd, True)
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


# atomic_uploads.  Each upload writes a hidden file of its own, made with O_EXCL
# (UPLOAD_PREFIX + random + "." + NAME), and renames it onto NAME once whole: two
# uploads of one name at once (two sessions, or two nodes on one shared directory)
# never write the same file, and the last to finish replaces the name whole.  An
# interrupted one leaves its bytes under the one name a resume looks for
# (PARTIAL_PREFIX + NAME); a resume first claims that file by renaming it to a name
# of its own (of two at once, one rename wins; the other gets 450).  A separate
# prefix: "PARTIAL_PREFIX + NAME + suffix" would also be the partial of "NAME.suffix".
PARTIAL_PREFIX = ".ftpwarden-partial."  # an interrupted atomic upload, kept for a resume
UPLOAD_PREFIX = ".ftpwarden-upload."    # an atomic upload under way
NAME_MAX = 255                          # bytes in one name (Linux file systems)


def partial_path(vpath: str) -> str:
    return paths.resolve(paths.parent(vpath), PARTIAL_PREFIX + paths.basename(vpath))


def _own_path(vpath: str) -> str:
    """A hidden name in `vpath`'s directory (so on its file system: the rename at the
    end is atomic) that no other upload uses; it carries NAME where NAME fits."""
    tag = UPLOAD_PREFIX + secrets.token_hex(8)
    name = tag + "." + paths.basename(vpath)
    if len(os.fsencode(name)) > NAME_MAX:
        name = tag
    return paths.resolve(paths.parent(vpath), name)


def _claim_partial(jail: Jail, vpath: str) -> str:
    """A resume's own name for the interrupted upload of `vpath`.  EBUSY (450) when
    that file went meanwhile: another session claimed it first."""
    own = _own_path(vpath)
    try:  # a plain rename (RENAME_NOREPLACE is missing on NFS and CephFS): `own` is new
        jail.rename(partial_path(vpath), own)
    except FileNotFoundError:
        raise OSError(errno.EBUSY, "another session is resuming this upload") from None
    return own


def exists(jail: Jail, vpath: str) -> bool:
    try:
        jail.lstat(vpath)
        return True
    except FileNotFoundError:
        return False


class Upload(NamedTuple):
    """An upload's open file and what a failed one must undo (delete_failed_uploads)."""

    fd: int
    name: str            # the name shown to the client (STOU picks it)
    partial: str | None  # atomic_uploads: the hidden file renamed into place at the end
    written: str         # the path `fd` writes (the partial, or the file itself)
    created: bool        # this upload made the file (it did not exist before)
    size_before: int     # its size when opened (an append or a restart grows it from there)


STOU_TRIES = 100  # better_stou: random names tried before giving up (each is 36 bits of chance)
_STOU_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _stou_candidates(base: str, random_suffix: bool) -> list[str]:
    """STOU names in the order tried: the name itself, then NAME.1, NAME.2 ...
    (wu-ftpd, vsftpd) or, with better_stou (Red Hat's vsftpd), always
    NAME.<6 random letters or digits>: nobody can predict the name and make it
    first, and O_EXCL decides each race."""
    if random_suffix:
        return [base + "." + "".join(secrets.choice(_STOU_ALPHABET) for _ in range(6))
                for _ in range(STOU_TRIES)]
    return [base] + [f"{base}.{i}" for i in range(1, 1000)]


def _open_noting_creation(jail: Jail, vpath: str, flags: int, mode: int) -> tuple[int, bool]:
    """Open for writing and say whether this open made the file: with O_CREAT
    and no O_EXCL, try creating exclusively first, then open the existing one."""
    if not flags & os.O_CREAT or flags & os.O_EXCL:
        return jail.open(vpath, flags, mode), bool(flags & os.O_EXCL)
    for _ in range(3):  # the file may come and go between the two opens
        try:
            return jail.open(vpath, flags | os.O_EXCL, mode), True
        except FileExistsError:
            pass
        try:
            return jail.open(vpath, flags & ~os.O_CREAT, mode), False
        except FileNotFoundError:
            continue
    return jail.open(vpath, flags, mode), False  # (a dangling symlink in the jail: created through it)


def open_upload(jail: Jail, action: ReceiveFile) -> Upload:
    """The file to write, and what a failed upload would have to undo."""
    # No O_TRUNC: a fresh STOR empties the file only once its data connection
    # is up (net/transfer.py), so a failed STOR never destroys the old content.
    flags = os.O_WRONLY | os.O_CREAT
    if action.append:
        flags |= os.O_APPEND
    mode = action.file_mode & ~action.umask & 0o777
    if action.unique:
        for candidate in _stou_candidates(action.path, action.random_suffix):
            try:
                fd = jail.open(candidate, flags | os.O_EXCL, mode)
            except FileExistsError:
                continue
            return Upload(fd, paths.basename(candidate), None, candidate, True, 0)
        raise FileExistsError(17, "No unique name available")
    partial = None
    claimed = False  # a resume took over an interrupted atomic upload's file
    target = action.path
    if action.atomic:
        # a fresh upload writes a new file of its own (so does an APPE of a file not there:
        # it makes the file, as a STOR does); the continuation of an interrupted one
        # claims that one; continuing a complete file (no partial) happens in place
        resuming = bool(action.append or action.offset)
        claimed = resuming and exists(jail, partial_path(action.path))
        fresh = not resuming or (action.append and not claimed and not exists(jail, action.path))
        if claimed or fresh:
            if not action.may_overwrite and exists(jail, action.path):
                raise FileExistsError(17, "File exists")
            partial = target = _claim_partial(jail, action.path) if claimed else _own_path(action.path)
            flags = flags & ~os.O_CREAT if claimed else flags | os.O_EXCL
    if not action.may_overwrite and partial is None:
        flags |= os.O_EXCL
    if action.offset:
        flags &= ~os.O_CREAT  # a restart continues a file; it never makes one
    try:
        fd, created = _open_noting_creation(jail, target, flags, mode)
    except BaseException:
        if claimed:  # it stays for the next resume
            _put_back(jail, target, action.path)
        raise
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise PermissionError(13, "Not a plain file")
        if action.offset > st.st_size:
            # a gap of zeros would look like a complete file: refused, as pyftpdlib
            # does (vsftpd writes the hole)
            raise RestartBeyondEnd(action.offset, st.st_size)
        if action.offset:
            # a restarted upload overwrites from the marker and never shortens
            # the file: what lies past the new bytes stays (vsftpd, pyftpdlib)
            os.lseek(fd, action.offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        if claimed:
            _put_back(jail, target, action.path)
        elif partial is not None:  # a fresh one, still empty
            _unlink_quietly(jail, target)
        raise
    return Upload(fd, paths.basename(action.path), partial, target, created, st.st_size)


def discard_failed_upload(jail: Jail, up: Upload, fd: int | None, emptied: bool) -> None:
    """delete_failed_uploads: leave nothing a failed upload wrote.  The hidden
    partial of an atomic upload goes (the file under its name was never touched);
    so does a file this upload made, or emptied (a fresh STOR: its old content is
    gone already).  An append or a restart into a file that was there is cut back
    to its old size: the bytes before belonged to the file, not to this upload.
    Best effort: a failure here changes nothing of the transfer's reply."""
    try:
        if up.partial is not None or up.created or emptied:
            jail.unlink(up.written)
        elif fd is not None:
            os.ftruncate(fd, up.size_before)
    except OSError:
        pass


# Shared file systems where an upload's bytes reach the servers only when flushed (NFS:
# another node opening the name reads what the servers have, close-to-open; CephFS
# buffers under its caps) and a server's write error (ENOSPC, EDQUOT) is told only
# then: there an upload is flushed (fdatasync) before its name appears and its 226.
FLUSHED_FS = {0x6969: "nfs", 0x00C36400: "ceph"}  # statfs f_type
_libc = ctypes.CDLL(None, use_errno=True)


def flush_needed(fd: int) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in FLUSHED_FS


def keep_failed_upload(jail: Jail, up: Upload, vpath: str, fd: int | None) -> None:
    """An atomic upload that failed (and is not discarded) leaves its bytes where a
    resume of `vpath` finds them, replacing an older interrupted one; a new file
    that got no byte (no data connection) goes instead, so an older partial stays
    resumable.  Best effort, like `discard_failed_upload` (after the rename onto
    `vpath` its own name is gone: nothing happens)."""
    if up.partial is None:
        return
    try:
        empty = up.created and fd is not None and os.fstat(fd).st_size == 0
    except OSError:
        empty = False
    if empty:
        _unlink_quietly(jail, up.partial)
    else:
        _put_back(jail, up.partial, vpath)


def _put_back(jail: Jail, own: str, vpath: str) -> None:
    try:
        jail.rename(own, partial_path(vpath))
    except OSError:
        pass


def _unlink_quietly(jail: Jail, own: str) -> None:
    try:
        jail.unlink(own)
    except OSError:
        pass


# lock_upload_files: a whole-file fcntl lock.  Open file description (OFD) locks, not
# classic POSIX ones: those belong to a process, so two sessions in one pooled worker
# or identity worker would never exclude each other; OFD locks do, and they conflict
# with the classic locks a local program (flock(1) -F, lockf, fcntl) takes.
_FLOCK = "hhqqi4x"  # struct flock on Linux x86-64/aarch64: type, whence, start, len, pid (0 for OFD)
LOCK_POLL = (0.01, 0.2)  # seconds between tries: the first, and the most as the wait goes on


def try_lock(fd: int, exclusive: bool) -> bool:
    """Take the lock now if it is free: True, or False when someone holds a conflicting one.
    A file system without locks (ENOLCK, EINVAL ...) counts as locked: the transfer goes
    on unlocked, as vsftpd's does (it ignores the lock's result)."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    except OSError as e:
        return e.errno not in (errno.EAGAIN, errno.EACCES)
    return True


async def wait_lock(fd: int, exclusive: bool, timeout: float) -> None:
    """vsftpd waits (F_SETLKW) for as long as the other transfer lasts; an event
    loop may not block, so this tries again and again, and gives up after
    `timeout` seconds with EAGAIN (450, the file is busy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = LOCK_POLL[0]
    while not try_lock(fd, exclusive):
        if loop.time() >= deadline:
            raise BlockingIOError(errno.EAGAIN, "the file is locked by another transfer")
        await asyncio.sleep(pause)
        pause = min(pause * 2, LOCK_POLL[1])


def fs_change(jail: Jail, a: FsChange) -> None:
    if a.dir_only:  # the client wrote "name/": the kernel would act on a directory only
        st = jail.lstat(a.path) if a.op == "rename" else jail.stat(a.path)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "Not a directory")
    if a.op == "mkdir":
        jail.mkdir(a.path, a.mode)
    elif a.op == "rmdir":
        jail.rmdir(a.path)
    elif a.op == "unlink":
        if stat_mod.S_ISDIR(jail.lstat(a.path).st_mode):
            raise IsADirectoryError(21, "Is a directory")
        jail.unlink(a.path)
    elif a.op == "rename":
        jail.rename(a.path, a.target)
    elif a.op == "chmod":
        jail.chmod(a.path, a.mode)
    elif a.op == "utime":
        jail.utime(a.path, a.mtime)
    else:
        raise AssertionError(a.op)


def entries(jail: Jail, vpath: str, single: bool) -> list[Entry]:
    """STAT path lists a directory's entries, or the one file; MLST one entry."""
    st = jail.stat(vpath)
    if stat_mod.S_ISDIR(st.st_mode) and not single:
        return jail.listdir(vpath)  # sorted by name
    return [Entry.from_stat(paths.basename(vpath) or "/", st)]


def read_message(jail: Jail, vpath: str) -> str | None:
    try:
        fd = jail.open(vpath, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MESSAGE_MAX).decode("utf-8", "replace")
    finally:
        os.close(fd)


def hash_file(jail: Jail, vpath: str, algorithm: str) -> tuple[str, int]:
    fd = jail.open(vpath, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "Not a plain file")
        size = 0
        if algorithm == "CRC32":
            crc = 0
            while chunk := os.read(fd, 1 << 20):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
            return f"{crc:08x}", size
        h: Any = {"SHA-256": hashlib.sha256, "SHA-1": hashlib.sha1, "MD5": hashlib.md5}[algorithm]()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size
    finally:
        os.close(fd)


async def perform(jail: Jail, action: Action) -> Any:
    """A file action other than a transfer; its outcome (or an OSError raised).
    Listing and hashing run in a thread: they may take long."""
    if isinstance(action, ChangeDir):
        st = jail.stat(action.path)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "Not a directory")
        fd = jail.open(action.path, os.O_RDONLY | os.O_DIRECTORY)  # checks search permission
        os.close(fd)
        if action.message_file:
            return read_message(jail, paths.resolve(action.path, action.message_file))
        return None
    if isinstance(action, StatPath):
        return jail.stat(action.path)
    if isinstance(action, FsChange):
        return fs_change(jail, action)
    if isinstance(action, ControlListing):
        listed = await asyncio.to_thread(entries, jail, action.path, action.verb == "MLST")
        return listed, time.time()
    if isinstance(action, ComputeHash):
        return await asyncio.to_thread(hash_file, jail, action.path, action.algorithm)
    raise AssertionError(f"unknown action {action!r}")
