"""Listings stay byte-identical: LIST/NLST/MLSD/MLST/STAT of a fixed tree
against output captured from the code before the issue-16 speed-up.

Regenerate (only for an intended format change):
    FTPWARDEN_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/unit/test_listing_golden.py
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpwarden.net import files, transfer
from ftpwarden.net.jail import Jail
from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.proto import actions as A
from ftpwarden.proto.commands import Perm
from ftpwarden.proto.principal import Principal, UserClass
from ftpwarden.proto.session import Session

GOLDEN = Path(__file__).parent / "data" / "listing_golden.bin"
NOW = 1_780_000_000.25  # 2026-05-28
DAY = 86400
NAMES = {(1000, True): "alice", (1000, False): "staff", (0, True): "root", (0, False): "root",
         (4242, True): "averylongusername", (4242, False): "averylonggroupname"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the fixed tree")


def _tree(root: Path) -> None:
    """Fixed modes, owners, sizes and times (ino/dev and dir sizes are masked)."""
    pub = root / "pub"
    pub.mkdir()
    files_: list[tuple[bytes, int, int, int, float]] = [
        (b"a.txt", 0o644, 1000, 5, NOW - 3600),
        (b"big.bin", 0o600, 0, 123456789, 978307200.0),  # 2001: shows the year
        (b".hidden", 0o644, 1000, 1, NOW - 60),
        (b"name with spaces.txt", 0o640, 4242, 12, NOW - 10 * DAY),
        (b"bad\xff\xfename", 0o644, 1000, 3, NOW - 5 * DAY),
        (b"future.txt", 0o644, 1000, 0, NOW + 400 * DAY),
        (b"soon.txt", 0o644, 1000, 0, NOW + 0.5),  # same second: still recent
        (b"edge_in", 0o644, 1000, 0, NOW - 182 * DAY),
        (b"edge_out", 0o644, 1000, 0, NOW - 182 * DAY - 1),
        (b"suid", 0o4755, 0, 7, NOW - 7200),
        (b"sgid_nox", 0o2644, 0, 7, NOW - 7200),
        (b"secret.key", 0o600, 1000, 9, NOW - 7200),
        (b"-dash", 0o644, 1000, 1, NOW - 7200),
        (b"99999", 0o644, 123456789, 1, NOW - 7200),
    ]
    for name, mode, uid, size, mtime in files_:
        p = os.path.join(os.fsencode(pub), name)
        with open(p, "wb") as f:
            f.truncate(size)
        os.chown(p, uid, uid)
        os.chmod(p, mode)  # after chown, which clears setuid/setgid
        os.utime(p, (mtime, mtime))
    os.link(pub / "a.txt", pub / "hard")  # nlink 2
    os.mkfifo(pub / "pipe", 0o600)
    os.utime(pub / "pipe", (NOW - 600, NOW - 600))
    sub = pub / "sub"
    sub.mkdir()
    (sub / "inner").mkdir()
    (sub / "f").write_bytes(b"x")
    os.utime(sub / "f", (NOW - 5 * DAY, NOW - 5 * DAY))
    os.chmod(sub, 0o755)
    sticky = pub / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    links = {"link": "a.txt", "odd link": "target with space", "semi": "x;y", "abs": "/sub/f",
             "dangling": "nowhere"}
    for name, target in links.items():
        os.symlink(target, pub / name)
        os.lchown(pub / name, 1000, 1000)
        os.utime(pub / name, (NOW - 300, NOW - 300), follow_symlinks=False)
    for d, mtime in ((sub / "inner", NOW - 2 * DAY), (sub, NOW - 3 * DAY), (sticky, NOW - 4 * DAY),
                     (pub, NOW - 30), (root, 1_000_000_000.0)):
        os.chown(d, 1000, 1000)
        os.utime(d, (mtime, mtime))


def _session(**cfg: object) -> Session:
    names = NAMES.get if cfg.pop("names", False) else None
    s = Session(session_options(default_config(**cfg)), local_ip="127.0.0.1", remote_ip="127.0.0.1",
                names=(lambda i, u: NAMES.get((i, u), str(i))) if names else None)
    s.feed(b"USER alice")
    (auth,) = s.feed(b"PASS pw")
    grants = frozenset(Perm) - {Perm.DELETE}  # a missing letter in perm=
    s.complete(auth, Principal(name="alice", user_class=UserClass.GUEST, root="/", grants=grants,
                               umask=0o022))
    return s


CONFIGS: dict[str, dict[str, object]] = {
    "default": {},
    "names": {"names": True},
    "hide_ids": {"hide_ids": True, "names": True},
    "localtime": {"use_localtime": True},
    "force_dot_files": {"force_dot_files": True},
    "hide_deny": {"hide_file": "{*.key,sub}", "deny_file": "{*.txt}"},
}

# (label, kind, path, given, pattern, show_hidden, dir_only)
LISTINGS = [
    ("LIST", "LIST", "/pub", "", "", False, False),
    ("LIST -a", "LIST", "/pub", "", "", True, False),
    ("LIST sub", "LIST", "/pub/sub", "sub", "", False, False),
    ("LIST file", "LIST", "/pub/a.txt", "a.txt", "", False, False),
    ("LIST dotfile", "LIST", "/pub/.hidden", ".hidden", "", False, False),
    ("LIST link", "LIST", "/pub/link", "link", "", False, False),
    ("LIST glob", "LIST", "/pub", "*.txt", "*.txt", False, True),
    ("LIST dotglob", "LIST", "/pub", ".*", ".*", False, True),
    ("NLST", "NLST", "/pub", "", "", False, False),
    ("NLST -a", "NLST", "/pub", "", "", True, False),
    ("NLST prefix", "NLST", "/pub/sub", "sub", "", False, False),
    ("NLST slash prefix", "NLST", "/pub/sub", "/pub/sub/", "", False, False),
    ("NLST glob", "NLST", "/pub", "/pub/*.txt", "*.txt", False, True),
    ("NLST file", "NLST", "/pub/a.txt", "a.txt", "", False, False),
    ("MLSD", "MLSD", "/pub", "", "", True, True),
    ("MLSD sub", "MLSD", "/pub/sub", "sub", "", True, True),
]
CONTROL = [("MLST", "/pub/a.txt"), ("MLST", "/pub/name with spaces.txt"), ("MLST", "/pub/link"),
           ("MLST", "/pub/sub"), ("MLST", "/"), ("STAT", "/pub"), ("STAT", "/pub/link")]
OPTS = [("default facts", None), ("all facts", b"OPTS MLST " + b"".join(
    f.encode() + b";" for f in ("type", "size", "modify", "perm", "unique", "unix.mode", "unix.owner",
                                "unix.group", "unix.uid", "unix.gid"))),
        ("subset", b"OPTS MLST SIZE;unix.OWNER;type;"), ("no facts", b"OPTS MLST ")]


def _mask(root: Path, out: bytes) -> bytes:
    """ino/dev and directory sizes depend on the file system, not on us."""
    out = re.sub(rb"unique=[0-9a-f]+U[0-9a-f]+;", b"unique=U;", out)
    return re.sub(rb"(?m)^(d\S{9} +\d+ +\S+ +\S+ +)(\d+)", lambda m: m.group(1) + b"#" * len(m.group(2)), out)


def _uniques_are_real(root: Path, out: bytes, base: str) -> None:
    """The masked unique= facts are each entry's own dev and inode."""
    for m in re.finditer(rb"unique=([0-9a-f]+)U([0-9a-f]+);[^ ]* ([^\r]*)\r\n", out):
        name = m.group(3)
        rel = name if name.startswith(b"/") else base.encode() + b"/" + name
        full = os.fsencode(root) + rel
        st = os.stat(full) if not base else os.lstat(full)  # MLST follows links, MLSD does not
        assert (int(m.group(1), 16), int(m.group(2), 16)) == (st.st_dev, st.st_ino), name


