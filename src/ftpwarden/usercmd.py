"""`ftpwarden user add|del|passwd|list --db FILE|URL`: edit the virtual user DB.

Passwords come from a prompt (asked twice) or, when stdin is not a terminal,
from one line of stdin; never from argv, which `ps` and shell history show.
Every change replaces the file atomically, so a running server never reads
half a file; comments and the other lines are kept as they were.  A
postgresql:// (or postgres://) --db edits the table of user_db_url instead
(policy/auth/pgusers.py), with the same checks.
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .policy.auth.anonymous import ANONYMOUS_NAMES
from .policy.auth.userfile import UserRecord, check_root, format_record, parse_userdb, valid_user_name
from .policy.passwords import MAX_PASSWORD_BYTES, hash_password

__all__ = ["main"]


class _Fail(Exception):
    """An error the operator can fix; printed without a traceback."""


def _read_db(path: str, *, create: bool = False) -> tuple[str, dict[str, UserRecord]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if not create:
            raise _Fail(f"{path}: no such user DB") from None
        return "", {}
    return text, parse_userdb(text, path)


def _write_db(path: str, text: str) -> None:
    """Replace `path` atomically: temp file in the same directory, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ftpwarden-userdb.")  # created 0600
    try:
        if old is not None:
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                pass  # not root: the file stays ours, as the old one was
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # make the rename itself survive a crash
    finally:
        os.close(dfd)


