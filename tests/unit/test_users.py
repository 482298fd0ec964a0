"""grants_for: vsftpd's tunables -> permissions, one row per case."""

from types import SimpleNamespace

import pytest

from ftpwarden.policy.users import UserClass, grants_for
from ftpwarden.proto.commands import Perm

# One letter per permission keeps each table row on one line.
D, L, U, O, M, X, R, C, T = (Perm.DOWNLOAD, Perm.LIST, Perm.UPLOAD, Perm.OVERWRITE, Perm.MKDIR,  # noqa: E741
                             Perm.DELETE, Perm.RENAME, Perm.CHMOD, Perm.SET_MTIME)
ANON, GUEST, REAL = UserClass.ANONYMOUS, UserClass.GUEST, UserClass.REAL

# Everything off except reading; each row turns some tunables on.
BASE = dict(download_enable=True, dirlist_enable=True, write_enable=False, anon_upload_enable=False,
            anon_mkdir_write_enable=False, anon_other_write_enable=False, chmod_enable=False,
            mdtm_write=False, anon_world_readable_only=True)


def cfg(**over):
    return SimpleNamespace(**{**BASE, **over})


ALL_ANON = dict(anon_upload_enable=True, anon_mkdir_write_enable=True, anon_other_write_enable=True)

TABLE = [
    # (class, tunables, write flag, expected)
    (ANON, {}, None, {D, L}),
    (ANON, dict(download_enable=False), None, {L}),
    (ANON, dict(dirlist_enable=False), None, {D}),
    (ANON, dict(ALL_ANON, mdtm_write=True, chmod_enable=True), None, {D, L}),  # no write_enable: nothing
    (ANON, dict(write_enable=True), None, {D, L}),                              # no anon_* opt-in: nothing
    (ANON, dict(write_enable=True, anon_upload_enable=True), None, {D, L, U}),
    (ANON, dict(write_enable=True, anon_mkdir_write_enable=True), None, {D, L, M}),
    (ANON, dict(write_enable=True, anon_other_write_enable=True), None, {D, L, X, R, O}),
    (ANON, dict(write_enable=True, anon_other_write_enable=True, mdtm_write=True), None, {D, L, X, R, O, T}),
    (ANON, dict(write_enable=True, anon_upload_enable=True, mdtm_write=True), None, {D, L, U}),
    (ANON, dict(ALL_ANON, write_enable=True, chmod_enable=True, mdtm_write=True), None,
     {D, L, U, M, X, R, O, T}),                                                 # never CHMOD
    (ANON, dict(ALL_ANON, write_enable=True), False, {D, L}),                   # per-user write=no
    (ANON, dict(ALL_ANON), True, {D, L, U, M, X, R, O}),                        # per-user write=yes
    (GUEST, {}, None, {D, L}),
    (GUEST, dict(chmod_enable=True, mdtm_write=True), None, {D, L}),
    # vsftpd: a guest without virtual_use_local_privs has anonymous-like rights
    (GUEST, dict(write_enable=True), None, {D, L}),
    (GUEST, dict(write_enable=True, anon_upload_enable=True), None, {D, L, U}),
    (GUEST, dict(write_enable=True, virtual_use_local_privs=True), None, {D, L, U, O, M, X, R}),
    (GUEST, dict(write_enable=True, chmod_enable=True, virtual_use_local_privs=True), None, {D, L, U, O, M, X, R, C}),
    (GUEST, dict(write_enable=True, mdtm_write=True, virtual_use_local_privs=True), None, {D, L, U, O, M, X, R, T}),
    (GUEST, dict(write_enable=True, chmod_enable=True, mdtm_write=True), False, {D, L}),
    (GUEST, dict(chmod_enable=True), True, {D, L, U, O, M, X, R, C}),
    (GUEST, dict(mdtm_write=True), True, {D, L, U, O, M, X, R, T}),
    (GUEST, dict(download_enable=False, dirlist_enable=False), True, {U, O, M, X, R}),
    (REAL, {}, None, {D, L}),
    (REAL, dict(write_enable=True, chmod_enable=True, mdtm_write=True), None, {D, L, U, O, M, X, R, C, T}),
    (REAL, dict(write_enable=True, chmod_enable=True, mdtm_write=True), False, {D, L}),
    (REAL, dict(download_enable=False, write_enable=True), None, {L, U, O, M, X, R}),
]


@pytest.mark.parametrize("user_class, tunables, write, expected", TABLE)
def test_grants_table(user_class, tunables, write, expected):
    grants = grants_for(cfg(**tunables), user_class, write=write)
    assert isinstance(grants, frozenset)
    assert grants == frozenset(expected)


def test_grants_only_read_attributes():
    """The config is read, never written (the real Config is frozen)."""
    c = cfg(write_enable=True, chmod_enable=True, mdtm_write=True)
    before = dict(vars(c))
    grants_for(c, REAL)
    assert vars(c) == before
