"""Issue 16, pooled idle sessions and logins: the per-session savings keep working.

- every login of a user-file or anonymous authenticator shares one grants frozenset
  (with a per-write-setting key: read-only and writable users never mix);
- bench's cheap-hash user (what a login costs beyond the check) verifies with
  ftpwarden's own password check.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

from ftpwarden.policy.auth.anonymous import AnonymousAuthenticator
from ftpwarden.policy.auth.base import LoginRequest
from ftpwarden.policy.auth.userfile import MemoryUserAuthenticator, UserRecord
from ftpwarden.policy.passwords import hash_password, verify_password
from ftpwarden.proto.commands import Perm

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _cfg(**over: object) -> SimpleNamespace:
    base = dict(anonymous_enable=True, anon_root="/srv/ftp", anon_umask=0o077, no_anon_password=False,
                local_umask=0o022, download_enable=True, dirlist_enable=True, write_enable=False,
                anon_upload_enable=False, anon_mkdir_write_enable=False, anon_other_write_enable=False,
                chmod_enable=True, mdtm_write=False, anon_world_readable_only=True,
                deny_email_enable=False, secure_email_list_enable=False)
    return SimpleNamespace(**{**base, **over})


def test_user_logins_share_grants_per_write_setting() -> None:
    h = hash_password("pw")
    auth = MemoryUserAuthenticator(_cfg(), {"w": UserRecord("w", h, "/srv/w", True, None),
                                            "r": UserRecord("r", h, "/srv/r", None, None)}, "/srv")
    w1 = auth.authenticate(LoginRequest("w", "pw", "192.0.2.1"))
    w2 = auth.authenticate(LoginRequest("w", "pw", "192.0.2.2"))
    r1 = auth.authenticate(LoginRequest("r", "pw", "192.0.2.1"))
    assert w1.grants is w2.grants
    assert Perm.UPLOAD in w1.grants and Perm.UPLOAD not in r1.grants  # write_enable=NO for "r"


def test_anonymous_logins_share_grants() -> None:
    auth = AnonymousAuthenticator(_cfg())
    a = auth.authenticate(LoginRequest("ftp", "a@example.org", "192.0.2.1"))
    b = auth.authenticate(LoginRequest("anonymous", "b@example.org", "192.0.2.1"))
    assert a.grants is b.grants and Perm.UPLOAD not in a.grants


def test_bench_cheap_hash_verifies() -> None:
    spec = importlib.util.spec_from_file_location("ftpwarden_bench_fixture", BENCH / "fixture.py")
    assert spec is not None and spec.loader is not None
    fixture = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fixture
    spec.loader.exec_module(fixture)
    stored = fixture.cheap_hash("benchpass")
    assert stored.startswith("$scrypt$ln=1,r=1,p=1$")
    assert verify_password("benchpass", stored) and not verify_password("benchpasS", stored)
