"""Jail: real files under tmp_path, real openat2; escapes must all fail."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ftpwarden.net import jail as jail_mod
from ftpwarden.net.jail import Jail
from ftpwarden.proto.errors import RemoteProtocolError

SECRET = b"outside the root\n"
ESCAPE_ERRNOS = (errno.ENOENT, errno.ELOOP, errno.EXDEV)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(SECRET)
    (d / "secret").chmod(0o640)
    return d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "a" / "b" / "root"
    r.mkdir(parents=True)
    (r / "pub").mkdir()
    (r / "pub" / "hello.txt").write_bytes(b"hello\n")
    return r


@pytest.fixture
def jail(root: Path):
    with Jail(str(root)) as j:
        yield j


def read(j: Jail, vpath: str) -> bytes:
    fd = j.open(vpath, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def assert_refused(j: Jail, vpath: str) -> None:
    with pytest.raises(OSError) as info:
        data = read(j, vpath)
        pytest.fail(f"{vpath} was readable: {data[:40]!r}")
    assert info.value.errno in ESCAPE_ERRNOS


# ------------------------------------------------------------------ basics

def test_read_file_and_cloexec(jail: Jail) -> None:
    fd = jail.open("/pub/hello.txt", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"hello\n"
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Jail(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        Jail(str(tmp_path / "file"))


def test_without_openat2_construction_fails(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    # A syscall number the kernel does not have: the real ENOSYS path, no mock.
    monkeypatch.setattr(jail_mod, "_SYS_OPENAT2", 100_000)
    with pytest.raises(OSError) as info:
        Jail(str(root))
    assert info.value.errno == errno.ENOSYS
    assert "openat2" in str(info.value)


def test_vpath_checks(jail: Jail, root: Path) -> None:
    with pytest.raises(ValueError):  # relative: the session forgot its cwd (our bug)
        jail.stat("pub")
    with pytest.raises(RemoteProtocolError):  # ctypes would cut the path at NUL
        jail.stat("/pub\0/etc")
    with pytest.raises(ValueError):
        jail_mod._openat2(jail._fd, "pub\0x", os.O_PATH)
    assert read(jail, "/pub/../pub/./hello.txt") == b"hello\n"


def test_dotdot_from_root_stays_in_root(jail: Jail, root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(jail, "/../../etc/passwd")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"jail passwd\n")
    assert read(jail, "/../../etc/passwd") == b"jail passwd\n"
    with pytest.raises(OSError) as info:  # ".." must never become the name acted on
        jail.rmdir("/pub/..")
    assert info.value.errno == errno.EPERM


def test_create_masks_special_bits(jail: Jail, root: Path) -> None:
    fd = jail.open("/pub/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o4777)
    os.write(fd, b"x")
    os.close(fd)
    assert not os.stat(root / "pub" / "new").st_mode & (stat.S_ISUID | stat.S_ISGID)
    jail.mkdir("/pub/sticky", 0o1777)
    assert not os.stat(root / "pub" / "sticky").st_mode & stat.S_ISVTX


# ------------------------------------------------------------------ escapes

def test_dotdot_raw_is_clamped(jail: Jail, root: Path, outside: Path) -> None:
    # Passed raw (not via paths.resolve) to prove the kernel itself clamps "..".
    with pytest.raises(FileNotFoundError):
        jail_mod._openat2(jail._fd, "../../../outside/secret", os.O_RDONLY)
    # ...and resolves inside the root when the root has that path.
    (root / "outside").mkdir()
    (root / "outside" / "secret").write_bytes(b"inside\n")
    fd = jail_mod._openat2(jail._fd, "../../../outside/secret", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"inside\n"
    finally:
        os.close(fd)


def test_absolute_symlink_to_etc(jail: Jail, root: Path) -> None:
    (root / "etc_link").symlink_to("/etc")
    assert Path("/etc/passwd").exists()
    assert_refused(jail, "/etc_link/passwd")


def test_absolute_symlink_to_outside_dir(jail: Jail, root: Path, outside: Path) -> None:
    (root / "out").symlink_to(outside)
    (root / "out_file").symlink_to(outside / "secret")
    assert_refused(jail, "/out/secret")
    assert_refused(jail, "/out_file")
    with pytest.raises(OSError):
        jail.stat("/out_file")


def test_relative_symlink_escape(jail: Jail, root: Path, outside: Path) -> None:
    (root / "up").symlink_to("../../../../../../../../etc")
    (root / "pub" / "sib").symlink_to("../../../../outside")  # the real sibling dir
    assert_refused(jail, "/up/passwd")
    assert_refused(jail, "/pub/sib/secret")


def test_symlink_inside_root_is_followed_in_root(jail: Jail, root: Path) -> None:
    (root / "abs").symlink_to("/pub/hello.txt")  # absolute: means the jail's /pub
    (root / "rel").symlink_to("pub/hello.txt")
    assert read(jail, "/abs") == b"hello\n"
    assert read(jail, "/rel") == b"hello\n"
    assert stat.S_ISREG(jail.stat("/abs").st_mode)
    assert stat.S_ISLNK(jail.lstat("/abs").st_mode)


def test_proc_symlink_inside_root_does_not_reach_real_root(jail: Jail, root: Path) -> None:
    (root / "proc_root").symlink_to("/proc/self/root")
    (root / "proc_fd").symlink_to("/proc/self/fd")
    assert_refused(jail, "/proc_root/etc/passwd")
    assert_refused(jail, f"/proc_fd/{jail._fd}/etc/passwd")


def test_magic_links_are_refused(tmp_path: Path) -> None:
    # A jail rooted at /proc/self really contains magic links ("root", "cwd",
    # "fd/N"); RESOLVE_NO_MAGICLINKS must stop each of them.
    with Jail("/proc/self") as j:
        for vpath in ("/root/etc/passwd", "/cwd", "/exe"):
            with pytest.raises(OSError) as info:
                os.close(j.open(vpath, os.O_RDONLY))
            assert info.value.errno == errno.ELOOP


def test_chmod_through_symlink_does_not_touch_outside(jail: Jail, root: Path,
                                                     outside: Path) -> None:
    target = outside / "secret"
    (root / "abs").symlink_to(target)
    (root / "rel").symlink_to("../../../outside/secret")
    for vpath in ("/abs", "/rel"):
        with pytest.raises(OSError):
            jail.chmod(vpath, 0o777)
        with pytest.raises(OSError):
            jail.utime(vpath, 0)
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime != 0


# ------------------------------------------------------------------ changes inside

def test_chmod_and_utime_inside(jail: Jail, root: Path) -> None:
    f = root / "pub" / "hello.txt"
    jail.chmod("/pub/hello.txt", 0o600)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    jail.chmod("/pub/hello.txt", 0o4755)  # special bits are dropped
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    before = os.stat(f).st_atime_ns
    jail.utime("/pub/hello.txt", 1_000_000_000.5)
    st = os.stat(f)
    assert st.st_mtime_ns == 1_000_000_000_500_000_000
    assert st.st_atime_ns == before


def test_chmod_follows_symlink_inside(jail: Jail, root: Path) -> None:
    (root / "abs").symlink_to("/pub/hello.txt")
    jail.chmod("/abs", 0o604)
    assert stat.S_IMODE(os.stat(root / "pub" / "hello.txt").st_mode) == 0o604


def test_mkdir_rename_rmdir_unlink(jail: Jail, root: Path) -> None:
    jail.mkdir("/new", 0o750)
    assert (root / "new").is_dir() and jail.is_dir("/new")
    assert stat.S_IMODE(os.stat(root / "new").st_mode) == 0o750 & ~_umask()
    jail.rename("/pub/hello.txt", "/new/hi.txt")
    assert (root / "new" / "hi.txt").read_bytes() == b"hello\n"
    assert not (root / "pub" / "hello.txt").exists()
    with pytest.raises(OSError) as info:
        jail.rmdir("/new")
    assert info.value.errno == errno.ENOTEMPTY
    jail.unlink("/new/hi.txt")
    jail.rmdir("/new")
    assert not (root / "new").exists()
    assert not jail.is_dir("/new")


def test_root_itself_cannot_be_changed(jail: Jail) -> None:
    for call in (lambda: jail.mkdir("/"), lambda: jail.rmdir("/"), lambda: jail.unlink("/"),
                 lambda: jail.rename("/", "/x"), lambda: jail.rename("/pub", "/")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EPERM


def test_changes_through_escaping_parent_fail(jail: Jail, root: Path, outside: Path) -> None:
    (root / "out").symlink_to(outside)
    for call in (lambda: jail.unlink("/out/secret"), lambda: jail.mkdir("/out/new"),
                 lambda: jail.rename("/out/secret", "/stolen"),
                 lambda: jail.rename("/pub/hello.txt", "/out/planted")):
        with pytest.raises(OSError):
            call()
    assert (outside / "secret").read_bytes() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (root / "stolen").exists()


def test_unlink_symlink_removes_link_not_target(jail: Jail, root: Path, outside: Path) -> None:
    (root / "out_file").symlink_to(outside / "secret")
    jail.unlink("/out_file")
    assert not (root / "out_file").is_symlink()
    assert (outside / "secret").read_bytes() == SECRET


# ------------------------------------------------------------------ stat and listing

def test_lstat_and_stat(jail: Jail, root: Path) -> None:
    (root / "link").symlink_to("pub")
    assert stat.S_ISLNK(jail.lstat("/link").st_mode)
    assert stat.S_ISDIR(jail.stat("/link").st_mode)
    assert jail.lstat("/").st_ino == os.stat(root).st_ino
    assert jail.stat("/").st_ino == os.stat(root).st_ino
    with pytest.raises(FileNotFoundError):
        jail.lstat("/nope")


def test_listdir(jail: Jail, root: Path, outside: Path) -> None:
    (root / "pub" / "data.bin").write_bytes(b"x" * 1000)
    (root / "pub" / "sub").mkdir()
    (root / "pub" / "ln").symlink_to("/etc/passwd")
    (root / "pub" / ".hidden").write_bytes(b"")
    entries = {e.name: e for e in jail.listdir("/pub")}
    assert set(entries) == {"hello.txt", "data.bin", "sub", "ln", ".hidden"}
    assert entries["data.bin"].size == 1000
    assert stat.S_ISDIR(entries["sub"].mode)
    ln = entries["ln"]
    assert stat.S_ISLNK(ln.mode) and ln.link_target == "/etc/passwd"
    assert ln.size == len("/etc/passwd")  # lstat data, not the target's
    real = os.lstat(root / "pub" / "data.bin")
    assert (entries["data.bin"].ino, entries["data.bin"].dev) == (real.st_ino, real.st_dev)
    assert entries["hello.txt"].link_target is None
    with pytest.raises(NotADirectoryError):
        jail.listdir("/pub/hello.txt")


def test_listdir_through_escaping_link_fails(jail: Jail, root: Path, outside: Path) -> None:
    (root / "out").symlink_to(outside)
    with pytest.raises(FileNotFoundError):
        jail.listdir("/out")


def test_close_is_idempotent(root: Path) -> None:
    j = Jail(str(root))
    j.close()
    j.close()
    with pytest.raises(OSError) as info:
        j.stat("/pub")
    assert info.value.errno == errno.EBADF


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
