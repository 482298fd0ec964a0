"""The sans-IO core: feed bytes, assert replies and actions.  No sockets, no files."""

from __future__ import annotations

import os

import pytest

from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.proto import actions as A
from ftpwarden.proto.commands import COMMANDS, Perm
from ftpwarden.proto.principal import Principal, UserClass
from ftpwarden.proto.replies import Reply
from ftpwarden.proto.session import Session
from ftpwarden.proto.verbs import HANDLERS, handles


def FakeAccount(**over) -> Principal:
    fields = dict(name="alice", user_class=UserClass.GUEST, root="/", grants=frozenset(Perm), umask=0o022)
    return Principal(**{**fields, **over})


def new(**cfg) -> Session:
    return Session(session_options(default_config(**cfg)), local_ip="127.0.0.1", remote_ip="127.0.0.1")


def logged_in(**cfg) -> Session:
    s = new(**cfg)
    s.feed(b"USER alice")
    (auth,) = s.feed(b"PASS pw")
    assert isinstance(auth, A.Authenticate)
    s.complete(auth, FakeAccount())
    return s


def codes(events) -> list[int]:
    return [e.code for e in events if isinstance(e, Reply)]


def test_every_command_has_exactly_one_handler():
    # every row of the table has a registered handler, and nothing else is registered
    assert set(HANDLERS) == set(COMMANDS)
    assert all(callable(h) for h in HANDLERS.values())
    # a second handler for a row is refused when it is registered
    with pytest.raises(LookupError):
        handles("RETR")(HANDLERS["STOR"])
    with pytest.raises(LookupError):
        handles("NOSUCH")(HANDLERS["STOR"])


def test_greeting_is_220():
    assert codes(new().greeting()) == [220]


@pytest.mark.parametrize("line,code", [
    (b"NOOP", 200), (b"SYST", 215), (b"FEAT", 211), (b"HELP", 214), (b"PWD", 530),
    (b"RETR x", 530), (b"LIST", 530), (b"BOGUS", 500), (b"PASS x", 503), (b"", 500),
    (b"A" * 5000, 500), (b"NO\x00OP", 501), (b"USER", 501),
])
def test_before_login(line, code):
    assert codes(new().feed(line)) == [code]


def test_http_verbs_close_the_session():
    (r,) = new().feed(b"GET / HTTP/1.1")
    assert r.code == 500 and r.close


def test_telnet_iac_is_stripped():
    assert codes(new().feed(b"\xff\xf4\xff\xf2NOOP")) == [200]


def test_login_then_failure_counts_and_closes():
    s = new(max_login_fails=2)
    s.feed(b"USER bob")
    (auth,) = s.feed(b"PASS wrong")
    r1 = s.complete(auth, None)
    assert codes(r1) == [530] and not r1[0].close
    s.feed(b"USER bob")
    (auth,) = s.feed(b"PASS wrong")
    r2 = s.complete(auth, None)
    assert codes(r2) == [530] and r2[0].close


def test_anonymous_refused_when_disabled():
    assert codes(new(anonymous_enable=False).feed(b"USER anonymous")) == [530]


def test_no_anon_password_logs_in_at_user():
    (ev,) = new(no_anon_password=True).feed(b"USER ftp")
    assert isinstance(ev, A.Authenticate) and ev.password == ""


def test_pwd_cwd_cdup():
    s = logged_in()
    assert s.feed(b"PWD")[0].text.startswith('"/"')
    (cd,) = s.feed(b"CWD a/b/../c")
    assert cd == A.ChangeDir("/a/c", None)
    assert codes(s.complete(cd, None)) == [250]
    assert s.cwd == "/a/c"
    (up,) = s.feed(b"CDUP")
    assert up.path == "/a" and codes(s.complete(up, None)) == [200]
    (bad,) = s.feed(b"CWD nowhere")
    assert codes(s.complete(bad, FileNotFoundError(2, "x"))) == [550]
    assert s.cwd == "/a"


def test_cwd_never_leaves_root():
    s = logged_in()
    (cd,) = s.feed(b"CWD ../../../etc")
    assert cd.path == "/etc"


