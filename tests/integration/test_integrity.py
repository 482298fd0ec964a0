"""Data integrity and protocol defects of issues 10 and 17, with Python's ftplib, pooled mode.

Each check (integrity_checks.py) is a function of a `Site` (a logged-in user's view of a running server
and where its "/" is on disk), so tests/privileged/test_integrity_isolated.py runs
the same checks against isolated mode.  Everything is set up through FTP itself,
so the files belong to whoever the server runs the session as.
"""

from __future__ import annotations

import ftplib

from .integrity_checks import (
    TIMEOUT,
    check_last_login_failure_is_answered,
    check_long_line_is_answered,
    check_nlst_names_and_globs,
    check_rest_past_end,
    check_rest_past_end_of_upload,
    check_rest_survives_pasv,
    check_rest_then_appe_and_stor,
    check_trailing_slash,
)

# ---------------------------------------------------------------- pooled mode

def test_rest_survives_pasv(site):
    check_rest_survives_pasv(site)


def test_rest_then_appe_appends_and_stor_keeps_the_tail(site):
    check_rest_then_appe_and_stor(site)


def test_rest_past_the_end_is_554_with_position_and_size(site):
    check_rest_past_end(site)


def test_rest_past_the_end_of_an_upload_is_554(site):
    check_rest_past_end_of_upload(site)


def test_nlst_prints_names_as_given_and_expands_globs(site):
    check_nlst_names_and_globs(site)


def test_trailing_slash_on_a_file_name_is_550(site):
    check_trailing_slash(site)


def test_last_login_failure_gets_its_530(site):
    check_last_login_failure_is_answered(site, 3)


def test_long_line_without_newline_is_answered(site):
    check_long_line_is_answered(site)


def test_banner_file_replaces_ftpd_banner(make_server, tmp_path):
    root = tmp_path / "pub"
    root.mkdir()
    banner = tmp_path / "banner.txt"
    banner.write_text("Welcome from the banner file.\nSecond line.\n")
    srv = make_server(root, str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1",
                      "-o", f"banner_file={banner}", "-o", "ftpd_banner=Not this one.")
    ftp = ftplib.FTP(timeout=TIMEOUT)
    try:
        welcome = ftp.connect(srv.host, srv.port)
    finally:
        ftp.close()
    assert "Welcome from the banner file." in welcome and "Second line." in welcome
    assert "Not this one." not in welcome and "ftpwarden ready" not in welcome