def _is_user_line(line: str, name: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#") and s.split(":", 1)[0] == name


def _replace_line(text: str, name: str, new: str | None) -> str:
    """`text` with `name`'s line replaced by `new`, or dropped if `new` is None."""
    lines = [new if _is_user_line(line, name) else line for line in text.split("\n")]
    return "\n".join(line for line in lines if line is not None)


def _read_password() -> str:
    if sys.stdin is None:
        raise _Fail("no stdin to read the password from")
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Retype password: ") != password:
                raise _Fail("passwords do not match")
        except (EOFError, KeyboardInterrupt):
            raise _Fail("no password given") from None
    else:
        password = sys.stdin.readline()
        password = password.removesuffix("\n").removesuffix("\r")  # also accept CRLF input
    if not password:
        raise _Fail("empty password")
    if any(c in password for c in "\r\n\0"):
        raise _Fail("password contains CR, LF or NUL, which no FTP client can send")
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
        raise _Fail(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    return password


def _check_name(name: str) -> None:
    if not valid_user_name(name):
        raise _Fail(f"bad user name {name!r}: use 1-128 of A-Z a-z 0-9 . _ @ -, "
                    "starting with a letter, digit or _")


@contextmanager
def _pg(url: str) -> Iterator[Any]:
    """The PostgreSQL store of `url`; its errors as messages, without the password."""
    import psycopg

    from .policy.auth.pgusers import PgUserStore, describe, reason
    where = describe(url)
    try:
        store = PgUserStore(url)
    except ValueError as e:
        raise _Fail(f"--db {where}: {e}") from None
    except psycopg.Error as e:
        raise _Fail(f"cannot reach the user database {where}: {reason(e)}") from None
    try:
        with store:
            yield store
    except psycopg.errors.UndefinedTable:
        raise _Fail(f"{where} has no table ftpwarden_users: run `ftpwarden db init --db URL` first") from None
    except psycopg.Error as e:
        raise _Fail(f"user database {where}: {reason(e)}") from None


def _is_url(db: str) -> bool:
    """A --db naming PostgreSQL rather than a file (psycopg is imported only then)."""
    return db.startswith(("postgresql://", "postgres://"))


def _where(db: str) -> str:
    from .policy.auth.pgusers import describe
    return describe(db)


def _add(args: argparse.Namespace) -> int:
    _check_name(args.name)
    if args.name.lower() in ANONYMOUS_NAMES:  # the anonymous login would always win
        raise _Fail(f"user name {args.name!r} is reserved: it always logs in as anonymous; "
                    "pick another name")
    umask = None
    if args.umask is not None:
        if not args.umask or not set(args.umask) <= set("01234567") or int(args.umask, 8) > 0o777:
            raise _Fail(f"bad umask {args.umask!r}: use octal 000 to 777")
        umask = int(args.umask, 8)
    if args.root is not None:
        try:
            check_root(args.root)
        except ValueError as e:
            raise _Fail(f"bad root {args.root!r}: {e}") from None
    if _is_url(args.db):
        with _pg(args.db) as store:
            if store.get(args.name) is not None:
                raise _Fail(f"user {args.name} already exists in {_where(args.db)}")
            rec = UserRecord(args.name, hash_password(_read_password()), args.root, args.write, umask)
            if not store.add(rec):  # added meanwhile by someone else
                raise _Fail(f"user {args.name} already exists in {_where(args.db)}")
        _warn_root(args.root)
        return 0
    text, records = _read_db(args.db, create=True)
    if args.name in records:
        raise _Fail(f"user {args.name} already exists in {args.db}")
    line = format_record(UserRecord(args.name, hash_password(_read_password()), args.root, args.write, umask))
    _warn_root(args.root)
    if text and not text.endswith("\n"):
        text += "\n"
    _write_db(args.db, text + line + "\n")
    return 0


def _warn_root(root: str | None) -> None:
    if root is not None and not os.path.isdir(root):
        print(f"ftpwarden user: warning: {root} is not a directory (yet)", file=sys.stderr)


def _existing(args: argparse.Namespace) -> tuple[str, UserRecord]:
    text, records = _read_db(args.db)
    if args.name not in records:
        raise _Fail(f"no such user {args.name} in {args.db}")
    return text, records[args.name]


def _del(args: argparse.Namespace) -> int:
    if _is_url(args.db):
        with _pg(args.db) as store:
            if not store.delete(args.name):
                raise _Fail(f"no such user {args.name} in {_where(args.db)}")
        return 0
    text, _ = _existing(args)
    _write_db(args.db, _replace_line(text, args.name, None))
    return 0


def _passwd(args: argparse.Namespace) -> int:
    if _is_url(args.db):
        with _pg(args.db) as store:
            rec = store.get(args.name)
            if rec is None:
                raise _Fail(f"no such user {args.name} in {_where(args.db)}")
            if not store.replace(replace(rec, hash=hash_password(_read_password()))):
                raise _Fail(f"no such user {args.name} in {_where(args.db)}")  # deleted meanwhile
        return 0
    text, old = _existing(args)
    new = replace(old, hash=hash_password(_read_password()))  # every other option as it was
    _write_db(args.db, _replace_line(text, args.name, format_record(new)))
    return 0


def _list(args: argparse.Namespace) -> int:
    if _is_url(args.db):
        with _pg(args.db) as store:
            listed = store.list()
    else:
        listed = list(_read_db(args.db)[1].values())
    for r in listed:
        write = "-" if r.write is None else ("yes" if r.write else "no")
        umask = "-" if r.umask is None else f"{r.umask:03o}"
        print(f"{r.name}\t{r.root or '-'}\t{write}\t{umask}")
    return 0


def _parser() -> argparse.ArgumentParser:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", required=True, metavar="FILE|URL",
                    help="the user DB: a file (user_db_file) or postgresql://... (user_db_url)")
    parser = argparse.ArgumentParser(
        prog="ftpwarden user", description="Manage virtual users in the user DB file or PostgreSQL table.",
        epilog="The password is prompted for (twice) on a terminal, else read as one line from stdin.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", parents=[db], help="add a user (creates the DB if missing)")
    add.add_argument("name")
    add.add_argument("--root", metavar="DIR", help="the user's / (default: the server's default root)")
    mode = add.add_mutually_exclusive_group()
    mode.add_argument("--write", dest="write", action="store_true", default=None, help="may write")
    mode.add_argument("--read-only", dest="write", action="store_false", default=None, help="may not write")
    add.add_argument("--umask", metavar="OCTAL", help="e.g. 022 (default: local_umask)")
    add.set_defaults(run=_add)
    delete = sub.add_parser("del", parents=[db], help="delete a user")
    delete.add_argument("name")
    delete.set_defaults(run=_del)
    passwd = sub.add_parser("passwd", parents=[db], help="set a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(run=_passwd)
    listing = sub.add_parser("list", parents=[db], help="print NAME ROOT WRITE UMASK ('-': server default)")
    listing.set_defaults(run=_list)
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0), already printed
        return e.code if isinstance(e.code, int) else 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"ftpwarden user: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except (_Fail, ValueError) as e:
        print(f"ftpwarden user: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
