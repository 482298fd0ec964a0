"""The suite every Authenticator must pass: anonymous, user file, memory, chain."""

import os
from dataclasses import dataclass
from types import SimpleNamespace

import bcrypt
import pytest

from ftpwarden.policy.auth.anonymous import AnonymousAuthenticator
from ftpwarden.policy.auth.base import Authenticator, LoginRefused, LoginRequest, chain
from ftpwarden.policy.auth.userfile import MemoryUserAuthenticator, UserFileAuthenticator, UserRecord, format_record
from ftpwarden.policy.passwords import hash_password
from ftpwarden.policy.users import Account, UserClass
from ftpwarden.proto.commands import Perm

PASSWORD = "Corr3ct-horse"
WRONG = "wrong-Pa55word"

READ = frozenset({Perm.DOWNLOAD, Perm.LIST})
LOCAL_WRITE = READ | {Perm.UPLOAD, Perm.OVERWRITE, Perm.MKDIR, Perm.DELETE, Perm.RENAME, Perm.CHMOD}


def make_cfg(**over):
    base = dict(anonymous_enable=True, anon_root="/srv/ftp", anon_umask=0o077, no_anon_password=False,
                local_umask=0o022, download_enable=True, dirlist_enable=True, write_enable=False,
                anon_upload_enable=True, anon_mkdir_write_enable=False, anon_other_write_enable=False,
                chmod_enable=True, mdtm_write=False, anon_world_readable_only=True,
                deny_email_enable=False, secure_email_list_enable=False)
    return SimpleNamespace(**{**base, **over})


@dataclass
class Case:
    auth: object
    good: LoginRequest
    user_class: UserClass
    root: str
    grants: frozenset
    umask: int
    bad: LoginRequest | None  # a known user with a wrong password (None: anonymous takes any)


def _records():
    return {
        "alice": UserRecord("alice", hash_password(PASSWORD), "/srv/alice", True, None),
        "bob": UserRecord("bob", "$2y$" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()[4:],
                          None, None, 0o027),
    }


def _userfile(tmp_path, cfg):
    db = tmp_path / "users.db"
    db.write_text("# test users\n" + "".join(format_record(r) + "\n" for r in _records().values()))
    return UserFileAuthenticator(cfg, str(db), "/srv/default")


def build(kind, tmp_path):
    cfg = make_cfg()
    alice = dict(user_class=UserClass.GUEST, root="/srv/alice", grants=LOCAL_WRITE, umask=0o022,
                 good=LoginRequest("alice", PASSWORD, "192.0.2.1"), bad=LoginRequest("alice", WRONG, "192.0.2.1"))
    bob = dict(user_class=UserClass.GUEST, root="/srv/default", grants=READ, umask=0o027,
               good=LoginRequest("bob", PASSWORD, "192.0.2.1"), bad=LoginRequest("bob", WRONG, "192.0.2.1"))
    anon = dict(user_class=UserClass.ANONYMOUS, root="/srv/ftp", grants=READ, umask=0o077,
                good=LoginRequest("Anonymous", "me@example.org", "192.0.2.1"), bad=None)
    if kind == "anonymous":
        return Case(AnonymousAuthenticator(cfg), **anon)
    if kind == "userfile-alice":
        return Case(_userfile(tmp_path, cfg), **alice)
    if kind == "userfile-bob-htpasswd":
        return Case(_userfile(tmp_path, cfg), **bob)
    if kind == "memory":
        return Case(MemoryUserAuthenticator(cfg, _records(), "/srv/default"), **alice)
    both = chain(AnonymousAuthenticator(cfg), _userfile(tmp_path, cfg))
    if kind == "chain-anonymous":
        return Case(both, **anon)
    if kind == "chain-guest":
        return Case(both, **bob)
    raise AssertionError(kind)


KINDS = ["anonymous", "userfile-alice", "userfile-bob-htpasswd", "memory", "chain-anonymous", "chain-guest"]


@pytest.fixture(params=KINDS)
def case(request, tmp_path):
    return build(request.param, tmp_path)


def _assert_secret_kept(exc: LoginRefused, secret: str):
    for text in (str(exc), exc.reason, repr(exc), repr(exc.args)):
        assert secret not in text


def test_is_an_authenticator(case):
    assert isinstance(case.auth, Authenticator)


