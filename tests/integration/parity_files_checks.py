"""Issue 12, the files and transfer options (download_file, upload_file, ls_recurse_enable,
delete_failed_uploads, lock_upload_files, better_stou, utf8_filesystem, use_sendfile,
trans_chunk_size, async_abor_enable) as checks of a `Site`: test_parity_files.py runs
them against pooled mode, tests/privileged/test_parity_files.py against isolated mode.

Three servers, each with the options of one column below ("name=value" lines: `-o`
for pooled mode, config lines for isolated mode); every check says which it needs.
"""

from __future__ import annotations

import fcntl
import ftplib
import io
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Site, put

# ON: the options of this work switched on (and their neighbours, to watch them act)
ON = ["ls_recurse_enable=YES", "delete_failed_uploads=YES", "better_stou=YES", "utf8_enable=NO",
      "utf8_filesystem=YES", "async_abor_enable=YES", "hide_file={hidden*}", "trans_chunk_size=8192",
      "data_connection_timeout=3"]
# NAMES: download_file/upload_file (deny_file beside them); the rest at their defaults
NAMES = ["download_file={*.txt}", "upload_file={*.up}", "deny_file={secret*}", "utf8_enable=NO"]
# PLAIN: no sendfile, no locks
PLAIN = ["use_sendfile=NO", "lock_upload_files=NO"]
# ATOMIC: our atomic uploads (a hidden partial renamed into place) with delete_failed_uploads
ATOMIC = ["atomic_uploads=YES", "delete_failed_uploads=YES"]

TIMEOUT = 20
CHUNK = 64 * 1024


def get(ftp: ftplib.FTP, name: str) -> bytes:
    buf = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buf.write)
    return buf.getvalue()


def lines(ftp: ftplib.FTP, cmd: str) -> list[str]:
    out: list[str] = []
    ftp.retrlines(cmd, out.append)
    return out


def perm_error(fn, *args) -> str:
    with pytest.raises(ftplib.error_perm) as e:
        fn(*args)
    return str(e.value)


def local_file(site: Site, name: str, data: bytes) -> Path:
    """A file written here (as the test's user), readable by the session's user."""
    path = site.path(name)
    path.write_bytes(data)
    path.chmod(0o644)
    return path


# ---------------------------------------------------------------- download_file / upload_file

def check_download_and_upload_file(site: Site) -> None:
    """NAMES: only *.txt downloads, only *.up uploads; deny_file wins over both (vsftpd's 550)."""
    with site.fresh() as ftp:
        local_file(site, "a.txt", b"text")
        local_file(site, "a.bin", b"binary")
        local_file(site, "secret.txt", b"no")
        assert get(ftp, "a.txt") == b"text"
        assert perm_error(get, ftp, "a.bin") == "550 Permission denied."
        assert perm_error(get, ftp, "secret.txt") == "550 Permission denied."  # deny_file wins
        assert ftp.size("a.bin") == 6  # only the transfer is refused (as vsftpd)
        assert put(ftp, "x.up", b"up").startswith("226")
        assert site.path("x.up").read_bytes() == b"up"
        for cmd in ("STOR", "APPE", "STOU"):
            assert perm_error(put, ftp, "x.bin", b"no", None, cmd) == "550 Permission denied."
        assert perm_error(put, ftp, "secret.up", b"no") == "550 Permission denied."
        assert not site.path("x.bin").exists() and not site.path("secret.up").exists()
        ftp.sendcmd("TYPE I")
        # the name is the file's own: a directory matching the pattern opens nothing below it
        ftp.mkd("dir.up")
        assert perm_error(put, ftp, "dir.up/x.bin", b"no") == "550 Permission denied."


# ---------------------------------------------------------------- ls_recurse_enable

def make_tree(site: Site, ftp: ftplib.FTP) -> None:
    """sub/b.txt, sub/deeper/c.txt, sub/loop -> .., .dot/d.txt, hiddendir/e.txt, a.txt"""
    for d in ("sub", "sub/deeper", ".dot", "hiddendir"):
        ftp.mkd(d)
    for name in ("a.txt", "sub/b.txt", "sub/deeper/c.txt", ".dot/d.txt", "hiddendir/e.txt"):
        put(ftp, name, b"x")
    os.symlink("..", site.path("sub/loop"))


