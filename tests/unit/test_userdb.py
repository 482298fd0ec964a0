"""passwords.py (real scrypt and bcrypt) and the user DB file format."""

import base64
import hashlib

import bcrypt
import pytest

from ftpwarden.policy.auth.userfile import UserRecord, format_record, parse_userdb, valid_user_name
from ftpwarden.policy.passwords import MAX_PASSWORD_BYTES, dummy_verify, hash_password, verify_password

# ------------------------------------------------------------------ passwords

def test_scrypt_hash_format_and_verify():
    stored = hash_password("s3cret")
    scheme, params, salt, digest = stored.split("$")[1:]
    assert (scheme, params) == ("scrypt", "ln=14,r=8,p=1")
    assert ":" not in stored and "=" not in salt + digest
    assert len(base64.b64decode(salt + "==")) == 16 and len(base64.b64decode(digest + "=")) == 32
    assert verify_password("s3cret", stored)
    assert not verify_password("s3creT", stored)
    assert not verify_password("", stored)


def test_scrypt_is_salted():
    assert hash_password("same") != hash_password("same")


def test_scrypt_matches_a_hash_computed_independently():
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=2**14, r=8, p=1, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    assert verify_password("pw", f"$scrypt$ln=14,r=8,p=1${b64(salt)}${b64(digest)}")


def test_tampered_hashes_are_refused_without_raising():
    stored = hash_password("pw")
    head, digest = stored.rsplit("$", 1)
    flipped = head + "$" + ("A" if digest[0] != "A" else "B") + digest[1:]
    for bad in [flipped, stored.replace("ln=14", "ln=13"), stored.replace("r=8", "r=9"),
                stored[:-4], stored + "$x", stored.replace("ln=14", "ln=99"), stored.replace("p=1", "p=x"),
                head + "$!!!!", "$scrypt$", "$scrypt$ln=14$a$b", "$md5$abc", "plaintext", "", None, 42,
                "$2b$05$garbage"]:
        assert verify_password("pw", bad) is False, bad


def test_bcrypt_hashes_from_htpasswd_verify():
    made = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=5)).decode()
    assert made.startswith("$2b$")
    for prefix in ("$2y$", "$2a$", "$2b$"):  # htpasswd -B writes $2y$
        stored = prefix + made[4:]
        assert verify_password("secret", stored)
        assert not verify_password("Secret", stored)


def test_bcrypt_long_password_is_compared_on_72_bytes_like_htpasswd():
    pw = "x" * 100
    stored = "$2y$" + bcrypt.hashpw(pw.encode()[:72], bcrypt.gensalt(rounds=4)).decode()[4:]
    assert verify_password(pw, stored)


def test_password_length_limit():
    ok = "a" * MAX_PASSWORD_BYTES
    stored = hash_password(ok)
    assert verify_password(ok, stored)
    assert not verify_password(ok + "a", hash_password("x"))
    with pytest.raises(ValueError) as e:
        hash_password("é" * 65)  # 130 bytes
    assert "é" not in str(e.value)


def test_password_bytes_are_those_sent_on_the_wire():
    raw = b"caf\xe9"  # latin-1 from the client, decoded by the core with surrogateescape
    pw = raw.decode("utf-8", "surrogateescape")
    assert verify_password(pw, hash_password(pw))
    assert not verify_password("café", hash_password(pw))


def test_dummy_verify_spends_a_real_scrypt(scrypt_calls):
    stored = hash_password("pw")
    scrypt_calls.clear()
    verify_password("nope", stored)
    dummy_verify("nope")
    assert [(c["n"], c["r"], c["p"]) for c in scrypt_calls] == [(2**14, 8, 1)] * 2
    assert dummy_verify("x" * 1000) is None  # refused before hashing, like verify_password


# ------------------------------------------------------------------ user DB format

H = "$2y$05$" + "a" * 53  # the parser checks the scheme, not the hash itself