def test_type_stru_mode():
    s = logged_in()
    assert codes(s.feed(b"TYPE A")) == [200] and s.ascii
    assert codes(s.feed(b"TYPE I")) == [200] and not s.ascii
    assert codes(s.feed(b"TYPE L 8")) == [200]
    assert codes(s.feed(b"TYPE E")) == [504]
    assert codes(s.feed(b"TYPE Q")) == [501]
    assert codes(s.feed(b"STRU F")) == [200]
    assert codes(s.feed(b"STRU R")) == [504]
    assert codes(s.feed(b"MODE S")) == [200]
    assert codes(s.feed(b"MODE B")) == [504]


def test_retr_needs_a_data_channel_then_uses_rest_once():
    s = logged_in()
    assert codes(s.feed(b"RETR f")) == [425]
    (op,) = s.feed(b"PASV")
    assert isinstance(op, A.OpenPassive)
    assert codes(s.complete(op, ("127.0.0.1", 50000))) == [227]
    assert codes(s.feed(b"REST 100")) == [350]
    (send,) = s.feed(b"RETR f")
    assert send == A.SendFile("/f", offset=100, lock=True)  # lock_upload_files=YES (the default)
    assert codes(s.complete(send, A.TransferDone("ok", 10))) == [226]
    s.complete(s.feed(b"PASV")[0], ("127.0.0.1", 50001))
    (send2,) = s.feed(b"RETR f")
    assert send2.offset == 0


def with_pasv(s: Session) -> Session:
    (op,) = s.feed(b"PASV")
    s.complete(op, ("127.0.0.1", 50000))
    return s


def active(s: Session) -> None:
    s.feed(b"PORT 127,0,0,1,200,10")


# (commands between REST and the transfer) -- the marker must reach the transfer,
# as in vsftpd and pyftpdlib: only RETR/STOR/APPE/STOU take it, REIN drops it
@pytest.mark.parametrize("between", [
    [b"PASV"], [b"EPSV"], [b"PORT 127,0,0,1,200,10"], [b"EPRT |1|127.0.0.1|51210|"],
    [b"TYPE I"], [b"TYPE A"], [b"MODE S"], [b"STRU F"], [b"NOOP"], [b"PWD"], [b"SIZE f"], [b"FEAT"],
    [b"TYPE I", b"PASV"], [b"PASV", b"TYPE I", b"MODE S", b"STRU F"],
])
@pytest.mark.parametrize("verb,field", [(b"STOR", "offset"), (b"RETR", "offset")])
def test_rest_survives_until_the_transfer(between, verb, field):
    s = logged_in()
    assert codes(s.feed(b"REST 307200")) == [350]
    for line in between:
        for ev in s.feed(line):
            if isinstance(ev, A.OpenPassive):
                s.complete(ev, ("127.0.0.1", 50000))
    if s.data_kind is None:
        with_pasv(s)
    events = s.feed(verb + b" f")
    (xfer,) = [e for e in events if isinstance(e, A.Transfer)]
    assert getattr(xfer, field) == 307200
    assert s.rest == 0  # used once


@pytest.mark.parametrize("line,code", [
    (b"RETR f", 425), (b"STOR f", 425), (b"APPE f", 425),  # refused: the marker goes with it
])
def test_rest_is_consumed_by_a_refused_transfer(line, code):
    s = logged_in()
    s.feed(b"REST 10")
    assert codes(s.feed(line)) == [code]
    assert s.rest == 0


def test_rest_is_cleared_by_rein():
    s = logged_in()
    s.feed(b"REST 10")
    s.feed(b"REIN")
    assert s.rest == 0


def test_rest_then_appe_appends_and_stou_starts_fresh():
    s = with_pasv(logged_in())
    s.feed(b"REST 5")
    (appe,) = s.feed(b"APPE log.txt")
    assert appe == A.ReceiveFile("/log.txt", append=True, offset=0, umask=0o022, file_mode=0o666, lock=True)
    s.complete(appe, A.TransferDone("ok", 4))
    with_pasv(s)
    s.feed(b"REST 5")
    (stou,) = s.feed(b"STOU")
    assert stou.unique and stou.offset == 0


def test_rest_then_stor_writes_from_the_marker():
    s = with_pasv(logged_in())
    s.feed(b"REST 4")
    (stor,) = s.feed(b"STOR t.txt")
    assert stor.offset == 4 and not stor.append


def test_rest_past_the_end_says_where_and_how_big():
    s = with_pasv(logged_in())
    s.feed(b"REST 1000")
    (send,) = s.feed(b"RETR small.txt")
    (r,) = s.complete(send, A.TransferDone("local_error", error=A.RestartBeyondEnd(1000, 42)))
    assert r.code == 554
    assert "1000" in r.text and "42 bytes" in r.text


