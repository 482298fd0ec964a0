"""Issue 17 with the clients a new user reaches for: tnftp mget, ncftpget globs and
lftp mirror (symlinks down, a tree up), pooled mode.  tests/privileged/
test_integrity_isolated.py runs the same checks against isolated mode.
"""

from __future__ import annotations

from .newuser_checks import (
    check_lftp_mirror_keeps_symlinks,
    check_lftp_mirror_upload,
    check_ncftpget_glob,
    check_tnftp_mget,
    needs,
)

# ---------------------------------------------------------------- pooled mode

@needs("tnftp")
def test_tnftp_mget_plain_and_glob(site, tmp_path):
    check_tnftp_mget(site, tmp_path)


@needs("ncftpget")
def test_ncftpget_glob(site, tmp_path):
    check_ncftpget_glob(site, tmp_path)


@needs("lftp")
def test_lftp_mirror_recreates_symlinks(site, tmp_path):
    check_lftp_mirror_keeps_symlinks(site, tmp_path)


@needs("lftp")
def test_lftp_mirror_upload_of_a_tree(site, tmp_path):
    check_lftp_mirror_upload(site, tmp_path)
