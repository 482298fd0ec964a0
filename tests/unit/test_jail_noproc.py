"""Jail.chmod / Jail.utime where /proc cannot be trusted (issue 18.5): never a second
lookup of the client's path; act on the inode held, or refuse with EPERM (a 550)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from ftpwarden.net import jail as jail_mod
from ftpwarden.net.jail import Jail
from ftpwarden.proto.replies import reply_for_oserror

OUTSIDE_MTIME = 1_600_000_000


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, outside file, the file inside the root that the symlink means there).

    root/link -> ../../../outside/secret: beneath the root (RESOLVE_IN_ROOT) that is
    root/outside/secret; resolved again from the root's real place it is the outside file."""
    root = tmp_path / "a" / "b" / "root"
    (root / "outside").mkdir(parents=True)
    inside = root / "outside" / "secret"
    inside.write_text("decoy inside the root\n")
    inside.chmod(0o640)
    outside = tmp_path / "outside" / "secret"
    outside.parent.mkdir()
    outside.write_text("outside the root\n")
    outside.chmod(0o640)
    os.utime(outside, (OUTSIDE_MTIME, OUTSIDE_MTIME))
    (root / "link").symlink_to("../../../outside/secret")
    assert (root / "link").resolve() == outside.resolve()  # the trap is real
    return root, outside, inside


def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail_mod, "_proc_fds", lambda: None)


def no_fd_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail_mod, "_fchmodat2_empty", lambda fd, mode: False)
    monkeypatch.setattr(jail_mod, "_utimensat_empty", lambda fd, times: False)


def unchanged(outside: Path) -> None:
    st = outside.stat()
    assert st.st_mode & 0o777 == 0o640
    assert int(st.st_mtime) == OUTSIDE_MTIME
    assert outside.read_text() == "outside the root\n"


def test_without_proc_or_fd_calls_chmod_and_utime_are_refused(planted, monkeypatch, caplog) -> None:
    root, outside, inside = planted
    no_proc(monkeypatch)
    no_fd_calls(monkeypatch)
    monkeypatch.setattr(jail_mod, "_refusal_logged", False)
    with Jail(str(root)) as j, caplog.at_level(logging.WARNING, logger="ftpwarden.jail"):
        for call in (lambda: j.chmod("/link", 0o666), lambda: j.utime("/link", 946684800),
                     lambda: j.chmod("/link", 0o600)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EPERM
            assert reply_for_oserror(info.value, "SITE CHMOD").code == 550
    unchanged(outside)
    assert inside.stat().st_mode & 0o777 == 0o640
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1  # logged once


@pytest.mark.parametrize("proc", [True, False], ids=["procfs", "fd-calls"])
def test_each_safe_way_acts_on_the_inode_inside(planted, monkeypatch, proc: bool) -> None:
    root, outside, inside = planted
    if proc:
        no_fd_calls(monkeypatch)
        if jail_mod._proc_fds() is None:
            pytest.skip("no procfs at /proc here")
    else:
        no_proc(monkeypatch)
        probe = os.open(str(inside), os.O_PATH)
        try:
            if not jail_mod._fchmodat2_empty(probe, 0o640):
                pytest.skip("this kernel has no fchmodat2 on O_PATH fds (Linux < 6.6)")
        finally:
            os.close(probe)
    with Jail(str(root)) as j:
        j.chmod("/link", 0o604)
        j.utime("/link", 946684800)
    assert inside.stat().st_mode & 0o777 == 0o604
    assert int(inside.stat().st_mtime) == 946684800
    unchanged(outside)


def test_a_fake_proc_self_fd_is_not_trusted(planted, monkeypatch) -> None:
    """In an isolated chroot a user who can write the top directory can make
    /proc/self/fd: a directory whose entries are symlinks of their choosing."""
    root, outside, _inside = planted
    fake = root / "proc" / "self" / "fd"
    fake.mkdir(parents=True)
    for n in range(256):  # whatever fd number the jail gets, its name points outside
        (fake / str(n)).symlink_to(outside)
    monkeypatch.setattr(jail_mod, "_PROC_FDS", str(fake))
    assert jail_mod._proc_fds() is None  # not procfs: ignored
    no_fd_calls(monkeypatch)
    with Jail(str(root)) as j:
        with pytest.raises(OSError) as info:
            j.chmod("/outside/secret", 0o666)
        assert info.value.errno == errno.EPERM
        with pytest.raises(OSError):
            j.utime("/outside/secret", 946684800)
    unchanged(outside)


def test_the_real_proc_is_trusted() -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc here")
    fd = jail_mod._proc_fds()
    assert fd is not None
    os.close(fd)


def test_a_lookup_by_path_only_where_the_root_is_the_process_root(planted) -> None:
    """An isolated-mode chroot (jail root == the process's "/") may use the path:
    no lookup can leave it; any other root may not."""
    root, _outside, _inside = planted
    with Jail(str(root)) as j:
        assert j._by_path("/link") is None
    with Jail("/") as j:
        assert j._by_path("/etc/hostname") == ("etc/hostname", j._fd)