def test_pasv_reply_format():
    s = logged_in()
    (op,) = s.feed(b"PASV")
    (r,) = s.complete(op, ("127.0.0.1", 0x1234))
    assert r.text == "Entering Passive Mode (127,0,0,1,18,52)."
    (op,) = s.feed(b"EPSV")
    (r,) = s.complete(op, ("127.0.0.1", 5000))
    assert r.code == 229 and "(|||5000|)" in r.text


def test_epsv_all_blocks_other_data_commands():
    s = logged_in()
    assert codes(s.feed(b"EPSV ALL")) == [200]
    assert codes(s.feed(b"PASV")) == [503]
    assert codes(s.feed(b"PORT 127,0,0,1,200,1")) == [503]


@pytest.mark.parametrize("line,code", [
    (b"PORT 127,0,0,1,200,1", 200),
    (b"PORT 127,0,0,1,0,21", 500),       # privileged port
    (b"PORT 10,0,0,1,200,1", 500),       # another host: bounce
    (b"PORT 1,2,3", 501),
    (b"EPRT |1|127.0.0.1|51000|", 200),
    (b"EPRT |1|127.0.0.2|51000|", 500),
    (b"EPRT |3|x|1|", 522),
])
def test_port_checks(line, code):
    assert codes(logged_in().feed(line)) == [code]


def test_port_promiscuous_allows_other_hosts():
    assert codes(logged_in(port_promiscuous=True).feed(b"PORT 10,0,0,1,200,1")) == [200]


def test_permissions_are_checked_once_in_the_gate():
    s = logged_in()
    s.account = FakeAccount(grants=frozenset({Perm.DOWNLOAD, Perm.LIST}))
    for line in (b"STOR x", b"DELE x", b"MKD x", b"RMD x", b"RNFR x", b"SITE CHMOD 644 x", b"APPE x"):
        assert codes(s.feed(line)) == [550], line


def test_cmds_denied_and_allowed():
    s = logged_in(cmds_denied="DELE,MKD")
    assert codes(s.feed(b"MKD x")) == [550]
    s = logged_in(cmds_allowed="USER,PASS,PWD,QUIT")
    assert codes(s.feed(b"PWD")) == [257]
    assert codes(s.feed(b"SYST")) == [550]


def test_deny_file_patterns():
    s = logged_in(deny_file="{*.secret,private}")
    assert codes(s.feed(b"RETR a/b.secret")) == [550]
    assert codes(s.feed(b"CWD private")) == [550]


def test_rename_sequence():
    s = logged_in()
    assert codes(s.feed(b"RNTO b")) == [503]
    (st,) = s.feed(b"RNFR a")
    assert codes(s.complete(st, os.stat("/"))) == [350]
    (ren,) = s.feed(b"RNTO b")
    assert ren == A.FsChange("rename", "/a", target="/b", verb="RNTO")
    assert codes(s.complete(ren, None)) == [250]


def test_mkd_reply_quotes_path():
    s = logged_in()
    (mk,) = s.feed(b'MKD we"ird')
    (r,) = s.complete(mk, None)
    assert r.code == 257 and r.text.startswith('"/we""ird"')


def test_feat_lists_extensions():
    (r,) = new().feed(b"FEAT")
    feats = set(r.lines)
    for f in ("EPSV", "EPRT", "MDTM", "MFMT", "SIZE", "REST STREAM", "TVFS", "UTF8"):
        assert f in feats
    assert any(f.startswith("MLST type*") for f in feats)
    assert any(f.startswith("HASH SHA-256*") for f in feats)
    assert r.encode().startswith(b"211-") and r.encode().endswith(b"211 End\r\n")


def test_opts():
    s = new()
    assert codes(s.feed(b"OPTS UTF8 ON")) == [200]
    assert s.feed(b"OPTS HASH MD5")[0].text == "MD5"
    assert codes(s.feed(b"OPTS HASH ROT13")) == [501]
    assert s.hash_algorithm == "MD5"
    assert s.feed(b"OPTS MLST size;type;bogus;")[0].text == "MLST OPTS type;size;"


def test_hash_reply():
    s = logged_in()
    (h,) = s.feed(b"HASH f")
    assert h == A.ComputeHash("/f", "SHA-256")
    (r,) = s.complete(h, ("ab" * 32, 10))
    assert r.code == 213 and r.text == f"SHA-256 0-9 {'ab' * 32} f"