def test_good_login(case):
    assert case.auth.wants(case.good.user)
    account = case.auth.authenticate(case.good)
    assert isinstance(account, Account)
    assert account.name == case.good.user
    assert account.user_class is case.user_class
    assert account.root == case.root
    assert account.grants == case.grants
    assert account.umask == case.umask
    if case.user_class is UserClass.GUEST:
        assert PASSWORD not in repr(account)


def test_bad_password_is_refused(case):
    if case.bad is None:
        # anonymous: the "password" is an e-mail address, so any one is accepted
        odd = LoginRequest(case.good.user, "not-an-email !", case.good.remote_ip)
        assert case.auth.authenticate(odd).user_class is UserClass.ANONYMOUS
        return
    with pytest.raises(LoginRefused) as e:
        case.auth.authenticate(case.bad)
    _assert_secret_kept(e.value, WRONG)
    _assert_secret_kept(e.value, PASSWORD)


@pytest.mark.parametrize("user", ["mallory", "ALICE", "root", "ftp2"])
def test_unknown_user_is_refused_after_a_hash(case, scrypt_calls, user):
    req = LoginRequest(user, PASSWORD, "192.0.2.9")
    with pytest.raises(LoginRefused) as e:
        case.auth.authenticate(req)
    _assert_secret_kept(e.value, PASSWORD)
    assert len(scrypt_calls) == 1 and scrypt_calls[0]["n"] == 2**14  # no timing oracle


def test_request_repr_hides_password(case):
    assert PASSWORD not in repr(case.bad or case.good)
    assert WRONG not in repr(LoginRequest("alice", WRONG, "192.0.2.1"))


def test_needs_password(case):
    assert case.auth.needs_password(case.good.user)
    assert case.auth.needs_password("mallory") in (True, False)  # answers without raising


# ------------------------------------------------------------------ per-kind details

def test_anonymous_names_and_switch():
    auth = AnonymousAuthenticator(make_cfg())
    for name in ("ftp", "FTP", "anonymous", "AnonYmous"):
        assert auth.wants(name)
    for name in ("ftpuser", "anon", "", "ſtp"):  # noqa: RUF001 - a long s: looks like "ftp", is not
        assert not auth.wants(name)
    off = AnonymousAuthenticator(make_cfg(anonymous_enable=False, anon_root=""))
    assert not off.wants("ftp")
    with pytest.raises(LoginRefused):
        off.authenticate(LoginRequest("ftp", "me@x", ""))


def test_anonymous_root_email_and_no_password():
    cfg = make_cfg(anon_root="", no_anon_password=True)
    auth = AnonymousAuthenticator(cfg, "/tmp/pool-root")
    assert not auth.needs_password("ftp")
    acct = auth.authenticate(LoginRequest("ftp", "", "198.51.100.1"))
    assert (acct.root, acct.anon_password) == ("/tmp/pool-root", "")
    acct = AnonymousAuthenticator(make_cfg()).authenticate(LoginRequest("ftp", "me@example.org", ""))
    assert acct.anon_password == "me@example.org"
    with pytest.raises(ValueError):
        AnonymousAuthenticator(make_cfg(anon_root=""))  # enabled with no root at all


def test_anonymous_grants_follow_config():
    cfg = make_cfg(write_enable=True, anon_upload_enable=True, anon_mkdir_write_enable=True)
    acct = AnonymousAuthenticator(cfg).authenticate(LoginRequest("ftp", "x@y", ""))
    assert acct.grants == READ | {Perm.UPLOAD, Perm.MKDIR}


def test_guest_write_flag_and_write_enable(tmp_path):
    recs = {"w": UserRecord("w", hash_password("p"), None, None, None),
            "rw": UserRecord("rw", hash_password("p"), None, True, None),
            "ro": UserRecord("ro", hash_password("p"), None, False, None)}
    # vsftpd: without virtual_use_local_privs a guest has anonymous-like rights
    auth = MemoryUserAuthenticator(make_cfg(write_enable=True, anon_upload_enable=False), recs, "/srv/d")
    assert auth.authenticate(LoginRequest("w", "p", "")).grants == READ
    assert auth.authenticate(LoginRequest("rw", "p", "")).grants == LOCAL_WRITE
    assert auth.authenticate(LoginRequest("ro", "p", "")).grants == READ
    auth = MemoryUserAuthenticator(make_cfg(write_enable=True, virtual_use_local_privs=True), recs, "/srv/d")
    assert auth.authenticate(LoginRequest("w", "p", "")).grants == LOCAL_WRITE


