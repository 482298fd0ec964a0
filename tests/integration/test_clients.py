"""curl and lftp, the clients operators actually use, against a real server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from .conftest import Server

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("lftp")),
                                reason="scripts/test-setup installs curl and lftp")
TIMEOUT = 60


def run(*cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, timeout=TIMEOUT)


def lftp(srv: Server, script: str, user: str = "anonymous", password: str = "x@y") -> subprocess.CompletedProcess:
    pre = ("set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 10; "
           "set ftp:passive-mode yes; set ftp:ssl-allow no; ")
    return run("lftp", "-u", f"{user},{password}", "-p", str(srv.port), "-e", pre + script + "; bye", srv.host)


def test_curl_download_and_listing(quick_server):
    r = run("curl", "-sS", f"{quick_server.url}/hello.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello world\n"
    r = run("curl", "-sS", f"{quick_server.url}/")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert sorted(line.split()[-1] for line in lines) == ["hello.txt", "sub"]
    r = run("curl", "-sS", "--list-only", f"{quick_server.url}/sub/")
    assert r.stdout.decode().split() == ["data.bin"]


def test_curl_active_mode_and_eprt(quick_server):
    r = run("curl", "-sS", "-P", "127.0.0.1", f"{quick_server.url}/hello.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello world\n"


def test_curl_upload_resume_and_quote(quick_server, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(2_000_000))
    url = f"{quick_server.url}/up.bin"
    r = run("curl", "-sS", "-u", "alice:secret", "-T", str(src), url)
    assert r.returncode == 0, r.stderr
    assert (quick_server.root / "up.bin").read_bytes() == src.read_bytes()
    # cut the file on the server, then let curl continue the upload (-C -: SIZE + APPE)
    with open(quick_server.root / "up.bin", "r+b") as f:
        f.truncate(700_000)
    r = run("curl", "-sS", "-u", "alice:secret", "-C", "-", "-T", str(src), url)
    assert r.returncode == 0, r.stderr
    assert (quick_server.root / "up.bin").read_bytes() == src.read_bytes()
    r = run("curl", "-sS", "-u", "alice:secret", f"{quick_server.url}/", "-Q", "MKD made", "-Q", "RNFR up.bin",
            "-Q", "RNTO made/moved.bin")
    assert r.returncode == 0, r.stderr
    assert (quick_server.root / "made" / "moved.bin").exists()


def test_curl_resumed_download(quick_server, tmp_path):
    out = tmp_path / "part"
    out.write_bytes((quick_server.root / "sub" / "data.bin").read_bytes()[:1000])
    r = run("curl", "-sS", "-C", "-", "-o", str(out), f"{quick_server.url}/sub/data.bin")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (quick_server.root / "sub" / "data.bin").read_bytes()


def test_curl_refused_login(quick_server):
    r = run("curl", "-sS", "-u", "alice:bad", f"{quick_server.url}/hello.txt")
    assert r.returncode == 67  # CURLE_LOGIN_DENIED


def test_lftp_mirror_both_ways(quick_server, tmp_path):
    down = tmp_path / "down"
    r = lftp(quick_server, f"mirror / {down}")
    assert r.returncode == 0, r.stderr
    assert (down / "hello.txt").read_bytes() == b"hello world\n"
    assert (down / "sub" / "data.bin").read_bytes() == (quick_server.root / "sub" / "data.bin").read_bytes()

    up = tmp_path / "up"
    (up / "deep" / "er").mkdir(parents=True)
    (up / "deep" / "er" / "f.bin").write_bytes(os.urandom(100_000))
    (up / "top.txt").write_text("top\n")
    r = lftp(quick_server, f"mirror -R {up} /mirrored", user="alice", password="secret")
    assert r.returncode == 0, r.stderr
    got = quick_server.root / "mirrored"
    assert (got / "top.txt").read_text() == "top\n"
    assert (got / "deep" / "er" / "f.bin").read_bytes() == (up / "deep" / "er" / "f.bin").read_bytes()


def test_lftp_listing_and_get(quick_server, tmp_path):
    r = lftp(quick_server, "cls -l /; cd sub; ls")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "hello.txt" in out and "data.bin" in out
    r = lftp(quick_server, f"get /sub/data.bin -o {tmp_path / 'x.bin'}")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256((tmp_path / "x.bin").read_bytes()).digest() == \
        hashlib.sha256((quick_server.root / "sub" / "data.bin").read_bytes()).digest()


def test_lftp_active_mode(quick_server, tmp_path):
    r = lftp(quick_server, f"set ftp:passive-mode no; get /hello.txt -o {tmp_path / 'h.txt'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "h.txt").read_bytes() == b"hello world\n"


def test_ipv6_loopback(make_server, tmp_path):
    root = tmp_path / "v6"
    root.mkdir()
    (root / "six.txt").write_text("six\n")
    srv = make_server(root, str(root), "--port", "0", "--bind", "::1", "--workers", "1")
    r = run("curl", "-sS", f"ftp://[::1]:{srv.port}/six.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"six\n"
    r = run("curl", "-sS", "-P", "::1", f"ftp://[::1]:{srv.port}/six.txt")  # EPRT |2|
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"six\n"
