"""Issue 12's files and transfer options, the parts that need no server: the core's
decisions (download_file/upload_file, ls -R, locks, better_stou, utf8_filesystem),
the recursive listing's bounds, trans_chunk_size's rule, and OFD locks within one
process (what makes lock_upload_files work between sessions of one pooled worker)."""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

from ftpwarden.net import data, files, transfer
from ftpwarden.net.jail import Jail
from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.proto import actions as A
from ftpwarden.proto.commands import Perm
from ftpwarden.proto.principal import Principal, UserClass
from ftpwarden.proto.replies import Reply
from ftpwarden.proto.session import Session


def logged_in(**cfg) -> Session:
    s = Session(session_options(default_config(**cfg)), local_ip="127.0.0.1", remote_ip="127.0.0.1")
    s.feed(b"USER alice")
    (auth,) = s.feed(b"PASS pw")
    s.complete(auth, Principal(name="alice", user_class=UserClass.GUEST, root="/", grants=frozenset(Perm),
                               umask=0o022))
    return pasv(s)


def pasv(s: Session) -> Session:
    """A data channel for the next transfer (one serves one)."""
    (op,) = s.feed(b"PASV")
    s.complete(op, ("127.0.0.1", 50000))
    return s


def codes(events) -> list[int]:
    return [e.code for e in events if isinstance(e, Reply)]


def test_download_and_upload_patterns_are_decided_in_the_core():
    s = logged_in(download_file="{*.txt,*.md}", upload_file="{*.up}", deny_file="{secret*}")
    assert codes(s.feed(b"RETR a.bin")) == [550]
    assert codes(s.feed(b"RETR secret.txt")) == [550]
    (send,) = s.feed(b"RETR dir/a.md")
    assert isinstance(send, A.SendFile)
    s.complete(send, A.TransferDone("ok"))
    s = logged_in(upload_file="{*.up}")
    for verb in (b"STOR", b"APPE", b"STOU"):
        assert codes(s.feed(verb + b" x.bin")) == [550]
    (recv,) = s.feed(b"STOR x.up")
    assert isinstance(recv, A.ReceiveFile)


def test_transfer_decisions_carry_the_options():
    s = logged_in(delete_failed_uploads=True, better_stou=True, lock_upload_files=False)
    (recv,) = s.feed(b"STOU x")
    assert recv.delete_on_failure and recv.random_suffix and not recv.lock
    s.complete(recv, A.TransferDone("ok", name="x"))
    s = logged_in()  # vsftpd's defaults: locks on, the rest off
    (send,) = s.feed(b"RETR f")
    assert send.lock
    s.complete(send, A.TransferDone("ok"))


def test_list_r_is_recursive_only_with_ls_recurse_enable():
    for enabled in (True, False):
        s = logged_in(ls_recurse_enable=enabled)
        for arg in (b"LIST -R", b"LIST -lR", b"LIST -aR sub", b"NLST -R"):
            (listing,) = s.feed(arg)
            assert listing.recursive is enabled, arg
            s.complete(listing, A.TransferDone("ok"))
            pasv(s)
        (listing,) = s.feed(b"LIST -R *.txt")  # a glob lists one directory's matches
        assert not listing.recursive


def test_a_truncated_listing_is_451_not_226():
    s = logged_in(ls_recurse_enable=True)
    (listing,) = s.feed(b"LIST -R")
    (reply,) = s.complete(listing, A.TransferDone("truncated", 10, detail="more than 5 entries"))
    assert reply.code == 451 and "more than 5 entries" in reply.text


def test_utf8_filesystem_lists_utf8_in_feat():
    assert "UTF8" in logged_in(utf8_enable=False, utf8_filesystem=True).features()
    assert "UTF8" not in logged_in(utf8_enable=False).features()


def _tree(root) -> None:
    for d in ("a", "a/b", "a/b/c", ".dot", "hidden"):
        (root / d).mkdir()
    for i in range(5):
        (root / "a" / f"f{i}").write_bytes(b"x")
    (root / "a" / "b" / "c" / "deep").write_bytes(b"x")
    os.symlink("../..", root / "a" / "b" / "up")


