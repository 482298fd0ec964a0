"""The access options' policy code without servers: e-mail lists, PAM_RHOST, bounded lookups,
and the broker's wording of the lines a pre-login process reports (userlist_log, tcp_wrappers)."""

from __future__ import annotations

import pwd
import time
from pathlib import Path
from typing import Any

import pytest

from ftpwarden.logs.events import EventLog
from ftpwarden.policy import rdns
from ftpwarden.policy.auth.anonymous import AnonymousAuthenticator
from ftpwarden.policy.auth.base import LoginRefused, LoginRequest
from ftpwarden.policy.auth.local import LocalAuthenticator
from ftpwarden.policy.config import default_config
from ftpwarden.priv.logrelay import LogRelay
from ftpwarden.priv.messages import ChannelError, LogConnect, LogHostsDenied, LogUserlist


def anon(tmp_path: Path, **values: Any) -> AnonymousAuthenticator:
    return AnonymousAuthenticator(default_config(anonymous_enable=True, anon_root=str(tmp_path), **values))


def refusal(auth: AnonymousAuthenticator, password: str) -> str | None:
    try:
        auth.authenticate(LoginRequest("anonymous", password, "192.0.2.1"))
    except LoginRefused as e:
        return e.reason
    return None


def test_banned_email_file_exact_lines(tmp_path: Path):
    f = tmp_path / "banned"
    f.write_text("bad@example.org\nBAD2@example.org\r\n")
    auth = anon(tmp_path, deny_email_enable=True, banned_email_file=str(f))
    assert refusal(auth, "bad@example.org") == "password listed in banned_email_file"
    assert refusal(auth, "BAD2@example.org") is None  # the \r stays part of that line, as in vsftpd
    assert refusal(auth, "Bad@example.org") is None  # exact: case counts
    assert refusal(auth, "") is None  # the file's last newline is no empty line


def test_secure_email_list(tmp_path: Path):
    f = tmp_path / "ok"
    f.write_text("s3cret\n\n")
    auth = anon(tmp_path, secure_email_list_enable=True, email_password_file=str(f))
    assert refusal(auth, "s3cret") is None
    assert refusal(auth, "other") == "password not listed in email_password_file"
    assert refusal(auth, "") == "password not listed in email_password_file"  # an empty line never admits


def test_both_lists_and_unreadable_files(tmp_path: Path):
    ok, banned = tmp_path / "ok", tmp_path / "banned"
    ok.write_text("a\nb\n")
    banned.write_text("b\n")
    auth = anon(tmp_path, deny_email_enable=True, banned_email_file=str(banned),
                secure_email_list_enable=True, email_password_file=str(ok))
    assert refusal(auth, "a") is None and refusal(auth, "b") == "password listed in banned_email_file"
    auth = anon(tmp_path, deny_email_enable=True, banned_email_file=str(tmp_path / "missing"))
    assert refusal(auth, "a") == f"cannot read banned_email_file {tmp_path / 'missing'}"


@pytest.mark.parametrize("setting, name, expected", [
    (True, "host.example.net", "host.example.net"), (True, "", "192.0.2.7"), (False, "host.example.net", "192.0.2.7"),
])
def test_pam_rhost_follows_reverse_lookup_enable(setting, name, expected):
    me = pwd.getpwuid(0).pw_name  # any account known to the passwd database
    seen: list[str] = []

    def pam(service: str, user: str, password: str, rhost: str) -> tuple[bool, str]:
        seen.append(rhost)
        return False, "stop here"

    cfg = default_config(local_enable=True, reverse_lookup_enable=setting)
    auth = LocalAuthenticator(cfg, pam=pam, lookup=lambda ip: name)
    with pytest.raises(LoginRefused):
        auth.authenticate(LoginRequest(me, "pw", "192.0.2.7"))
    assert seen == [expected]


def test_bounded_lookup_finds_localhost_and_gives_up_in_time(monkeypatch):
    assert rdns.bounded("127.0.0.1", 5.0) == ("localhost", False)  # /etc/hosts: no network needed
    assert rdns.bounded("127.0.0.1", 5.0, verify=False) == ("localhost", False)
    monkeypatch.setattr(rdns, "lookup", lambda addr, verify=True: time.sleep(30) or ("x", False))
    started = time.monotonic()
    assert rdns.bounded("127.0.0.1", 0.3) == ("", False)  # the child is killed
    assert time.monotonic() - started < 3


class _Events(EventLog):
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def connect(self, session: str, remote_ip: str) -> None:
        self.seen.append(("connect", remote_ip))

    def userlist_refused(self, session: str, remote_ip: str, user: str, text: str) -> None:
        self.seen.append(("userlist", remote_ip, user, text))

    def connect_refused(self, session: str, remote_ip: str, text: str) -> None:
        self.seen.append(("refused", remote_ip, text))


def test_relay_words_the_lines_itself():
    events = _Events()
    relay = LogRelay(events, "192.0.2.9", "1.1")
    relay.handle(LogHostsDenied("/etc/hosts.deny:3"))
    assert events.seen == [("refused", "192.0.2.9", "Connection refused: tcp_wrappers denial.")]
    relay = LogRelay(events, "192.0.2.9", "1.2")
    relay.handle(LogConnect())
    relay.handle(LogUserlist("mallory", True))
    relay.handle(LogUserlist("eve", False))
    assert events.seen[-2:] == [("userlist", "192.0.2.9", "mallory", "User is in the deny user list."),
                                ("userlist", "192.0.2.9", "eve", "User is not in the allow user list.")]
    with pytest.raises(ChannelError):  # a denial comes before the greeting, never after
        relay.handle(LogHostsDenied("x"))
