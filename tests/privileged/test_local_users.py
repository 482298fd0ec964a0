"""Real system users (policy/auth/local.py) and isolated identities (policy/identity.py).

Logins go through real PAM (/etc/pam.d/ftpwarden) with the accounts of
scripts/test-accounts, so they need root.  `chroot_plan` is pure and tested
as a table without root.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from ftpwarden.policy import passwords
from ftpwarden.policy.auth.base import LoginRefused, LoginRequest, chain
from ftpwarden.policy.auth.local import LocalAuthenticator, chroot_plan, refused_at_user
from ftpwarden.policy.config import ConfigError, default_config
from ftpwarden.policy.identity import isolated_identity
from ftpwarden.policy.users import Account, UserClass, grants_for
from ftpwarden.proto.commands import Perm

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="real PAM logins and test accounts need root; CI runs as root")
IP = "192.0.2.10"
ALICE = LoginRequest("ftpw_alice", "alice-pw-1", IP)
BOB = LoginRequest("ftpw_bob", "bob-pw-2", IP)
READ = frozenset({Perm.DOWNLOAD, Perm.LIST})


@pytest.fixture(scope="session")
def accounts():
    r = subprocess.run([str(REPO / "scripts" / "test-accounts")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return {n: pwd.getpwnam(n) for n in ("ftpw_alice", "ftpw_bob", "ftpw_noshell", "ftp")}


def cfg(**over):
    return default_config(**{"local_enable": True, "pam_service_name": "ftpwarden", **over})


def auth(tmp_path, pam=None, **over):
    """A LocalAuthenticator with an empty ftpusers file (the host's may list anyone)."""
    ftpusers = tmp_path / "ftpusers"
    ftpusers.touch()
    extra = {} if pam is None else {"pam": pam}
    return LocalAuthenticator(cfg(**over), ftpusers_file=str(ftpusers), **extra)


def refused(a, req) -> str:
    with pytest.raises(LoginRefused) as e:
        a.authenticate(req)
    assert req.password not in e.value.reason
    return e.value.reason


class FakePam:
    """Says yes to everything, and remembers that it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, service, user, password, ip):
        self.calls.append((service, user, ip))
        return True, ""


# ---------------------------------------------------------------- logins through PAM

@needs_root
def test_good_login_not_chrooted(accounts, tmp_path):
    a = auth(tmp_path)
    assert a.wants("ftpw_alice")
    acct = a.authenticate(ALICE)
    alice = accounts["ftpw_alice"]
    assert acct == Account(name="ftpw_alice", user_class=UserClass.REAL, root="/",
                           grants=grants_for(cfg(), UserClass.REAL), umask=0o077,
                           uid=alice.pw_uid, gid=alice.pw_gid, chroot=False, start_dir="/home/ftpw_alice")
    assert acct.grants == READ  # write_enable=NO by default


@needs_root
def test_good_login_chrooted_with_writes(accounts, tmp_path):
    acct = auth(tmp_path, chroot_local_user=True, write_enable=True, local_umask=0o022).authenticate(BOB)
    assert (acct.root, acct.chroot, acct.start_dir) == ("/home/ftpw_bob", True, "/")
    assert (acct.uid, acct.umask) == (accounts["ftpw_bob"].pw_uid, 0o022)
    assert Perm.UPLOAD in acct.grants and Perm.CHMOD in acct.grants


@needs_root
def test_bad_password_and_unknown_user_are_both_plain_refusals(accounts, tmp_path, monkeypatch):
    """The client sees one 530 for both; an unknown name still costs a password hash."""
    scrypt = []
    real = hashlib.scrypt
    monkeypatch.setattr(passwords.hashlib, "scrypt", lambda *a, **k: scrypt.append(k) or real(*a, **k))
    a = chain(auth(tmp_path))
    assert "PAM" in refused(a, LoginRequest("ftpw_alice", "bob-pw-2", IP))
    assert not scrypt
    assert refused(a, LoginRequest("ftpw_nosuchuser", "bob-pw-2", IP)) == "unknown user"
    assert len(scrypt) == 1 and scrypt[0]["n"] == 2**14
    assert not auth(tmp_path).wants("ftpw_nosuchuser")
    scrypt.clear()
    assert refused(auth(tmp_path), LoginRequest("ftpw_nosuchuser", "pw", IP)) == "unknown user"  # called directly
    assert len(scrypt) == 1


@needs_root
def test_local_enable_off_wants_nobody(accounts, tmp_path):
    a = auth(tmp_path, local_enable=False)
    assert not a.wants("ftpw_alice")
    assert refused(a, ALICE) == "unknown user"


@pytest.mark.parametrize("name", ["../etc", "-rf", ".hidden", "a b", "", "x" * 129, "al\0ce"])
def test_names_unfit_for_paths_are_not_wanted(name):
    assert not LocalAuthenticator(cfg(guest_enable=True)).wants(name)


def test_root_is_refused_even_when_pam_says_yes(tmp_path):
    fake = FakePam()
    reason = refused(auth(tmp_path, pam=fake), LoginRequest("root", "whatever", IP))
    assert reason == "root may not log in"
    assert fake.calls == [("ftpwarden", "root", IP)]  # PAM first: every refusal costs a check


@needs_root
def test_ftpusers_listed_user_is_refused(accounts, tmp_path):
    ftpusers = tmp_path / "ftpusers"
    ftpusers.write_text("# comment\nroot\n  ftpw_alice  \n")
    a = LocalAuthenticator(cfg(), ftpusers_file=str(ftpusers))
    assert "ftpusers" in refused(a, ALICE)
    assert a.authenticate(BOB).name == "ftpw_bob"
    missing = LocalAuthenticator(cfg(), ftpusers_file=str(tmp_path / "none"))
    assert missing.authenticate(ALICE).name == "ftpw_alice"  # no file: no list


USERLIST = [
    # userlist_enable, userlist_deny, listed -> refused
    (False, True, True, False),
    (True, True, True, True),
    (True, True, False, False),
    (True, False, True, False),
    (True, False, False, True),
]


@pytest.mark.parametrize("enable, deny, listed, want", USERLIST)
def test_refused_at_user(tmp_path, enable, deny, listed, want):
    lst = tmp_path / "user_list"
    lst.write_text("someone\n" + ("ftpw_alice\n" if listed else ""))
    c = cfg(userlist_enable=enable, userlist_deny=deny, userlist_file=str(lst))
    assert refused_at_user(c, "ftpw_alice") is want


def test_unreadable_userlist_refuses_everyone(tmp_path):
    c = cfg(userlist_enable=True, userlist_file=str(tmp_path / "missing"))
    assert refused_at_user(c, "anyone") and refused_at_user(c.replace(userlist_deny=False), "anyone")
    assert not refused_at_user(c.replace(userlist_enable=False), "anyone")


@needs_root
@pytest.mark.parametrize("deny", [True, False])
def test_userlist_at_login(accounts, tmp_path, deny):
    lst = tmp_path / "user_list"
    lst.write_text("ftpw_alice\n")
    a = auth(tmp_path, userlist_enable=True, userlist_deny=deny, userlist_file=str(lst))
    allowed, barred = (BOB, ALICE) if deny else (ALICE, BOB)
    assert a.authenticate(allowed).name == allowed.user
    assert refused(a, barred) == "refused by userlist_file"


@needs_root
def test_check_shell(accounts, tmp_path):
    assert "PAM" in refused(auth(tmp_path), LoginRequest("ftpw_noshell", "noshell-pw", IP))  # pam_shells
    shells = tmp_path / "shells"
    shells.write_text("# no bash here\n/bin/sh\n")
    ftpusers = tmp_path / "ftpusers"
    ftpusers.touch()

    def local(**over):
        return LocalAuthenticator(cfg(**over), ftpusers_file=str(ftpusers), shells_file=str(shells))
    assert "not in" in refused(local(), ALICE)
    assert local(check_shell=False).authenticate(ALICE).name == "ftpw_alice"
    shells.write_text("/bin/sh\n/bin/bash\n")
    assert local().authenticate(ALICE).name == "ftpw_alice"


# ---------------------------------------------------------------- where a login lands

CHROOT = [
    # chroot_local_user, chroot_list_enable, in list -> chrooted
    (False, False, False, False),
    (False, False, True, False),   # the list is ignored unless enabled
    (False, True, False, False),
    (False, True, True, True),     # NO + list: the list names who IS jailed
    (True, False, False, True),
    (True, False, True, True),
    (True, True, False, True),
    (True, True, True, False),     # YES + list: the list names who is NOT jailed
]


@pytest.mark.parametrize("local_user, list_enable, in_list, jailed", CHROOT)
def test_chroot_rules(local_user, list_enable, in_list, jailed):
    c = cfg(chroot_local_user=local_user, chroot_list_enable=list_enable)
    want = ("/home/alice", True, "/") if jailed else ("/", False, "/home/alice")
    assert chroot_plan(c, "alice", "/home/alice", in_list) == want


PLANS = [
    # options, home -> (root, chroot, start_dir)
    (dict(passwd_chroot_enable=True, chroot_local_user=True), "/home/./alice", ("/home", True, "/alice")),
    (dict(passwd_chroot_enable=True), "/home/./alice", ("/", False, "/home/alice")),
    (dict(passwd_chroot_enable=True, chroot_local_user=True), "/srv/ftp/./alice/in/", ("/srv/ftp", True, "/alice/in")),
    (dict(passwd_chroot_enable=True, chroot_local_user=True), "/./alice", ("/", True, "/alice")),
    (dict(passwd_chroot_enable=False, chroot_local_user=True), "/home/./alice", ("/home/alice", True, "/")),
    (dict(passwd_chroot_enable=True, chroot_local_user=True, local_root="/srv/x"), "/home/./alice",
     ("/home", True, "/alice")),  # the passwd jail wins over local_root, as in vsftpd
    (dict(local_root="/srv/ftp/$USER", user_sub_token="$USER", chroot_local_user=True), "/home/alice",
     ("/srv/ftp/alice", True, "/")),
    (dict(local_root="/srv/ftp/$USER", user_sub_token="$USER"), "/home/alice", ("/", False, "/srv/ftp/alice")),
    (dict(local_root="/srv/ftp/$USER"), "/home/alice", ("/", False, "/srv/ftp/$USER")),  # no token set
    (dict(user_sub_token="$USER", chroot_local_user=True), "/home/virtual/$USER", ("/home/virtual/alice", True, "/")),
    (dict(guest_enable=True), "/srv/guests", ("/srv/guests", True, "/")),  # guests are always jailed
    (dict(guest_enable=True, virtual_use_local_privs=True), "/srv/guests", ("/", False, "/srv/guests")),
    (dict(chroot_local_user=True), "/home/alice/", ("/home/alice", True, "/")),
]


@pytest.mark.parametrize("options, home, want", PLANS)
def test_chroot_plan(options, home, want):
    assert chroot_plan(cfg(**options), "alice", home, False) == want


@needs_root
def test_local_root_with_user_sub_token(accounts, tmp_path):
    over = dict(local_root="/srv/ftpw/$USER", user_sub_token="$USER")
    acct = auth(tmp_path, **over).authenticate(ALICE)
    assert (acct.root, acct.chroot, acct.start_dir) == ("/", False, "/srv/ftpw/ftpw_alice")
    acct = auth(tmp_path, chroot_local_user=True, **over).authenticate(BOB)
    assert (acct.root, acct.chroot, acct.start_dir) == ("/srv/ftpw/ftpw_bob", True, "/")


@needs_root
def test_chroot_list_file_at_login(accounts, tmp_path):
    lst = tmp_path / "chroot_list"
    lst.write_text("ftpw_alice\n")
    a = auth(tmp_path, chroot_list_enable=True, chroot_list_file=str(lst))
    assert a.authenticate(ALICE).chroot is True
    assert a.authenticate(BOB).chroot is False
    lst.unlink()
    assert "chroot_list_file" in refused(a, BOB)  # fail closed, as vsftpd


@needs_root
def test_relative_local_root_is_refused(accounts, tmp_path):
    assert "absolute" in refused(auth(tmp_path, local_root="srv/x", chroot_local_user=True), ALICE)


@needs_root
def test_guest_enable_maps_to_guest_username(accounts, tmp_path):
    ftp = accounts["ftp"]
    acct = auth(tmp_path, guest_enable=True, write_enable=True, anon_umask=0o027).authenticate(ALICE)
    assert acct.name == "ftpw_alice"
    assert (acct.user_class, acct.uid, acct.gid) == (UserClass.GUEST, ftp.pw_uid, ftp.pw_gid)
    assert (acct.root, acct.chroot, acct.start_dir) == (ftp.pw_dir, True, "/")
    assert acct.grants == grants_for(cfg(write_enable=True), UserClass.GUEST) == READ  # anonymous-like rights
    assert acct.umask == 0o027
    acct = auth(tmp_path, guest_enable=True, local_root="/srv/virtual/$USER", user_sub_token="$USER").authenticate(BOB)
    assert (acct.root, acct.uid) == ("/srv/virtual/ftpw_bob", ftp.pw_uid)


@needs_root
def test_guest_enable_checks_the_password_and_the_guest_account(accounts, tmp_path):
    assert "PAM" in refused(auth(tmp_path, guest_enable=True), LoginRequest("ftpw_alice", "bob-pw-2", IP))
    assert "PAM" in refused(auth(tmp_path, guest_enable=True), LoginRequest("ftpw_virtual_x", "pw", IP))
    assert "no such system user" in refused(auth(tmp_path, guest_enable=True, guest_username="ftpw_none"), ALICE)
    assert "root" in refused(auth(tmp_path, guest_enable=True, guest_username="root"), ALICE)


def _user_conf(directory: Path, user: str, text: str, owner: int = 0) -> Path:
    path = directory / user
    path.write_text(text)
    os.chown(path, owner, owner)
    return path


@needs_root
def test_user_config_dir_overrides_one_user(accounts, tmp_path):
    conf_dir = tmp_path / "users"
    conf_dir.mkdir()
    _user_conf(conf_dir, "ftpw_alice", "write_enable=YES\nlocal_umask=022\nchroot_local_user=YES\n")
    a = auth(tmp_path, user_config_dir=str(conf_dir))
    alice, bob = a.authenticate(ALICE), a.authenticate(BOB)
    assert Perm.UPLOAD in alice.grants and alice.umask == 0o022 and alice.chroot
    assert bob.grants == READ and bob.umask == 0o077 and not bob.chroot
    per_user = LocalAuthenticator.user_config(a._cfg, "ftpw_alice")
    assert per_user.write_enable is True and per_user.local_enable is True
    assert {"write_enable", "local_umask", "chroot_local_user"} <= per_user.explicit
    assert LocalAuthenticator.user_config(a._cfg, "ftpw_bob") == a._cfg


@needs_root
def test_user_config_must_be_ours_and_valid(accounts, tmp_path):
    conf_dir = tmp_path / "users"
    conf_dir.mkdir()
    a = auth(tmp_path, user_config_dir=str(conf_dir))
    path = _user_conf(conf_dir, "ftpw_alice", "write_enable=YES\n", owner=accounts["ftpw_alice"].pw_uid)
    assert "owned" in refused(a, ALICE)  # a file its user could edit: refuse, as vsftpd
    with pytest.raises(ConfigError):
        LocalAuthenticator.user_config(a._cfg, "ftpw_alice")
    _user_conf(conf_dir, "ftpw_alice", "write_enable=MAYBE\n")
    assert f"{path}:1" in refused(a, ALICE)
    path.unlink()
    path.mkdir()
    assert "regular file" in refused(a, ALICE)


# ---------------------------------------------------------------- isolated_identity

def _acct(user_class, **over):
    return Account(**{"name": "someone", "user_class": user_class, "root": "/srv/r", "grants": READ,
                      "umask": 0o077, "chroot": False, **over})


@needs_root
def test_identity_of_anonymous_and_guest(accounts):
    ftp, bob = accounts["ftp"], accounts["ftpw_bob"]
    anon = isolated_identity(cfg(), _acct(UserClass.ANONYMOUS))
    assert (anon.uid, anon.gid, anon.chroot, anon.root) == (ftp.pw_uid, ftp.pw_gid, True, "/srv/r")
    anon = isolated_identity(cfg(ftp_username="ftpw_bob"), _acct(UserClass.ANONYMOUS))
    assert (anon.uid, anon.gid) == (bob.pw_uid, bob.pw_gid)
    guest = isolated_identity(cfg(guest_username="ftpw_bob"), _acct(UserClass.GUEST))
    assert (guest.uid, guest.gid, guest.chroot, guest.root) == (bob.pw_uid, bob.pw_gid, True, "/srv/r")


@needs_root
def test_identity_keeps_what_local_logins_decided(accounts):
    real = _acct(UserClass.REAL, uid=1234, gid=1234, start_dir="/home/x")
    assert isolated_identity(cfg(), real) is real
    mapped = _acct(UserClass.GUEST, uid=4321, gid=4321)  # guest_enable: uid already set
    assert isolated_identity(cfg(guest_username="ftpw_bob"), mapped) is mapped


@pytest.mark.parametrize("account, over", [
    (_acct(UserClass.ANONYMOUS), dict(ftp_username="ftpw_no_such_account")),
    (_acct(UserClass.GUEST), dict(guest_username="ftpw_no_such_account")),
    (_acct(UserClass.ANONYMOUS), dict(ftp_username="root")),
    (_acct(UserClass.REAL), {}),                      # no uid at all
    (_acct(UserClass.REAL, uid=0, gid=0), {}),
])
def test_identity_refusals(account, over):
    with pytest.raises(LoginRefused) as e:
        isolated_identity(cfg(**over), account)
    if "ftpw_no_such_account" in over.values():
        assert e.value.reason == "no such system user ftpw_no_such_account"
