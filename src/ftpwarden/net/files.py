"""File actions a session performs through its Jail: open for download or
upload (atomic uploads included), directory changes, listings, messages, HASH.

Blocking calls, but for `perform`, which runs the slow ones in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat as stat_mod
import time
import zlib
from typing import Any

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

__all__ = ["perform", "open_download", "open_upload", "partial_path", "exists", "fs_change", "entries",
           "read_message", "hash_file", "PARTIAL_PREFIX", "MESSAGE_MAX"]

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


PARTIAL_PREFIX = ".ftpwarden-partial."  # atomic_uploads: hidden until complete


def partial_path(vpath: str) -> str:
    return paths.resolve(paths.parent(vpath), PARTIAL_PREFIX + paths.basename(vpath))


def exists(jail: Jail, vpath: str) -> bool:
    try:
        jail.lstat(vpath)
        return True
    except FileNotFoundError:
        return False


def open_upload(jail: Jail, action: ReceiveFile) -> tuple[int, str, str | None]:
    """(fd, name shown to the client, hidden partial path when writing atomically)."""
    # No O_TRUNC: a fresh STOR empties the file only once its data connection
    # is up (net/transfer.py), so a failed STOR never destroys the old content.
    flags = os.O_WRONLY | os.O_CREAT
    if action.append:
        flags |= os.O_APPEND
    mode = action.file_mode & ~action.umask & 0o777
    if action.unique:
        base = action.path
        for i in range(1000):
            candidate = base if i == 0 else f"{base}.{i}"
            try:
                fd = jail.open(candidate, flags | os.O_EXCL, mode)
            except FileExistsError:
                continue
            return fd, paths.basename(candidate), None
        raise FileExistsError(17, "No unique name available")
    partial = None
    target = action.path
    if action.atomic:
        resuming = action.append or action.offset
        candidate = partial_path(action.path)
        # a fresh upload, or the continuation of an interrupted one, goes to the
        # partial; continuing a complete file (no partial) happens in place
        if not resuming or exists(jail, candidate):
            partial = target = candidate
            if not action.may_overwrite and exists(jail, action.path):
                raise FileExistsError(17, "File exists")
    if not action.may_overwrite and partial is None:
        flags |= os.O_EXCL
    if action.offset:
        flags &= ~os.O_CREAT  # a restart continues a file; it never makes one
    fd = jail.open(target, flags, mode)
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
        raise
    return fd, paths.basename(action.path), partial


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