def check_ls_recurse(site: Site) -> None:
    """ON: LIST -R / -lR / -aR and NLST -R walk the tree as ls -lR prints it; hide_file'd and
    dot directories (without -a) stay out, a symlink is listed, never entered."""
    with site.fresh() as ftp:
        make_tree(site, ftp)
        out = lines(ftp, "LIST -R")
        assert out[0] == ".:"
        heads = [line for line in out if line.endswith(":")]
        assert heads == [".:", "./sub:", "./sub/deeper:"], out
        assert any(line.endswith(" b.txt") for line in out) and any(line.endswith(" c.txt") for line in out)
        assert any(line.endswith(" loop -> ..") for line in out)  # shown, not followed
        assert "" in out  # a blank line between sections
        assert not any("hiddendir" in line or "e.txt" in line for line in out)
        assert [h for h in lines(ftp, "LIST -lR") if h.endswith(":")] == heads
        heads_a = [h for h in lines(ftp, "LIST -aR") if h.endswith(":")]
        assert heads_a == [".:", "./.dot:", "./sub:", "./sub/deeper:"]
        out = lines(ftp, "LIST -R sub")
        assert [h for h in out if h.endswith(":")] == ["sub:", "sub/deeper:"]
        names = lines(ftp, "NLST -R")
        assert "a.txt" in names and "./sub/b.txt" in names and "./sub/deeper/c.txt" in names
        assert ftp.lastresp == "226"


def check_ls_recurse_ignored(site: Site) -> None:
    """Without ls_recurse_enable, -R is ignored: one directory, as before (vsftpd)."""
    with site.fresh() as ftp:
        ftp.mkd("sub")
        out = lines(ftp, "LIST -R")
        assert len(out) == 1 and out[0].endswith(" sub") and not any(line.endswith(":") for line in out)


# ---------------------------------------------------------------- delete_failed_uploads

def _aborted_upload(ftp: ftplib.FTP, cmd: str, data: bytes) -> None:
    conn = ftp.transfercmd(cmd)
    conn.sendall(data)
    time.sleep(0.3)  # the bytes are written
    resp = ftp.abort()  # ABOR (urgent data) while the data connection is open: the upload fails
    assert resp.startswith("426"), resp
    conn.close()
    assert ftp.getresp().startswith("226")  # ABOR's own reply


def check_delete_failed_uploads(site: Site, enabled: bool) -> None:
    """A failed STOR leaves nothing (ON); without the option its partial stays for a resume.
    A failed APPE to a file that was there cuts it back to its old size, never deletes it."""
    with site.fresh() as ftp:
        ftp.voidcmd("TYPE I")
        _aborted_upload(ftp, "STOR new.up", os.urandom(200_000))
        path = site.path("new.up")
        if enabled:
            assert not path.exists()
        else:
            assert path.exists() and path.stat().st_size > 0
        put(ftp, "old.up", b"KEEP-ME")
        _aborted_upload(ftp, "APPE old.up", os.urandom(200_000))
        if enabled:
            assert site.path("old.up").read_bytes() == b"KEEP-ME"
        else:
            assert site.path("old.up").stat().st_size > 7
        assert ftp.voidcmd("NOOP").startswith("200")  # the session goes on


def check_delete_failed_atomic(site: Site) -> None:
    """ATOMIC: a failed upload's hidden partial goes (no resume from it), the file under
    its name was never touched; a failed resume of a partial removes that partial too."""
    with site.fresh() as ftp:
        ftp.voidcmd("TYPE I")
        put(ftp, "f.up", b"OLD-CONTENT")
        _aborted_upload(ftp, "STOR f.up", os.urandom(200_000))
        assert sorted(p.name for p in site.path("").iterdir()) == ["f.up"]  # no .ftpwarden-partial.f.up
        assert site.path("f.up").read_bytes() == b"OLD-CONTENT"


# ---------------------------------------------------------------- lock_upload_files

def _slow_upload(site: Site, name: str, data: bytes, started: threading.Event, result: list) -> None:
    try:
        with site.connect() as ftp:
            ftp.cwd(site.base)
            ftp.voidcmd("TYPE I")
            conn = ftp.transfercmd(f"STOR {name}")
            started.set()
            with conn:
                for i in range(0, len(data), CHUNK):
                    conn.sendall(data[i:i + CHUNK])
                    time.sleep(0.08)
            result.append((ftp.voidresp(), time.monotonic()))
    except BaseException as e:  # reported by the test
        started.set()
        result.append((repr(e), time.monotonic()))


def check_download_waits_for_upload(site: Site, locks: bool) -> None:
    """Two clients: one uploads (slowly, in place) over a file, the other downloads it
    meanwhile.  With locks the download waits for the upload and gets it whole;
    without, it gets whatever half was on disk."""
    new = os.urandom(16 * CHUNK)  # 16 chunks, ~1.3 s of upload
    with site.fresh() as ftp:
        put(ftp, "f.up", b"old" * 1000)
        started, result = threading.Event(), []
        uploader = threading.Thread(target=_slow_upload, args=(site, "f.up", new, started, result))
        uploader.start()
        assert started.wait(TIMEOUT)
        time.sleep(0.4)  # the upload is under way
        got = get(ftp, "f.up")
        got_at = time.monotonic()
        uploader.join(TIMEOUT)
        assert result and result[0][0].startswith("226"), result
        if locks:
            assert got == new
            assert got_at >= result[0][1] - 0.2  # it ended with the upload, not before
        else:
            assert got != new and len(got) < len(new)  # a half-written file


