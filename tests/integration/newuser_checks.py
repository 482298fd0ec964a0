"""The checks of issue 17 with the clients a new user reaches for (tnftp, ncftpget, lftp):
test_newuser_clients.py runs them against pooled mode, tests/privileged/test_integrity_isolated.py
against isolated mode."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Site, put

TIMEOUT = 60


def run(*cmd: str, input: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, timeout=TIMEOUT, cwd=cwd)


def needs(*tools: str):
    missing = [t for t in tools if not shutil.which(t)]
    return pytest.mark.skipif(bool(missing), reason=f"scripts/test-setup installs {', '.join(missing)}")


def lftp(site: Site, script: str) -> subprocess.CompletedProcess:
    pre = ("set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 10; "
           "set ftp:ssl-allow no; ")
    return run("lftp", "-u", f"{site.user},{site.password}", "-p", str(site.port),
               "-e", pre + script + "; bye", site.host)


def tree(root: Path) -> dict[str, str]:
    """relative path -> "dir", "link:TARGET" or the file's sha256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_sub(site: Site) -> None:
    """<base>/sub with inner.txt, other.txt, x.bin, made through FTP."""
    with site.fresh() as ftp:
        ftp.mkd("sub")
        for name in ("inner.txt", "other.txt", "x.bin"):
            put(ftp, f"sub/{name}", f"content of {name}\n".encode())


# ---------------------------------------------------------------- the checks

def check_tnftp_mget(site: Site, tmp: Path) -> None:
    make_sub(site)
    for i, pattern in enumerate(("inner.txt", "*.txt")):
        dest = tmp / f"tnftp{i}"
        dest.mkdir()
        script = (f"user {site.user} {site.password}\ncd {site.base}/sub\nprompt\nbinary\n"
                  f"mget {pattern}\nquit\n")
        r = run("tnftp", "-n", "-v", site.host, str(site.port), input=script.encode(), cwd=dest)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        assert "non-relative" not in out, out
        want = ["inner.txt"] if pattern == "inner.txt" else ["inner.txt", "other.txt"]
        assert sorted(os.listdir(dest)) == want, out
        for name in want:
            assert (dest / name).read_bytes() == f"content of {name}\n".encode()


def check_ncftpget_glob(site: Site, tmp: Path) -> None:
    make_sub(site)
    dest = tmp / "ncftp"
    dest.mkdir()
    r = run("ncftpget", "-u", site.user, "-p", site.password, "-P", str(site.port), "-t", "30",
            site.host, str(dest), f"{site.base}/sub/*.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(dest)) == ["inner.txt", "other.txt"]
    assert (dest / "other.txt").read_bytes() == b"content of other.txt\n"


def check_lftp_mirror_keeps_symlinks(site: Site, tmp: Path) -> None:
    make_sub(site)
    sub = site.path("sub")
    os.symlink("inner.txt", sub / "link.txt")
    os.symlink("../sub", site.path("sublink"))
    os.symlink(f"{site.base}/sub/x.bin", sub / "abs.bin")  # absolute: the text as the jail shows it
    down = tmp / "down"
    r = lftp(site, f"mirror {site.base} {down}")
    assert r.returncode == 0, r.stderr.decode()
    assert tree(down) == tree(site.path(""))
    assert os.readlink(down / "sub" / "link.txt") == "inner.txt"
    assert os.readlink(down / "sublink") == "../sub"
    # MLSD itself names the target, in the form other servers send
    lines: list[str] = []
    with site.connect() as ftp:
        ftp.retrlines(f"MLSD {site.base}/sub", lines.append)
    (link,) = [line for line in lines if line.endswith(" link.txt")]
    assert link.startswith("type=OS.unix=slink:inner.txt;"), link


def check_lftp_mirror_upload(site: Site, tmp: Path) -> None:
    up = tmp / "up"
    (up / "d" / "e").mkdir(parents=True)
    (up / "a.txt").write_bytes(b"a\n")
    (up / "d" / "b.bin").write_bytes(os.urandom(300_000))
    (up / "d" / "e" / "c.txt").write_bytes(b"")
    with site.fresh():
        pass
    r = lftp(site, f"mirror -R {up} {site.base}/up")
    assert r.returncode == 0, r.stderr.decode()
    assert tree(site.path("up")) == tree(up)
    # a second run finds nothing to do (the listing of what it uploaded is parsed back)
    r = lftp(site, f"mirror -R {up} {site.base}/up")
    assert r.returncode == 0, r.stderr.decode()
    assert tree(site.path("up")) == tree(up)
