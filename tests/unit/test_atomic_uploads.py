"""atomic_uploads on disk (net/files.py): each upload writes a file of its own, an
interrupted one is kept under the one name a resume looks for, and a resume claims
that file before writing (tests/integration/test_shared_storage.py runs it on servers)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpwarden.net import files
from ftpwarden.net import jail as jail_mod
from ftpwarden.net.jail import Jail
from ftpwarden.proto.actions import ReceiveFile, RestartBeyondEnd

PARTIAL = files.PARTIAL_PREFIX + "f.bin"


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    j = Jail(str(tmp_path))
    yield j
    j.close()


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_two_fresh_uploads_of_one_name_write_two_files(jail, tmp_path):
    ups = [files.open_upload(jail, ReceiveFile("/f.bin", atomic=True)) for _ in range(2)]
    try:
        assert ups[0].written != ups[1].written
        for up in ups:
            assert up.partial == up.written and up.created and up.name == "f.bin"
            assert os.path.basename(up.written).startswith(files.UPLOAD_PREFIX)
            assert up.written.endswith(".f.bin")
        assert len(names(tmp_path)) == 2 and PARTIAL not in names(tmp_path)
    finally:
        for up in ups:
            os.close(up.fd)


def test_an_own_name_fits_when_the_name_is_long(jail, tmp_path):
    long = "n" * 250
    up = files.open_upload(jail, ReceiveFile("/" + long, atomic=True))
    os.close(up.fd)
    assert len(os.path.basename(up.written)) <= files.NAME_MAX and up.name == long


def test_a_resume_claims_the_interrupted_file(jail, tmp_path):
    (tmp_path / PARTIAL).write_bytes(b"first half")
    up = files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, append=True))
    try:
        assert not up.created and up.size_before == len(b"first half")
        assert names(tmp_path) == [os.path.basename(up.written)]  # nobody else finds it now
        # a second resume by REST finds nothing to continue; an APPE makes a file of its own
        with pytest.raises(FileNotFoundError):
            files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, offset=4))
        other = files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, append=True))
        os.close(other.fd)
        assert other.created and other.written not in (up.written, "/" + PARTIAL)
    finally:
        os.close(up.fd)


def test_the_loser_of_a_claim_gets_busy(jail, tmp_path, monkeypatch):
    """Two resumes both see the interrupted file; the other one renames it first."""
    seen = files.exists

    def exists_then_taken(j: Jail, vpath: str) -> bool:
        there = seen(j, vpath)
        if vpath == "/" + PARTIAL and there:
            os.rename(tmp_path / PARTIAL, tmp_path / "taken")
        return there

    (tmp_path / PARTIAL).write_bytes(b"x" * 10)
    monkeypatch.setattr(files, "exists", exists_then_taken)
    with pytest.raises(OSError) as e:
        files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, offset=5))
    assert e.value.errno == errno.EBUSY  # 450
    assert names(tmp_path) == ["taken"]


def test_a_refused_resume_puts_the_interrupted_file_back(jail, tmp_path):
    (tmp_path / PARTIAL).write_bytes(b"x" * 10)
    with pytest.raises(RestartBeyondEnd):
        files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, offset=11))
    assert names(tmp_path) == [PARTIAL] and (tmp_path / PARTIAL).read_bytes() == b"x" * 10
    (tmp_path / "f.bin").write_bytes(b"there")
    with pytest.raises(FileExistsError):  # may not overwrite: refused before claiming
        files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, append=True, may_overwrite=False))
    assert names(tmp_path) == sorted([PARTIAL, "f.bin"])


def test_a_failed_upload_is_kept_for_a_resume(jail, tmp_path):
    (tmp_path / PARTIAL).write_bytes(b"older")
    # no byte came (no data connection): the older interrupted file stays
    up = files.open_upload(jail, ReceiveFile("/f.bin", atomic=True))
    files.keep_failed_upload(jail, up, "/f.bin", up.fd)
    os.close(up.fd)
    assert names(tmp_path) == [PARTIAL] and (tmp_path / PARTIAL).read_bytes() == b"older"
    # bytes came: they replace it
    up = files.open_upload(jail, ReceiveFile("/f.bin", atomic=True))
    os.write(up.fd, b"newer")
    files.keep_failed_upload(jail, up, "/f.bin", up.fd)
    os.close(up.fd)
    assert names(tmp_path) == [PARTIAL] and (tmp_path / PARTIAL).read_bytes() == b"newer"
    # a failed resume gives back what it claimed, with what it added
    up = files.open_upload(jail, ReceiveFile("/f.bin", atomic=True, append=True))
    os.write(up.fd, b"+more")
    files.keep_failed_upload(jail, up, "/f.bin", up.fd)
    os.close(up.fd)
    assert names(tmp_path) == [PARTIAL] and (tmp_path / PARTIAL).read_bytes() == b"newer+more"


def test_uploads_on_nfs_and_cephfs_are_flushed_before_their_name_appears(tmp_path, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        local = int(subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True,
                                   timeout=10, check=True).stdout, 16)
        assert files.flush_needed(fd) == (local in files.FLUSHED_FS)
        monkeypatch.setitem(files.FLUSHED_FS, local, "this test's")
        assert files.flush_needed(fd)
    finally:
        os.close(fd)


def test_without_rename_noreplace_a_link_keeps_the_name_safe(jail, tmp_path, monkeypatch):
    """NFS and CephFS refuse renameat2's RENAME_NOREPLACE (EINVAL): link + unlink instead."""
    calls = []

    def no_flags(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(jail_mod._libc, "renameat2", no_flags)
    (tmp_path / "own").write_bytes(b"new")
    jail.rename("/own", "/f.bin", replace=False)
    assert names(tmp_path) == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"new"
    (tmp_path / "own").write_bytes(b"newer")
    with pytest.raises(FileExistsError):
        jail.rename("/own", "/f.bin", replace=False)
    assert (tmp_path / "f.bin").read_bytes() == b"new" and (tmp_path / "own").exists()
    assert len(calls) == 2