def test_abor_without_transfer():
    s = logged_in()
    assert 225 in codes(s.feed(b"ABOR"))


def test_abor_during_transfer():
    s = logged_in()
    s.complete(s.feed(b"PASV")[0], ("127.0.0.1", 50000))
    (send,) = s.feed(b"RETR f")
    assert s.runs_during_transfer(b"ABOR") and s.runs_during_transfer(b"STAT")
    assert not s.runs_during_transfer(b"RETR x")
    ev = s.feed(b"ABOR")
    assert isinstance(ev[0], A.AbortTransfer) and codes(ev) == [226]
    assert codes(s.complete(send, A.TransferDone("aborted", 5))) == [426]


def test_site_commands():
    s = logged_in()
    assert "CHMOD" in s.feed(b"SITE HELP")[0].text
    (ch,) = s.feed(b"SITE CHMOD 4755 f")
    assert ch.mode == 0o755  # setuid is never granted from the network
    assert codes(s.feed(b"SITE CHMOD xyz f")) == [501]
    assert s.feed(b"SITE UMASK 027")[0].text == "UMASK set to 0027"
    assert codes(s.feed(b"SITE IDLE 60")) == [200] and s.idle_timeout == 60
    assert codes(s.feed(b"SITE NOPE")) == [500]


# ---------------------------------------------------------------- the table row is the rule

def test_site_subcommands_are_rows_of_the_table():
    assert {"SITE CHMOD", "SITE UMASK", "SITE IDLE", "SITE HELP"} <= set(COMMANDS)
    assert codes(new().feed(b"SITE HELP")) == [530]  # every SITE row needs a login
    s = logged_in()
    s.account = FakeAccount(grants=frozenset({Perm.DOWNLOAD}))
    assert codes(s.feed(b"SITE CHMOD 644 f")) == [550]  # the row's perm (CHMOD)
    assert codes(s.feed(b"SITE CHMOD")) == [501]
    # cmds_allowed is checked for the verb and for the row
    s = logged_in(cmds_allowed="USER,PASS,SITE")
    assert codes(s.feed(b"SITE CHMOD 644 f")) == [550]
    assert codes(s.feed(b"SITE UMASK")) == [550]
    s = logged_in(cmds_allowed="USER,PASS,SITE,SITE CHMOD")
    assert isinstance(s.feed(b"SITE CHMOD 644 f")[0], A.FsChange)


def test_help_lists_verbs_not_subcommand_rows():
    (r,) = new().feed(b"HELP")
    assert "SITE" in " ".join(r.lines) and "CHMOD" not in " ".join(r.lines)
    assert new().feed(b"HELP SITE")[0].code == 214


def test_stat_with_a_path_is_the_rows_with_arg_spec():
    assert codes(new().feed(b"STAT")) == [211]
    assert codes(new().feed(b"STAT /")) == [530]  # a path needs a login and the LIST grant
    s = logged_in()
    s.account = FakeAccount(grants=frozenset({Perm.DOWNLOAD}))
    assert codes(s.feed(b"STAT /")) == [550]
    (ls,) = logged_in().feed(b"STAT -la sub")
    assert ls == A.ControlListing("STAT", "/sub")


def test_mdtm_with_a_time_is_the_mfmt_row():
    s = logged_in()
    (u,) = s.feed(b"MDTM 20200102030405 f")
    assert u.op == "utime" and u.verb == "MFMT"
    s.account = FakeAccount(grants=frozenset({Perm.DOWNLOAD}))
    assert codes(s.feed(b"MDTM 20200102030405 f")) == [550]  # MFMT's perm (SET_MTIME)
    s = logged_in(cmds_allowed="USER,PASS,MDTM")
    assert codes(s.feed(b"MDTM 20200102030405 f")) == [550]  # and MFMT's cmds_allowed entry
    (st,) = logged_in(mdtm_write=False).feed(b"MDTM 20200102030405 f")
    assert st == A.StatPath("MDTM", "/20200102030405 f")


def test_stou_without_a_name_makes_one_from_stou():
    (stou,) = with_pasv(logged_in()).feed(b"STOU")
    assert stou.unique and stou.path == "/STOU"
    s = with_pasv(logged_in(deny_file="{STOU}"))
    assert codes(s.feed(b"STOU")) == [550]  # the default name passes the gate's path step