def check_local_lock_holder(site: Site) -> None:
    """A local program's fcntl locks and ours exclude each other: while it holds a write
    lock a download waits, and past data_connection_timeout (3 s in ON) it gets 450;
    while a session uploads, the local program cannot take a read lock, and once it
    can the file is whole."""
    with site.fresh() as ftp:
        data = os.urandom(CHUNK)
        put(ftp, "g.up", data)
        fd = os.open(site.path("g.up"), os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            threading.Timer(1.0, fcntl.lockf, (fd, fcntl.LOCK_UN)).start()
            t0 = time.monotonic()
            assert get(ftp, "g.up") == data
            assert time.monotonic() - t0 >= 0.9  # it waited for the local writer
            fcntl.lockf(fd, fcntl.LOCK_EX)
            t0 = time.monotonic()
            assert perm_error_or_temp(get, ftp, "g.up").startswith("450")
            assert 2.5 <= time.monotonic() - t0 < 10
        finally:
            os.close(fd)
        # a local reader that honours locks during a slow upload
        new = os.urandom(16 * CHUNK)
        started, result = threading.Event(), []
        uploader = threading.Thread(target=_slow_upload, args=(site, "g.up", new, started, result))
        uploader.start()
        assert started.wait(TIMEOUT)
        time.sleep(0.4)
        rfd = os.open(site.path("g.up"), os.O_RDONLY)
        try:
            refused = 0
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    fcntl.lockf(rfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except OSError:
                    refused += 1
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            assert refused > 0  # the upload held its write lock
            assert os.pread(rfd, len(new) + 1, 0) == new
        finally:
            os.close(rfd)
        uploader.join(TIMEOUT)
        assert result and result[0][0].startswith("226"), result


def perm_error_or_temp(fn, *args) -> str:
    with pytest.raises((ftplib.error_perm, ftplib.error_temp)) as e:
        fn(*args)
    return str(e.value)


# ---------------------------------------------------------------- better_stou

def _stou(ftp: ftplib.FTP, name: str) -> str:
    resp = ftp.storbinary(f"STOU {name}", io.BytesIO(b"u"))
    m = re.search(r"unique name (\S+?)\.?$", resp)
    assert m, resp
    return m.group(1)


def check_stou_names(site: Site, better: bool) -> None:
    """STOU: NAME, NAME.1, NAME.2 (vsftpd); better_stou: NAME.<6 random letters/digits> each time."""
    with site.fresh() as ftp:
        got = [_stou(ftp, "u.up") for _ in range(3)]
        if better:
            assert all(re.fullmatch(r"u\.up\.[A-Za-z0-9]{6}", n) for n in got) and len(set(got)) == 3, got
        else:
            assert got == ["u.up", "u.up.1", "u.up.2"]
        assert all(site.path(n).read_bytes() == b"u" for n in got)


# ---------------------------------------------------------------- utf8_filesystem

def check_utf8_feat(site: Site, advertised: bool) -> None:
    """utf8_filesystem=YES (Debian) lists UTF8 in FEAT even with utf8_enable=NO;
    OPTS UTF8 ON is answered 200 either way (as Debian's vsftpd 3.0.3)."""
    with site.connect() as ftp:
        feats = ftp.sendcmd("FEAT").splitlines()
        assert (" UTF8" in feats) is advertised
        assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")


# ---------------------------------------------------------------- use_sendfile, trans_chunk_size

def traced_download(site: Site, pid: int | Callable[[], int], size: int = 2 << 20) -> tuple[bytes, bytes, str]:
    """RETR a file of `size` bytes with strace on the process moving it (and its threads):
    (sent, got, trace).  `pid`: that process, or a function naming it once logged in."""
    data = os.urandom(size)
    with site.fresh() as ftp:
        ftp.voidcmd("TYPE I")
        local_file(site, "big.txt", data)
        if callable(pid):
            pid = pid()
        trace = Path(f"/tmp/ftpwarden-strace-{os.getpid()}-{pid}-{time.monotonic_ns()}.txt")
        strace = subprocess.Popen(["strace", "-f", "-qq", "-s", "0", "-e", "trace=sendfile,pread64,read",
                                   "-o", str(trace), "-p", str(pid)], stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)  # attached (strace -p has no "ready" signal; its threads are seized quickly)
            got = get(ftp, "big.txt")
        finally:
            strace.terminate()
            strace.wait(10)
        text = trace.read_text(errors="replace")
        trace.unlink()
    return data, got, text


def sendfile_counts(trace: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"sendfile\(\d+, \d+, \[\d+\](?: => \[\d+\])?, (\d+)\)", trace)]


def pread_counts(trace: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"pread64\(\d+, \"\"\.\.\., (\d+), \d+\)", trace)]