@pytest.mark.parametrize("name, ok", [
    ("alice", True), ("a", True), ("Bob_2", True), ("x.y@example.org", True), ("_svc-1", True),
    ("9lives", True), ("a" * 128, True), ("a" * 129, False), ("", False), (".hidden", False),
    ("..", False), ("-rf", False), ("@host", False), ("al ice", False), ("al:ice", False),
    ("al/ice", False), ("élise", False), ("a\n", False),
])
def test_user_names(name, ok):
    assert valid_user_name(name) is ok


def test_parse_full_file():
    text = (f"# virtual users\n\nalice:{H}:root=/srv/alice,write,umask=022\n"
            f"  bob:{H}\r\ncarol:{H}:write=no, umask=0\ndave:{H}:write=YES,root=/srv/a:b\n")
    db = parse_userdb(text, "users.db")
    assert list(db) == ["alice", "bob", "carol", "dave"]
    assert db["alice"] == UserRecord("alice", H, "/srv/alice", True, 0o022)
    assert db["bob"] == UserRecord("bob", H, None, None, None)
    assert db["carol"] == UserRecord("carol", H, None, False, 0)
    assert db["dave"] == UserRecord("dave", H, "/srv/a:b", True, None)


def test_htpasswd_b_line():
    line = "alice:$2y$05$" + bcrypt.hashpw(b"pw", bcrypt.gensalt(5)).decode()[7:]
    rec = parse_userdb(line + "\n", "f")["alice"]
    assert (rec.root, rec.write, rec.umask) == (None, None, None)
    assert verify_password("pw", rec.hash)


@pytest.mark.parametrize("body, line, words", [
    (f"al ice:{H}", 1, "bad user name"),
    (f"# c\n.x:{H}", 2, "bad user name"),
    ("alice", 1, "missing password hash"),
    ("\n\nalice:", 3, "missing password hash"),
    ("alice:$apr1$xyz$abc", 1, "unsupported password hash"),
    ("alice:plaintextpassword", 1, "unsupported password hash"),
    (f"alice:{H}:quota=5", 1, "unknown option 'quota'"),
    (f"alice:{H}:root=srv/alice", 1, "absolute"),
    (f"alice:{H}:root=", 1, "absolute"),
    (f"alice:{H}:write=maybe", 1, "yes or no"),
    (f"alice:{H}:umask=999", 1, "umask"),
    (f"alice:{H}:umask=1777", 1, "umask"),
    (f"alice:{H}:umask=", 1, "umask"),
    (f"alice:{H}:write,write=no", 1, "twice"),
    (f"alice:{H}:write,,umask=022", 1, "unknown option ''"),
    (f"alice:{H}\n#\nbob:{H}\nalice:{H}", 4, "duplicate user alice (first on line 1)"),
])
def test_parse_errors_name_file_and_line(body, line, words):
    with pytest.raises(ValueError) as e:
        parse_userdb(body, "/etc/ftpwarden/users.db")
    assert str(e.value).startswith(f"/etc/ftpwarden/users.db:{line}: ")
    assert words in str(e.value)


def test_bad_name_line_is_not_echoed():
    with pytest.raises(ValueError) as e:
        parse_userdb("hunter2 oops\n", "f")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("rec", [
    UserRecord("alice", H, None, None, None),
    UserRecord("alice", H, "/srv/alice", True, 0o022),
    UserRecord("bob@x", H, "/srv/with space/x", False, 0),
    UserRecord("c", H, None, None, 0o777),
])
def test_format_record_round_trips(rec):
    line = format_record(rec)
    assert "\n" not in line
    assert parse_userdb(line, "f") == {rec.name: rec}


@pytest.mark.parametrize("rec", [
    UserRecord(".x", H, None, None, None),
    UserRecord("alice", "plain", None, None, None),
    UserRecord("alice", H + ":x", None, None, None),
    UserRecord("alice", H, "relative", None, None),
    UserRecord("alice", H, "/a,b", None, None),
    UserRecord("alice", H, "/a\nbob:" + H, None, None),
    UserRecord("alice", H, None, None, 0o1000),
])
def test_format_record_refuses_what_would_not_read_back(rec):
    with pytest.raises(ValueError):
        format_record(rec)


def test_record_repr_hides_hash():
    assert H not in repr(UserRecord("alice", H, None, None, None))