def test_sequencing_rules_are_the_declared_ones():
    from ftpwarden.proto.sequence import RULES
    texts = {r.refusal for r in RULES}
    cases = [
        (new(), [b"PASS x"]),
        (logged_in(), [b"RNTO x"]),
        (new(ssl_enable=True), [b"PBSZ 0"]),
        (new(ssl_enable=True), [b"PROT P"]),
        (logged_in(), [b"EPSV ALL", b"PASV"]),
        (logged_in(), [b"EPSV ALL", b"PORT 127,0,0,1,4,1"]),
    ]
    for s, lines in cases:
        *_, last = [s.feed(line) for line in lines]
        (r,) = last
        assert r.code == 503 and r.text in texts, (lines, r)
    s = new(ssl_enable=True, force_local_logins_ssl=False)
    s.feed(b"USER alice")
    assert s.feed(b"AUTH TLS")[0].text == "AUTH must come before USER."


def test_too_many_errors_close():
    s = new()
    for _ in range(19):
        assert not s.feed(b"BOGUS")[0].close
    assert s.feed(b"BOGUS")[0].close


def test_stat_without_argument():
    (r,) = logged_in().feed(b"STAT")
    assert r.code == 211 and any("alice" in line for line in r.lines)


def test_mfmt():
    s = logged_in()
    (u,) = s.feed(b"MFMT 20200102030405 f")
    assert u.op == "utime" and u.path == "/f"
    (r,) = s.complete(u, None)
    assert r.text == "Modify=20200102030405; /f"
    assert codes(s.feed(b"MFMT 2020 f")) == [501]


def test_ftps_command_sequence():
    s = new(ssl_enable=True, force_local_logins_ssl=True)
    assert codes(s.feed(b"PBSZ 0")) == [503]
    assert codes(s.feed(b"USER alice")) == [530]  # plaintext login refused when forced
    ev = s.feed(b"AUTH TLS")
    assert codes(ev) == [234] and isinstance(ev[1], A.StartTls)
    s.tls_started()
    assert codes(s.feed(b"AUTH TLS")) == [503]
    assert codes(s.feed(b"PROT P")) == [503]  # PBSZ first
    assert codes(s.feed(b"PBSZ 0")) == [200]
    assert codes(s.feed(b"PROT S")) == [536]
    assert codes(s.feed(b"PROT P")) == [200] and s.prot_private
    assert codes(s.feed(b"CCC")) == [534]
    assert codes(s.feed(b"USER alice")) == [331]


def test_auth_without_tls_configured():
    assert codes(new().feed(b"AUTH TLS")) == [502]


def test_mlsd_of_a_file_is_501():
    s = logged_in()
    s.complete(s.feed(b"PASV")[0], ("127.0.0.1", 50000))
    (ls,) = s.feed(b"MLSD f")
    assert codes(s.complete(ls, A.TransferDone("local_error", error=NotADirectoryError(20, "x")))) == [501]


# ---------------------------------------------------------------- trailing slash

@pytest.mark.parametrize("line", [
    b"DELE keep.txt/", b"RETR keep.txt/", b"STOR keep.txt/", b"APPE keep.txt/", b"SIZE keep.txt/",
    b"MDTM keep.txt/", b"HASH keep.txt/", b"STOU keep.txt/", b"DELE sub/keep.txt/.",
])
def test_a_file_verb_refuses_a_name_ending_in_slash(line):
    s = with_pasv(logged_in())
    events = s.feed(line)
    assert codes(events) == [550] and not any(isinstance(e, A.Action) for e in events)


@pytest.mark.parametrize("line,action", [
    (b"MKD new/", A.FsChange("mkdir", "/new", mode=0o755, verb="MKD")),
    (b"RMD old/", A.FsChange("rmdir", "/old", verb="RMD")),
    (b"CWD sub/", A.ChangeDir("/sub", None)),
    (b"DELE keep.txt", A.FsChange("unlink", "/keep.txt", verb="DELE")),
])
def test_directory_verbs_take_the_slash(line, action):
    (ev,) = logged_in().feed(line)
    assert ev == action


@pytest.mark.parametrize("line,op", [
    (b"MFMT 20200102030405 keep.txt/", "utime"), (b"SITE CHMOD 644 keep.txt/", "chmod"),
    (b"MDTM 20200102030405 keep.txt", "utime"),
])
def test_chmod_and_mtime_carry_the_slash(line, op):
    (ev,) = logged_in().feed(line)
    assert (ev.op, ev.path, ev.dir_only) == (op, "/keep.txt", line.endswith(b"/"))