def _render_all(root: Path) -> bytes:
    out = []
    with Jail(str(root)) as jail:
        for cname, cfg in CONFIGS.items():
            for opts_label, opts in OPTS:
                s = _session(**cfg)
                if opts is not None:
                    s.feed(opts)
                cc = SimpleNamespace(session=s)
                cases = LISTINGS if opts is None else [c for c in LISTINGS if c[1] == "MLSD"]
                for label, kind, path, given, pattern, hidden, dir_only in cases:
                    action = A.SendListing(kind=kind, path=path, given=given, pattern=pattern,
                                           show_hidden=hidden, dir_only=dir_only)
                    body = transfer._render_listing(cc, jail, action)  # type: ignore[arg-type]
                    _uniques_are_real(root, body, path)
                    out.append(f"### {cname} / {opts_label} / {label}\n".encode() + body)
                for verb, path in CONTROL:
                    if opts is not None and verb == "STAT":
                        continue
                    act = A.ControlListing(verb=verb, path=path)
                    listed = files.entries(jail, path, verb == "MLST")
                    (reply,) = s._done_controllisting(act, (listed, time.time()))
                    text = reply.encode()
                    _uniques_are_real(root, text.replace(b"\r\n ", b"\r\n"), "")
                    out.append(f"### {cname} / {opts_label} / {verb} {path}\n".encode() + text)
    return _mask(root, b"".join(out))


def test_listings_are_byte_identical_to_the_captured_format(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # use_localtime: +05:30, so minutes move too
    time.tzset()
    try:
        root = tmp_path / "root"
        root.mkdir()
        _tree(root)
        got = _render_all(root)
    finally:
        monkeypatch.undo()
        time.tzset()
    if os.environ.get("FTPWARDEN_GOLDEN_WRITE"):
        GOLDEN.write_bytes(got)
    want = GOLDEN.read_bytes()
    assert got.splitlines() == want.splitlines()
    assert got == want
