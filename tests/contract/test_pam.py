"""PAM through ctypes (policy/auth/pam.py): real logins against /etc/pam.d/ftpwarden.

The conversation tests call the C callback directly and need nothing; the
login tests need root (pam_unix reads /etc/shadow) and the accounts of
scripts/test-accounts.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ftpwarden.policy.auth import pam
from ftpwarden.policy.auth.base import Authenticator
from ftpwarden.policy.auth.local import LocalAuthenticator
from ftpwarden.policy.auth.pam import pam_check
from ftpwarden.policy.config import default_config

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="PAM logins need root (pam_unix reads /etc/shadow); CI runs as root")
SERVICE = "ftpwarden"
IP = "192.0.2.7"


@pytest.fixture(scope="session")
def accounts():
    r = subprocess.run([str(REPO / "scripts" / "test-accounts")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()


# ---------------------------------------------------------------- the conversation callback

def _converse(styles: list[int], password: bytes = b"s3cret") -> tuple[int, list[bytes | None]]:
    """Run the callback as PAM would; returns (rc, responses) and frees them."""
    msgs = [pam._Message(style, b"prompt: ") for style in styles]
    ptrs = (ctypes.POINTER(pam._Message) * max(1, len(msgs)))(*(ctypes.pointer(m) for m in msgs))
    resp = ctypes.POINTER(pam._Response)()
    secret = ctypes.create_string_buffer(password)
    rc = pam._CONV_FN(len(styles), ptrs, ctypes.byref(resp), ctypes.cast(secret, ctypes.c_void_p))
    out: list[bytes | None] = []
    if rc == pam._PAM_SUCCESS:
        _, libc = pam._libs()
        for i in range(len(styles)):
            out.append(ctypes.string_at(resp[i].resp) if resp[i].resp else None)
            assert resp[i].resp_retcode == 0
            libc.free(resp[i].resp)
        libc.free(ctypes.cast(resp, ctypes.c_void_p))
    else:
        assert not resp  # nothing handed to PAM on failure
    return rc, out


def test_conversation_answers_echo_off_with_the_password():
    assert _converse([pam._PAM_PROMPT_ECHO_OFF]) == (pam._PAM_SUCCESS, [b"s3cret"])


def test_conversation_leaves_messages_unanswered():
    rc, out = _converse([pam._PAM_TEXT_INFO, pam._PAM_PROMPT_ECHO_OFF, pam._PAM_ERROR_MSG])
    assert (rc, out) == (pam._PAM_SUCCESS, [None, b"s3cret", None])


@pytest.mark.parametrize("styles", [[2], [1, 2], [99], []], ids=["echo-on", "echo-off+echo-on", "unknown", "none"])
def test_conversation_refuses_echo_on_unknown_and_empty(styles):
    """An echoed prompt is not a password prompt: the password is not given (as vsftpd)."""
    assert _converse(styles)[0] == pam._PAM_CONV_ERR


def test_conversation_response_layout_is_c_layout():
    assert ctypes.sizeof(pam._Response) == ctypes.sizeof(ctypes.c_void_p) * 2  # char*, int, padding
    assert pam._Response.resp_retcode.offset == ctypes.sizeof(ctypes.c_void_p)
    assert pam._Message.msg.offset == ctypes.sizeof(ctypes.c_void_p)  # int, padding, const char*


# ---------------------------------------------------------------- real logins

@needs_root
def test_good_password(accounts):
    assert pam_check(SERVICE, "ftpw_alice", "alice-pw-1", IP) == (True, "")
    assert pam_check(SERVICE, "ftpw_bob", "bob-pw-2", IP) == (True, "")


@needs_root
@pytest.mark.parametrize("user, password", [
    ("ftpw_alice", "bob-pw-2"), ("ftpw_alice", "alice-pw-1 "), ("ftpw_alice", ""),
    ("ftpw_nosuchuser", "alice-pw-1"), ("ftpw_bob", "alice-pw-1"),
])
def test_bad_password_or_unknown_user(accounts, user, password):
    ok, reason = pam_check(SERVICE, user, password, IP)
    assert not ok and reason
    if password:
        assert password not in reason


@needs_root
def test_nul_byte_cannot_cut_the_password_short(accounts):
    """C would read "alice-pw-1\\0junk" as "alice-pw-1"."""
    assert pam_check(SERVICE, "ftpw_alice", "alice-pw-1\0junk", IP)[0] is False
    assert pam_check(SERVICE, "ftpw_alice\0x", "alice-pw-1", IP)[0] is False


@needs_root
def test_shell_and_ftpusers_rules_of_the_pam_file(accounts):
    """contrib/pam.d/ftpwarden has pam_shells: a nologin shell is refused even with the right password."""
    assert pam_check(SERVICE, "ftpw_noshell", "noshell-pw", IP)[0] is False


@needs_root
def test_pam_failure_delay_is_left_to_the_monitor(accounts):
    """pam_unix asks for ~2 s after a failure; the monitor's delay_failed_login replaces it."""
    started = time.monotonic()
    assert pam_check(SERVICE, "ftpw_alice", "wrong", IP)[0] is False
    assert time.monotonic() - started < 1.0


@pytest.fixture
def pam_service():
    """make(text) -> the name of a throwaway PAM service with that text; removed afterwards."""
    made = []

    def make(text: str) -> str:
        name = f"ftpwarden-test-{uuid.uuid4().hex[:8]}"
        (Path("/etc/pam.d") / name).write_text(text)
        made.append(name)
        return name
    yield make
    for name in made:
        (Path("/etc/pam.d") / name).unlink()


@needs_root
def test_items_and_password_reach_pam(accounts, pam_service, tmp_path):
    out = tmp_path / "items"
    script = tmp_path / "dump.sh"
    script.write_text(f'#!/bin/sh\n{{ echo "$PAM_USER|$PAM_RHOST|$PAM_TTY|$PAM_RUSER"; cat; }} > {out}\n')
    script.chmod(0o755)
    name = pam_service(f"auth required pam_exec.so expose_authtok {script}\n"
                       "auth required pam_permit.so\naccount required pam_permit.so\n")
    assert pam_check(name, "ftpw_bob", "bob-pw-2", "198.51.100.4") == (True, "")
    head, _, password = out.read_text().partition("\n")
    assert head == "ftpw_bob|198.51.100.4|ftp|ftpw_bob"
    assert password.rstrip("\0\n") == "bob-pw-2"


@needs_root
def test_account_management_is_asked(accounts, pam_service):
    """A good password for an account PAM refuses (expired, locked, ...) is a refusal."""
    name = pam_service("auth required pam_unix.so\naccount required pam_deny.so\n")
    ok, reason = pam_check(name, "ftpw_alice", "alice-pw-1", IP)
    assert not ok and reason.startswith("pam_acct_mgmt")


def test_local_authenticator_is_an_authenticator():
    auth = LocalAuthenticator(default_config(local_enable=True))
    assert isinstance(auth, Authenticator)
    assert auth.needs_password("anyone")
    assert not LocalAuthenticator(default_config()).wants("root")  # local_enable=NO