def _render(root, session: Session, arg: bytes) -> tuple[bytes, str]:
    (listing,) = session.feed(arg)
    jail = Jail(str(root))
    try:
        return transfer._render(SimpleNamespace(session=session), jail, listing)  # type: ignore[arg-type]
    finally:
        jail.close()
        session.complete(listing, A.TransferDone("ok"))
        pasv(session)


def test_recursive_listing_sections_and_what_it_enters(tmp_path):
    _tree(tmp_path)
    s = logged_in(ls_recurse_enable=True, hide_file="{hidden}")
    body, cut = _render(tmp_path, s, b"LIST -R")
    assert cut == ""
    heads = re.findall(rb"^(.*):\r$", body, re.M)
    assert heads == [b".", b"./a", b"./a/b", b"./a/b/c"]  # no .dot, no hidden, never through "up"
    assert b" up -> ../..\r\n" in body
    body, _ = _render(tmp_path, s, b"LIST -aR")
    assert re.findall(rb"^(.*):\r$", body, re.M) == [b".", b"./.dot", b"./a", b"./a/b", b"./a/b/c"]
    body, _ = _render(tmp_path, s, b"NLST -R a")
    assert b"a/f0\r\n" in body and b"a/b/c/deep\r\n" in body
    body, _ = _render(tmp_path, s, b"LIST -R /")
    assert re.findall(rb"^(.*):\r$", body, re.M) == [b"/", b"/a", b"/a/b", b"/a/b/c"]
    s = logged_in(ls_recurse_enable=True, force_dot_files=True, deny_file="{b}")
    body, _ = _render(tmp_path, s, b"LIST -R")
    assert re.findall(rb"^(.*):\r$", body, re.M) == [b".", b"./.dot", b"./a", b"./hidden"]  # deny_file: not entered


def test_recursive_listing_stops_at_its_entry_bound(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(transfer, "RECURSE_MAX_ENTRIES", 6)
    body, cut = _render(tmp_path, logged_in(ls_recurse_enable=True), b"LIST -R")
    assert "more than 6 entries" in cut
    assert body.endswith(b"ftpwarden: recursive listing stopped here (more than 6 entries); list a subdirectory\r\n")
    assert b"./a/b/c:" not in body


def test_recursive_listing_stops_at_its_time_bound(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(transfer, "RECURSE_MAX_SECONDS", 0.0)
    body, cut = _render(tmp_path, logged_in(ls_recurse_enable=True), b"LIST -R")
    assert "seconds" in cut and body.count(b":\r\n") == 0


def test_trans_chunk_size_rule_is_vsftpds():
    assert [data.chunk_size(v) for v in (0, -1, 1, 4095, 4096, 8192, 65535, 65536, 1 << 20)] == \
        [0, 0, 4096, 4096, 4096, 8192, 65535, 0, 0]


def test_ofd_locks_exclude_two_opens_in_one_process(tmp_path):
    """Classic POSIX locks never conflict within a process: two sessions of one pooled
    worker would both get them.  OFD locks do conflict."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    writer = os.open(path, os.O_WRONLY)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert files.try_lock(writer, exclusive=True)
        assert not files.try_lock(reader, exclusive=False)
        os.close(writer)
        writer = -1
        assert files.try_lock(reader, exclusive=False)
        other = os.open(path, os.O_RDONLY)
        try:
            assert files.try_lock(other, exclusive=False)  # readers share
        finally:
            os.close(other)
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)


def test_better_stou_candidates():
    plain = files._stou_candidates("/d/x", False)
    assert plain[:3] == ["/d/x", "/d/x.1", "/d/x.2"]
    better = files._stou_candidates("/d/x", True)
    assert len(set(better)) == len(better) == files.STOU_TRIES  # (a repeat: 1 in 10^10 per pair)
    assert all(re.fullmatch(r"/d/x\.[A-Za-z0-9]{6}", c) for c in better)
