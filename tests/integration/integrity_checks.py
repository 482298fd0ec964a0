"""The checks of issues 10 and 17 (data integrity, protocol defects) as functions of a `Site`:
test_integrity.py runs them against pooled mode, tests/privileged/test_integrity_isolated.py
against isolated mode."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import time

import pytest

from .conftest import Site, put

TIMEOUT = 20


def get(ftp: ftplib.FTP, name: str) -> bytes:
    buf = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buf.write)
    return buf.getvalue()


def nlst(ftp: ftplib.FTP, arg: str = "") -> list[str]:
    names: list[str] = []
    ftp.retrlines(f"NLST {arg}".rstrip(), names.append)
    return names


# ---------------------------------------------------------------- the checks

def check_rest_survives_pasv(site: Site) -> None:
    """REST 307200, PASV, STOR: the old first 300 KiB stay, the new bytes follow."""
    old = os.urandom(400 * 1024)
    new = os.urandom(200 * 1024)
    with site.fresh() as ftp:
        put(ftp, "f.bin", old)
        assert ftp.sendcmd("REST 307200").startswith("350")
        conn = ftp.transfercmd("STOR f.bin")  # PASV (or EPSV), then STOR: after the REST
        with conn:
            conn.sendall(new)
        assert ftp.voidresp().startswith("226")
        assert site.path("f.bin").read_bytes() == old[:307200] + new
        # and the same order for a download, with TYPE and PASV between
        assert ftp.sendcmd("REST 1000").startswith("350")
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR f.bin")
        with conn:
            got = b"".join(iter(lambda: conn.recv(65536), b""))
        ftp.voidresp()
        assert got == (old[:307200] + new)[1000:]


def check_rest_then_appe_and_stor(site: Site) -> None:
    with site.fresh() as ftp:
        put(ftp, "log.txt", b"IMPORTANT-DATA-0123456789\n")
        put(ftp, "log.txt", b"NEW\n", rest=5, cmd="APPE")
        assert site.path("log.txt").read_bytes() == b"IMPORTANT-DATA-0123456789\nNEW\n"
        put(ftp, "t.txt", b"0123456789")
        put(ftp, "t.txt", b"AB", rest=4)
        assert site.path("t.txt").read_bytes() == b"0123AB6789"
        put(ftp, "t.txt", b"0123", rest=10)  # exactly at the end: a resume
        assert site.path("t.txt").read_bytes() == b"0123AB67890123"


def check_rest_past_end_of_upload(site: Site) -> None:
    """A STOR past the end would leave a gap of zeros that looks complete: 554."""
    with site.fresh() as ftp:
        put(ftp, "t.txt", b"0123456789")
        with pytest.raises(ftplib.error_perm) as e:
            put(ftp, "t.txt", b"XYZ", rest=12)
        assert str(e.value).startswith("554") and "12" in str(e.value) and "10 bytes" in str(e.value)
        with pytest.raises(ftplib.error_perm, match=r"^55"):
            put(ftp, "missing.txt", b"XYZ", rest=3)  # a restart never creates a file
        assert site.path("t.txt").read_bytes() == b"0123456789"
        assert not site.path("missing.txt").exists()


def check_rest_past_end(site: Site) -> None:
    with site.fresh() as ftp:
        put(ftp, "small.txt", b"x" * 42)
        with pytest.raises(ftplib.error_perm) as e:
            ftp.retrbinary("RETR small.txt", lambda b: None, rest=1000)
        text = str(e.value)
        assert text.startswith("554") and "1000" in text and "42 bytes" in text, text
        assert ftp.voidcmd("NOOP").startswith("200")  # the session goes on
        assert get(ftp, "small.txt") == b"x" * 42


def check_nlst_names_and_globs(site: Site) -> None:
    with site.fresh() as ftp:
        ftp.mkd("sub")
        for name in ("inner.txt", "other.txt", "a1.bin", ".dot.txt"):
            put(ftp, f"sub/{name}", name.encode())
        ftp.cwd("sub")
        assert nlst(ftp, "inner.txt") == ["inner.txt"]
        assert sorted(nlst(ftp, "*.txt")) == ["inner.txt", "other.txt"]
        assert nlst(ftp, "?1.bin") == ["a1.bin"]
        assert nlst(ftp, "[io]nner.txt") == ["inner.txt"]
        assert nlst(ftp, ".*.txt") == [".dot.txt"]
        ftp.cwd("..")
        assert nlst(ftp, "sub/inner.txt") == ["sub/inner.txt"]
        assert sorted(nlst(ftp, "sub/*.txt")) == ["sub/inner.txt", "sub/other.txt"]
        assert sorted(nlst(ftp, f"{site.base}/sub/*.txt")) == [f"{site.base}/sub/inner.txt",
                                                               f"{site.base}/sub/other.txt"]
        assert nlst(ftp, "sub/*.none") == []
        lines: list[str] = []
        ftp.retrlines("LIST sub/*.txt", lines.append)
        assert [line.split()[-1] for line in lines] == ["inner.txt", "other.txt"]
        # a pattern never leaves the root: ".." stops there, every name is the root's
        names = [n.rsplit("/", 1)[1] for n in nlst(ftp, "../../../../*")]
        assert site.base.lstrip("/") in names
        assert all(os.path.lexists(site.local / n) for n in names), names


def check_trailing_slash(site: Site) -> None:
    with site.fresh() as ftp:
        put(ftp, "keep.txt", b"keep")
        for cmd in ("DELE keep.txt/", "SIZE keep.txt/", "MDTM keep.txt/"):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.sendcmd(cmd)
        for cmd in ("MFMT 20200102030405 keep.txt/", "SITE CHMOD 640 keep.txt/"):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.sendcmd(cmd)
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            get(ftp, "keep.txt/")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            put(ftp, "new.txt/", b"data")
        assert site.path("keep.txt").read_bytes() == b"keep"
        assert site.path("keep.txt").stat().st_mtime > 1600000000  # MFMT did not reach it
        assert site.path("keep.txt").stat().st_mode & 0o777 != 0o640  # nor SITE CHMOD
        ftp.sendcmd("SITE CHMOD 640 keep.txt")  # without the slash both work
        ftp.sendcmd("MFMT 20200102030405 keep.txt")
        assert site.path("keep.txt").stat().st_mode & 0o777 == 0o640
        assert not site.path("new.txt").exists()
        ftp.sendcmd("RNFR keep.txt")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd("RNTO x/")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd("RNFR keep.txt/")
        assert site.path("keep.txt").exists() and not site.path("x").exists()
        # a directory still takes its slash
        ftp.mkd("d/")
        ftp.rename("d/", "e/")
        assert site.path("e").is_dir()
        ftp.rmd("e/")
        ftp.delete("keep.txt")
        assert not site.path("keep.txt").exists()


def check_last_login_failure_is_answered(site: Site, max_fails: int) -> None:
    ftp = site.connect(login=False)
    try:
        for i in range(max_fails):
            ftp.sendcmd(f"USER {site.user}")
            try:
                ftp.sendcmd("PASS definitely-wrong")
            except ftplib.error_perm as e:
                assert str(e).startswith("530 Login incorrect"), (i, e)
            else:
                raise AssertionError("a wrong password was accepted")
        ftp.sock.settimeout(10)
        assert ftp.sock.recv(100) == b""  # then the end, and nothing else
    finally:
        ftp.close()


def check_long_line_is_answered(site: Site, size: int = 1 << 20) -> None:
    """A line of `size` bytes and no newline: its 500 once it passes
    control_line_max, while the client is still sending or waiting; the session
    then goes on after the line's end."""
    with socket.create_connection((site.host, site.port), timeout=TIMEOUT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"X" * size)
        s.settimeout(10)
        start = time.monotonic()
        line = f.readline()
        assert line == b"500 Command line too long.\r\n", line
        assert time.monotonic() - start < 10
        s.sendall(b"Y" * size + b"\r\nNOOP\r\n")  # the rest is dropped up to its newline
        assert f.readline().startswith(b"200")