def test_rnfr_with_slash_needs_a_directory():
    s = logged_in()
    (st,) = s.feed(b"RNFR keep.txt/")
    assert st == A.StatPath("RNFR", "/keep.txt", dir_only=True)
    regular = os.stat(__file__)
    (r,) = s.complete(st, regular)
    assert r.code == 550 and s.rename_from is None
    (st,) = s.feed(b"RNFR sub/")
    assert codes(s.complete(st, os.stat("/"))) == [350]


def test_rnto_with_slash_renames_only_a_directory():
    s = logged_in()
    s.complete(s.feed(b"RNFR a")[0], os.stat("/"))
    (ren,) = s.feed(b"RNTO x/")
    assert ren == A.FsChange("rename", "/a", target="/x", verb="RNTO", dir_only=True)
    (r,) = s.complete(ren, NotADirectoryError(20, "Not a directory"))
    assert r.code == 550


# ---------------------------------------------------------------- NLST / LIST names and globs

@pytest.mark.parametrize("line,path,given,pattern", [
    (b"NLST", "/sub", "", ""),
    (b"NLST inner.txt", "/sub/inner.txt", "inner.txt", ""),
    (b"NLST sub2/inner.txt", "/sub/sub2/inner.txt", "sub2/inner.txt", ""),
    (b"NLST *.txt", "/sub", "*.txt", "*.txt"),
    (b"NLST /sub/*.txt", "/sub", "/sub/*.txt", "*.txt"),
    (b"NLST ../[ab]?.txt", "/", "../[ab]?.txt", "[ab]?.txt"),
    (b"NLST -a *.txt", "/sub", "*.txt", "*.txt"),
    (b"LIST *.txt", "/sub", "*.txt", "*.txt"),
    (b"LIST -la", "/sub", "", ""),
])
def test_listing_keeps_the_spelling_and_splits_globs(line, path, given, pattern):
    s = with_pasv(logged_in())
    s.cwd = "/sub"
    (ev,) = s.feed(line)
    assert isinstance(ev, A.SendListing)
    assert (ev.path, ev.given, ev.pattern) == (path, given, pattern)


def _entries(*names):
    from ftpwarden.proto.listing import Entry
    st = os.stat(__file__)
    return [Entry.from_stat(n, st) for n in names]


@pytest.mark.parametrize("pattern,prefix,expected", [
    ("*.txt", "", ["a.txt", "b.txt"]),
    ("*.txt", "/sub/", ["/sub/a.txt", "/sub/b.txt"]),
    ("?.bin", "sub/", ["sub/c.bin"]),
    ("[ab].txt", "", ["a.txt", "b.txt"]),
    (".*", "", [".hidden"]),  # a pattern starting with "." shows dot files (vsftpd)
    ("nomatch*", "", []),
    ("", "sub/", ["sub/a.txt", "sub/b.txt", "sub/c.bin"]),
])
def test_nlst_render_filters_and_prefixes(pattern, prefix, expected):
    s = logged_in()
    got = s.render_lines("NLST", _entries("a.txt", "b.txt", "c.bin", ".hidden"), 0.0,
                         pattern=pattern, prefix=prefix)
    assert got == expected


def test_glob_matches_are_bounded():
    from ftpwarden.proto import paths
    s = logged_in()
    many = _entries(*(f"f{i}" for i in range(paths.GLOB_MAX + 1)))
    with pytest.raises(OSError) as e:
        s.render_lines("NLST", many, 0.0, pattern="f*")
    assert e.value.errno == __import__("errno").E2BIG
    assert len(s.render_lines("NLST", many[:paths.GLOB_MAX], 0.0, pattern="f*")) == paths.GLOB_MAX


# ---------------------------------------------------------------- banner

def test_banner_file_replaces_ftpd_banner():
    s = Session(session_options(default_config(ftpd_banner="from ftpd_banner")),
                local_ip="127.0.0.1", remote_ip="127.0.0.1", banner="Line one\nLine two\n")
    (r,) = s.greeting()
    text = r.encode().decode()
    assert "Line one" in text and "Line two" in text and "from ftpd_banner" not in text
    (r,) = new(ftpd_banner="only this").greeting()
    assert r.encode() == b"220 only this\r\n"
