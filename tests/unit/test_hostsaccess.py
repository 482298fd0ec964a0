"""hosts.allow / hosts.deny (policy/hostsaccess.py): hosts_access(5)'s rules, no I/O but the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpwarden.policy.hostsaccess import NEED_NAME, Decision, Peer, Rules, Verdict, check, decide, load, parse

SERVER = Peer("127.0.0.1")
ALLOW, DENY = Verdict.ALLOW, Verdict.DENY


def rules(allow: str = "", deny: str = "") -> Rules:
    r = Rules()
    parse(allow, "hosts.allow", r, True)
    parse(deny, "hosts.deny", r, False)
    return r


def verdict(r: Rules, addr: str, name: str | None = None, paranoid: bool = False) -> Verdict | object:
    d = decide(r, Peer(addr, name, paranoid), SERVER)
    return d if d is NEED_NAME else d.verdict  # type: ignore[union-attr]


@pytest.mark.parametrize("allow, deny, addr, name, expected", [
    ("", "", "10.0.0.1", None, ALLOW),                              # no line matches: granted
    ("", "ALL: ALL", "10.0.0.1", None, DENY),
    ("vsftpd: 10.0.0.1", "ALL: ALL", "10.0.0.1", None, ALLOW),       # the migrated daemon name
    ("ftpwarden: 10.0.0.", "ALL: ALL", "10.0.0.9", None, ALLOW),     # n.n.n. prefix
    ("ftpwarden: 10.0.0.", "ALL: ALL", "10.0.1.9", None, DENY),
    ("sshd: ALL", "ALL: ALL", "10.0.0.1", None, DENY),               # another daemon's line
    ("ALL: 10.0.0.0/255.255.255.0", "ALL: ALL", "10.0.0.7", None, ALLOW),
    ("ALL: 10.0.0.0/255.255.255.0", "ALL: ALL", "10.0.1.7", None, DENY),
    ("ALL: 10.0.0.0/24", "ALL: ALL", "10.0.0.7", None, ALLOW),
    ("ALL: [2001:db8::]/32", "ALL: ALL", "2001:db8::5", None, ALLOW),
    ("ALL: [2001:db8::]/32", "ALL: ALL", "2001:db9::5", None, DENY),
    ("ALL: [::1]", "ALL: ALL", "::1", None, ALLOW),
    ("ALL: 10.0.0.1", "ALL: ALL", "::ffff:10.0.0.1", None, ALLOW),   # a v4-mapped client is its v4 address
    ("ALL: 10.0.0.* EXCEPT 10.0.0.5", "ALL: ALL", "10.0.0.4", None, ALLOW),
    ("ALL: 10.0.0.* EXCEPT 10.0.0.5", "ALL: ALL", "10.0.0.5", None, DENY),
    ("ALL EXCEPT ftpwarden vsftpd: ALL", "ALL: ALL", "10.0.0.5", None, DENY),
    ("ALL: 10.0.0.1: deny", "", "10.0.0.1", None, DENY),             # allow file, deny option
    ("", "ALL: 10.0.0.1: allow", "10.0.0.1", None, ALLOW),           # deny file, allow option
    ("", "ALL: 10.0.0.1: twist /bin/echo no", "10.0.0.1", None, DENY),
    # names: needed only when an address pattern does not decide
    ("ALL: .example.com", "ALL: ALL", "10.0.0.1", None, NEED_NAME),
    ("ALL: .example.com", "ALL: ALL", "10.0.0.1", "ftp.example.com", ALLOW),
    ("ALL: .example.com", "ALL: ALL", "10.0.0.1", "ftp.example.org", DENY),
    ("ALL: 10.0.0.1 .example.com", "ALL: ALL", "10.0.0.1", None, ALLOW),  # the address decides first
    ("ALL: LOCAL", "ALL: ALL", "127.0.0.1", "localhost", ALLOW),
    ("ALL: LOCAL", "ALL: ALL", "10.0.0.1", "a.example.com", DENY),
    ("ALL: KNOWN", "ALL: ALL", "10.0.0.1", "", DENY),
    ("ALL: UNKNOWN", "ALL: ALL", "10.0.0.1", "", ALLOW),
    ("", "ALL: PARANOID", "10.0.0.1", "", ALLOW),                     # no name is not a forged one
    ("ALL: .example.com", "ALL: PARANOID", "10.0.0.1", None, NEED_NAME),
    ("ALL: ftp*.example.com", "ALL: ALL", "10.0.0.1", "ftp1.example.com", ALLOW),
    ("ALL: ALL@10.0.0.1", "ALL: ALL", "10.0.0.1", None, ALLOW),        # no ident: the user is unknown
    ("ALL: alice@10.0.0.1", "ALL: ALL", "10.0.0.1", None, DENY),
    ("ALL: @netgroup", "ALL: ALL", "10.0.0.1", None, DENY),            # no NIS: never matches
    ("ftpwarden@127.0.0.1: ALL", "ALL: ALL", "10.0.0.1", None, ALLOW),  # daemon@server address
    ("ftpwarden@10.9.9.9: ALL", "ALL: ALL", "10.0.0.1", None, DENY),
])
def test_hosts_access(allow, deny, addr, name, expected):
    assert verdict(rules(allow, deny), addr, name) is expected


def test_paranoid_name_matches_paranoid_only():
    r = rules("ALL: .example.com", "ALL: PARANOID")
    assert verdict(r, "10.0.0.1", "", paranoid=True) is DENY
    assert verdict(rules("ALL: KNOWN", "ALL: ALL"), "10.0.0.1", "", paranoid=True) is DENY


def test_first_matching_line_of_a_file_decides():
    r = rules("ALL: 10.0.0.1: deny\nALL: 10.0.0.1", "")
    d = decide(r, Peer("10.0.0.1"), SERVER)
    assert isinstance(d, Decision) and d.verdict is DENY and d.where == "hosts.allow:1"


def test_continuation_comments_commas_and_case():
    r = rules("# a comment\nFTPWARDEN,sshd : \\\n  10.0.0.1 ,10.0.0.2\n\n", "ALL:ALL")
    assert verdict(r, "10.0.0.2") is ALLOW and verdict(r, "10.0.0.3") is DENY
    assert decide(r, Peer("10.0.0.2"), SERVER).where == "hosts.allow:2"  # type: ignore[union-attr]


def test_setenv_load_conf_is_refused_and_its_clients_denied(tmp_path: Path):
    r = rules("ALL: 10.0.0.1: setenv VSFTPD_LOAD_CONF /etc/vsftpd/local.conf")
    d = decide(r, Peer("10.0.0.1"), SERVER)
    assert isinstance(d, Decision) and d.verdict is ALLOW and d.load_conf == "/etc/vsftpd/local.conf"
    assert not r.errors and "VSFTPD_LOAD_CONF is refused" in r.warnings[0]
    (tmp_path / "hosts.allow").write_text("ALL: 10.0.0.1: setenv VSFTPD_LOAD_CONF /etc/vsftpd/local.conf\n")
    denied = check(str(tmp_path), "10.0.0.1", "127.0.0.1", lambda addr: ("", False))
    assert denied.verdict is DENY and "refused" in denied.where
    assert check(str(tmp_path), "10.0.0.2", "127.0.0.1", lambda addr: ("", False)).verdict is ALLOW


def test_check_looks_the_name_up_only_when_needed(tmp_path: Path):
    (tmp_path / "hosts.allow").write_text("ftpwarden: 10.0.0.1 .example.com\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    asked: list[str] = []

    def lookup(addr: str) -> tuple[str, bool]:
        asked.append(addr)
        return "ftp.example.com", False
    assert check(str(tmp_path), "10.0.0.1", "127.0.0.1", lookup).verdict is ALLOW and asked == []
    assert check(str(tmp_path), "::ffff:10.0.0.2", "127.0.0.1", lookup).verdict is ALLOW and asked == ["10.0.0.2"]


def test_colon_escaped_in_an_option_and_ignored_options_warn():
    r = rules("ALL: 10.0.0.1: spawn /bin/echo a\\:b : allow")
    assert verdict(r, "10.0.0.1") is ALLOW and r.warnings and not r.errors


@pytest.mark.parametrize("bad", ["ALL", "ALL: 10.0.0.1: frobnicate", "ALL: 10.0.0.1: deny: allow",
                                 ": 10.0.0.1", "ALL: EXCEPT 10.0.0.1"])
def test_a_bad_line_denies_everyone(bad):
    r = rules(bad, "")
    assert r.errors
    assert verdict(r, "10.0.0.9") is DENY  # fail closed, whatever the line meant


def test_load_reads_both_files_and_pattern_files(tmp_path: Path):
    assert decide(load(str(tmp_path)), Peer("10.0.0.1"), SERVER) == Decision(ALLOW)  # no files: granted
    (tmp_path / "trusted").write_text("# ours\n10.0.0.1, 10.0.0.2\n")
    (tmp_path / "hosts.allow").write_text(f"ftpwarden: {tmp_path / 'trusted'}\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    r = load(str(tmp_path))
    assert not r.errors
    assert verdict(r, "10.0.0.2") is ALLOW and verdict(r, "10.0.0.3") is DENY


def test_an_unreadable_file_denies_everyone(tmp_path: Path):
    (tmp_path / "hosts.allow").mkdir()  # EISDIR
    r = load(str(tmp_path))
    assert r.errors and verdict(r, "10.0.0.1") is DENY


def test_problems_for_check_config(tmp_path: Path):
    from types import SimpleNamespace

    from ftpwarden.policy.hostsaccess import problems
    (tmp_path / "hosts.allow").write_text("ALL: 10.0.0.1: spawn /bin/true\nALL\n")
    cfg = SimpleNamespace(tcp_wrappers=True, tcp_wrappers_dir=str(tmp_path))
    notes = problems(cfg)
    assert any("hosts.allow:2" in n and "every client is denied" in n for n in notes)
    assert any("spawn: no effect" in n for n in notes)
    assert problems(SimpleNamespace(tcp_wrappers=False, tcp_wrappers_dir=str(tmp_path))) == []
