"""`ftpwarden user`: real files, real hashing; the password only ever on stdin."""

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ftpwarden.policy.auth.userfile import parse_userdb
from ftpwarden.policy.passwords import verify_password
from ftpwarden.usercmd import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def run(monkeypatch, capsys):
    """main(argv) with `stdin_text` as a non-terminal stdin -> (code, stdout, stderr)."""
    def _run(*argv, stdin_text=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return _run


def db_of(path):
    return parse_userdb(Path(path).read_text(), str(path))


def test_add_creates_file_0600_and_hash_verifies(run, tmp_path):
    db = str(tmp_path / "users.db")
    assert run("add", "--db", db, "alice", "--root", str(tmp_path), "--write", stdin_text="secret\n")[0] == 0
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    rec = db_of(db)["alice"]
    assert (rec.root, rec.write, rec.umask) == (str(tmp_path), True, None)
    assert verify_password("secret", rec.hash)          # trailing newline stripped
    assert not verify_password("secret\n", rec.hash)
    assert "secret" not in Path(db).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["users.db"]  # no temp file left


def test_add_options_and_defaults(run, tmp_path):
    db = str(tmp_path / "users.db")
    assert run("add", "--db", db, "bob", stdin_text="pw")[0] == 0  # no newline at EOF
    assert run("add", "--db", db, "carol", "--read-only", "--umask", "027", "--root", "/nonexistent/c",
               stdin_text="pw2\r\n")[0] == 0
    recs = db_of(db)
    assert (recs["bob"].root, recs["bob"].write, recs["bob"].umask) == (None, None, None)
    assert (recs["carol"].root, recs["carol"].write, recs["carol"].umask) == ("/nonexistent/c", False, 0o027)
    assert verify_password("pw", recs["bob"].hash) and verify_password("pw2", recs["carol"].hash)


def test_add_warns_about_a_missing_root_directory(run, tmp_path):
    code, _, err = run("add", "--db", str(tmp_path / "u.db"), "a", "--root", "/nonexistent/x", stdin_text="p\n")
    assert code == 0 and "/nonexistent/x" in err and "warning" in err


@pytest.mark.parametrize("argv, stdin_text, words", [
    (["add", "al ice"], "Zq9-sekret\n", "bad user name"),
    (["add", ".x"], "Zq9-sekret\n", "bad user name"),
    (["add", "alice"], "\n", "empty password"),
    (["add", "alice"], "", "empty password"),
    (["add", "alice"], "a\rb\n", "CR"),
    (["add", "alice"], "x" * 129 + "\n", "128 bytes"),
    (["add", "alice", "--root", "srv/alice"], "Zq9-sekret\n", "bad root"),
    (["add", "alice", "--root", "/srv/a,b"], "Zq9-sekret\n", "bad root"),
    (["add", "alice", "--umask", "999"], "Zq9-sekret\n", "bad umask"),
    (["del", "nobody"], "", "no such user"),
    (["passwd", "nobody"], "Zq9-sekret\n", "no such user"),
])
def test_errors_exit_1_with_a_message(run, tmp_path, argv, stdin_text, words):
    db = str(tmp_path / "users.db")
    assert run("add", "--db", db, "existing", stdin_text="pw\n")[0] == 0
    before = Path(db).read_text()
    code, out, err = run(*argv[:1], "--db", db, *argv[1:], stdin_text=stdin_text)
    assert code == 1 and words in err and out == ""
    assert Path(db).read_text() == before
    if stdin_text.strip():
        assert stdin_text.strip() not in err


def test_add_existing_user_fails(run, tmp_path):
    db = str(tmp_path / "users.db")
    run("add", "--db", db, "alice", stdin_text="one\n")
    code, _, err = run("add", "--db", db, "alice", stdin_text="two\n")
    assert code == 1 and "already exists" in err
    assert verify_password("one", db_of(db)["alice"].hash)


def test_missing_db_is_an_error_except_for_add(run, tmp_path):
    db = str(tmp_path / "nope.db")
    for cmd in (["list"], ["del", "a"], ["passwd", "a"]):
        code, _, err = run(cmd[0], "--db", db, *cmd[1:], stdin_text="pw\n")
        assert code == 1 and "no such user DB" in err
    assert not os.path.exists(db)


def test_broken_db_is_reported_with_its_line(run, tmp_path):
    db = tmp_path / "users.db"
    db.write_text("# ok\nalice:notahash\n")
    code, _, err = run("list", "--db", str(db))
    assert code == 1 and f"{db}:2:" in err


def test_passwd_keeps_options_comments_and_mode(run, tmp_path):
    db = str(tmp_path / "users.db")
    run("add", "--db", db, "alice", "--root", "/srv/alice", "--write", "--umask", "002", stdin_text="old\n")
    run("add", "--db", db, "bob", stdin_text="bobpw\n")
    with open(db, "r+") as f:
        text = f.read()
        f.seek(0)
        f.write("# managed by hand too\n" + text)
    os.chmod(db, 0o640)
    bob_line = [line for line in Path(db).read_text().splitlines() if line.startswith("bob:")]
    assert run("passwd", "--db", db, "alice", stdin_text="new\n")[0] == 0
    text = Path(db).read_text()
    assert text.startswith("# managed by hand too\n")
    assert [line for line in text.splitlines() if line.startswith("bob:")] == bob_line
    rec = db_of(db)["alice"]
    assert (rec.root, rec.write, rec.umask) == ("/srv/alice", True, 0o002)
    assert verify_password("new", rec.hash) and not verify_password("old", rec.hash)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o640


def test_del_and_list(run, tmp_path):
    db = str(tmp_path / "users.db")
    run("add", "--db", db, "alice", "--root", "/srv/alice", "--write", stdin_text="a\n")
    run("add", "--db", db, "bob", "--read-only", "--umask", "022", stdin_text="b\n")
    run("add", "--db", db, "carol", stdin_text="c\n")
    code, out, _ = run("list", "--db", db)
    assert code == 0
    assert out == "alice\t/srv/alice\tyes\t-\nbob\t-\tno\t022\ncarol\t-\t-\t-\n"
    assert "$" not in out  # never a hash
    assert run("del", "--db", db, "bob")[0] == 0
    assert list(db_of(db)) == ["alice", "carol"]
    assert run("list", "--db", db)[1] == "alice\t/srv/alice\tyes\t-\ncarol\t-\t-\t-\n"


def test_password_is_never_taken_from_argv(run, tmp_path):
    code, _, _ = run("add", "--db", str(tmp_path / "u.db"), "alice", "--password", "x", stdin_text="pw\n")
    assert code == 2  # argparse usage error: there is no such option


def test_usage_errors(run, tmp_path):
    assert run()[0] == 2
    assert run("add", "alice")[0] == 2  # --db is required
    assert run("add", "--db", str(tmp_path / "u"), "a", "--write", "--read-only")[0] == 2


def test_tty_prompts_twice_and_must_match(monkeypatch, capsys, tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    answers = iter(["pw1", "pw2"])
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    db = str(tmp_path / "u.db")
    assert main(["add", "--db", db, "alice"]) == 1
    assert "do not match" in capsys.readouterr().err
    answers = iter(["same", "same"])
    assert main(["add", "--db", db, "alice"]) == 0
    assert verify_password("same", db_of(db)["alice"].hash)


def test_real_subprocess_pipe(tmp_path):
    db = str(tmp_path / "users.db")
    root = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from ftpwarden.usercmd import main; sys.exit(main(sys.argv[1:]))",
         "add", "--db", db, "alice", "--root", root, "--write"],
        input="secret\n", capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    rec = db_of(db)["alice"]
    assert (rec.root, rec.write) == (root, True)
    assert verify_password("secret", rec.hash)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


@pytest.mark.parametrize("name", ["ftp", "FTP", "anonymous", "Anonymous"])
def test_add_refuses_the_anonymous_names(run, tmp_path, name):
    """`ftp` and `anonymous` (any case) always log in as anonymous: never a user of the DB."""
    db = tmp_path / "users.db"
    code, _, err = run("add", "--db", str(db), name, stdin_text="secretpw\n")
    assert code == 1
    assert f"user name {name!r} is reserved: it always logs in as anonymous" in err
    assert "Traceback" not in err and not db.exists()


def test_os_errors_name_the_file_not_errno(run, tmp_path):
    code, _, err = run("list", "--db", str(tmp_path))
    assert code == 1
    assert err == f"ftpwarden user: {tmp_path}: Is a directory\n"


def test_passwd_keeps_the_users_quotas(run, tmp_path):
    db = tmp_path / "users.db"
    run("add", "--db", str(db), "carol", "--root", "/srv/carol", stdin_text="old\n")
    db.write_text(db.read_text().rstrip("\n") + ",quota_bytes=1048576,quota_files=10\n")
    assert (db_of(db)["carol"].quota_bytes, db_of(db)["carol"].quota_files) == (1048576, 10)
    assert run("passwd", "--db", str(db), "carol", stdin_text="new\n")[0] == 0
    rec = db_of(db)["carol"]
    assert (rec.root, rec.quota_bytes, rec.quota_files) == ("/srv/carol", 1048576, 10)
    assert verify_password("new", rec.hash)