def test_guest_umask_zero_is_kept():
    """umask=0 in the DB is a choice, not "unset": it must not fall back to local_umask."""
    recs = {"z": UserRecord("z", hash_password("p"), None, None, 0)}
    auth = MemoryUserAuthenticator(make_cfg(local_umask=0o077), recs, "/srv/d")
    assert auth.authenticate(LoginRequest("z", "p", "")).umask == 0


def test_guest_without_any_root_is_refused():
    auth = MemoryUserAuthenticator(make_cfg(), {"a": UserRecord("a", hash_password("p"))}, "")
    with pytest.raises(LoginRefused):
        auth.authenticate(LoginRequest("a", "p", ""))


def test_userfile_follows_changes_to_the_file(tmp_path):
    db = tmp_path / "users.db"
    db.write_text(format_record(UserRecord("alice", hash_password("one"))) + "\n")
    auth = UserFileAuthenticator(make_cfg(), str(db), "/srv/d")
    assert auth.authenticate(LoginRequest("alice", "one", "")).name == "alice"
    assert not auth.wants("bob")

    # Atomic replace, as `ftpwarden user` does: new user, alice's password changed.
    tmp = tmp_path / "new"
    tmp.write_text(format_record(UserRecord("alice", hash_password("two"))) + "\n"
                   + format_record(UserRecord("bob", hash_password("b"), "/srv/bob")) + "\n")
    os.replace(tmp, db)
    assert auth.authenticate(LoginRequest("bob", "b", "")).root == "/srv/bob"
    with pytest.raises(LoginRefused):
        auth.authenticate(LoginRequest("alice", "one", ""))
    assert auth.authenticate(LoginRequest("alice", "two", ""))

    # In-place edit deleting bob: refused at once.
    db.write_text(format_record(UserRecord("alice", hash_password("two"))) + "\n")
    with pytest.raises(LoginRefused) as e:
        auth.authenticate(LoginRequest("bob", "b", ""))
    assert e.value.reason == "unknown user"


def test_userfile_broken_or_missing_fails_closed(tmp_path, scrypt_calls):
    db = tmp_path / "users.db"
    db.write_text(format_record(UserRecord("alice", hash_password("pw"))) + "\n")
    auth = UserFileAuthenticator(make_cfg(), str(db), "/srv/d")
    db.write_text(format_record(UserRecord("alice", hash_password("pw"))) + "\nbroken line\n")
    scrypt_calls.clear()
    assert auth.wants("alice")  # decides (and refuses) rather than let another authenticator try
    with pytest.raises(LoginRefused) as e:
        auth.authenticate(LoginRequest("alice", "pw", ""))
    assert f"{db}:2" in e.value.reason and "pw" not in e.value.reason.replace(str(db), "")
    assert len(scrypt_calls) == 1
    db.unlink()
    with pytest.raises(LoginRefused) as e:
        auth.authenticate(LoginRequest("alice", "pw", ""))
    assert "unusable" in e.value.reason
    db.write_text(format_record(UserRecord("alice", hash_password("pw"))) + "\n")
    assert auth.authenticate(LoginRequest("alice", "pw", "")).name == "alice"


def test_userfile_refuses_to_start_on_a_bad_file(tmp_path):
    db = tmp_path / "users.db"
    db.write_text("alice:nothash\n")
    with pytest.raises(ValueError, match=r"users\.db:1: "):
        UserFileAuthenticator(make_cfg(), str(db), "/srv/d")
    with pytest.raises(OSError):
        UserFileAuthenticator(make_cfg(), str(tmp_path / "missing"), "/srv/d")


def test_chain_order_and_unknown():
    cfg = make_cfg()
    mem = MemoryUserAuthenticator(cfg, {"ftp": UserRecord("ftp", hash_password("p"), "/srv/x")}, "/srv/d")
    anon_first = chain(AnonymousAuthenticator(cfg), mem)
    assert anon_first.authenticate(LoginRequest("ftp", "e@x", "")).user_class is UserClass.ANONYMOUS
    mem_first = chain(mem, AnonymousAuthenticator(cfg))
    assert mem_first.authenticate(LoginRequest("ftp", "p", "")).user_class is UserClass.GUEST
    assert chain().needs_password("anyone") is True
    with pytest.raises(LoginRefused):
        chain().authenticate(LoginRequest("anyone", "p", ""))
