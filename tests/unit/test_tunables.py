"""The tunables table against its source, vsftpd-options.tsv."""

from __future__ import annotations

import pathlib
import re
from pathlib import Path

import pytest

from ftpwarden.policy import tunables
from ftpwarden.policy.config import parse_value
from ftpwarden.policy.tunables import TUNABLES, Kind, format_tunables, format_value

_TSV = pathlib.Path("/work/shared/reference/vsftpd-options.tsv")

# (option, type, default) of every vsftpd-options.tsv row, in its own spelling,
# so the test also checks the conversion ("077" -> 0o77, "(none)" -> None).
_ROWS = """
background bool NO
ftp_enable bool YES
http_enable bool NO
listen bool YES
listen_address string (none)
listen_address6 string (none)
listen_ipv6 bool NO
listen_port numeric 21
max_clients numeric 2000
max_per_ip numeric 50
one_process_model bool NO
run_as_launching_user bool NO
session_support bool NO
setproctitle_enable bool NO
anonymous_enable bool YES
cmds_allowed string (none)
cmds_denied string (none)
delay_failed_login numeric 1
delay_successful_login numeric 0
deny_file string (none)
local_enable bool NO
max_login_fails numeric 3
tcp_wrappers bool NO
user_config_dir string (none)
userlist_deny bool YES
userlist_enable bool NO
userlist_file string /etc/vsftpd.user_list
download_file string (none)
reverse_lookup_enable bool YES
upload_file string (none)
anon_mkdir_write_enable bool NO
anon_other_write_enable bool NO
anon_root string (none)
anon_upload_enable bool NO
anon_world_readable_only bool YES
banned_email_file string /etc/vsftpd.banned_emails
chown_uploads bool NO
chown_username string root
deny_email_enable bool NO
email_password_file string /etc/vsftpd.email_passwords
ftp_username string ftp
no_anon_password bool NO
secure_email_list_enable bool NO
check_shell bool YES
local_root string (none)
pam_service_name string ftp
tilde_user_enable bool NO
guest_enable bool NO
guest_username string ftp
user_sub_token string (none)
virtual_use_local_privs bool NO
allow_writeable_chroot bool NO
chroot_list_enable bool NO
chroot_list_file string /etc/vsftpd.chroot_list
chroot_local_user bool NO
passwd_chroot_enable bool NO
secure_chroot_dir string /usr/share/empty
anon_umask numeric 077
chmod_enable bool YES
chown_upload_mode numeric 0600
file_open_mode numeric 0666
local_umask numeric 077
mdtm_write bool YES
write_enable bool NO
anon_max_rate numeric 0
ascii_download_enable bool NO
ascii_upload_enable bool NO
async_abor_enable bool NO
delete_failed_uploads bool NO
download_enable bool YES
local_max_rate numeric 0
lock_upload_files bool YES
trans_chunk_size numeric 0
use_sendfile bool YES
better_stou bool NO
accept_timeout numeric 60
connect_timeout numeric 60
data_connection_timeout numeric 300
idle_session_timeout numeric 300
connect_from_port_20 bool NO
ftp_data_port numeric 20
pasv_addr_resolve bool NO
pasv_address string (none)
pasv_enable bool YES
pasv_max_port numeric 0
pasv_min_port numeric 5001
pasv_promiscuous bool NO
port_enable bool YES
port_promiscuous bool NO
bind_retries numeric 9
debug_ssl bool NO
dual_log_enable bool NO
log_ftp_protocol bool NO
no_log_lock bool NO
syslog_enable bool NO
vsftpd_log_file string /var/log/vsftpd.log
xferlog_enable bool NO
xferlog_file string /var/log/xferlog
xferlog_std_format bool NO
log_die bool NO
userlist_log bool NO
wc_logs_enable bool NO
allow_anon_ssl bool NO
ca_certs_file string (none)
dsa_cert_file string (none)
dsa_private_key_file string (none)
force_anon_data_ssl bool NO
force_anon_logins_ssl bool NO
force_local_data_ssl bool YES
force_local_logins_ssl bool YES
implicit_ssl bool NO
require_cert bool NO
require_ssl_reuse bool YES
rsa_cert_file string /usr/share/ssl/certs/vsftpd.pem
rsa_private_key_file string (none)
ssl_ciphers string ECDHE-RSA-AES256-GCM-SHA384
ssl_enable bool NO
ssl_request_cert bool YES
ssl_sni_hostname string (none)
ssl_sslv2 bool NO
ssl_sslv3 bool NO
ssl_tlsv1 bool NO
ssl_tlsv11 bool NO
ssl_tlsv12 bool YES
ssl_tlsv13 bool YES
strict_ssl_read_eof bool YES
strict_ssl_write_shutdown bool NO
validate_cert bool NO
dh_param_file string (none)
ecdh_param_file string (none)
ssl_tlsv1_1 bool NO
ssl_tlsv1_2 bool YES
ssl_tlsv1_3 bool YES
banner_file string (none)
dirmessage_enable bool NO
ftpd_banner string (none)
message_file string .message
dirlist_enable bool YES
force_dot_files bool NO
hide_file string (none)
hide_ids bool NO
ls_recurse_enable bool NO
text_userdb_names bool NO
use_localtime bool NO
utf8_filesystem bool ?
isolate bool YES
isolate_network bool YES
nopriv_user string nobody
ptrace_sandbox bool NO
seccomp_sandbox bool YES
""".strip().splitlines()

_KINDS = {"bool": Kind.BOOL, "numeric": Kind.INT, "string": Kind.STR}


def _expected(kind: str, raw: str) -> object:
    if raw == "(none)":
        return None
    if kind == "bool":
        return {"YES": True, "NO": False, "?": False}[raw]  # "?": unknown, NO assumed
    if kind == "numeric":
        return int(raw, 8 if raw.startswith("0") and raw != "0" else 10)
    return raw


@pytest.mark.skipif(not _TSV.exists(), reason="shared reference TSV not available")
def test_rows_match_the_shared_tsv():
    lines = _TSV.read_text().splitlines()[1:]
    assert [" ".join(line.split("\t")[:3]) for line in lines] == _ROWS


@pytest.mark.parametrize("row", _ROWS)
def test_every_tsv_row_is_in_the_table(row):
    name, kind, default = row.split(" ", 2)
    t = TUNABLES[name]
    assert t.kind is _KINDS[kind]
    assert t.default == _expected(kind, default)
    assert type(t.default) is type(_expected(kind, default))  # False is not 0
    assert t.origin == "vsftpd"


def test_table_order_and_count():
    vsftpd = [n for n, t in TUNABLES.items() if t.origin == "vsftpd"]
    assert vsftpd == [row.split(" ")[0] for row in _ROWS]
    assert len(TUNABLES) == len(_ROWS) + 37


def test_names_unique_and_keys_match():
    rows = [r[0] for g in (tunables._VSFTPD, tunables._FTPWARDEN) for rs in g.values() for r in rs]
    assert len(rows) == len(set(rows)) == len(TUNABLES)
    assert all(name == t.name for name, t in TUNABLES.items())


@pytest.mark.parametrize("name, kind, default", [
    ("worker_processes", Kind.INT, 0),
    ("user_db_file", Kind.STR, None),
    ("pooled", Kind.BOOL, False),
    ("atomic_uploads", Kind.BOOL, False),
    ("json_log_file", Kind.STR, None),
    ("syslog_socket", Kind.STR, "/dev/log"),
    ("hash_enable", Kind.BOOL, True),
    ("utf8_enable", Kind.BOOL, True),
    ("mlsd_enable", Kind.BOOL, True),
    ("control_line_max", Kind.INT, 4096),
    ("implicit_ssl_port", Kind.INT, 0),
    ("user_max_rate", Kind.INT, 0),
    ("login_timeout", Kind.INT, 60),
    ("ban_threshold", Kind.INT, 10),
    ("ban_seconds", Kind.INT, 600),
    ("ban_window", Kind.INT, 600),
    ("session_isolation", Kind.STR, "identity"),
    ("identity_sessions_max", Kind.INT, 256),
])
def test_ftpwarden_options(name, kind, default):
    t = TUNABLES[name]
    assert (t.kind, t.default, t.origin, t.implemented) == (kind, default, "ftpwarden", True)


def test_implemented_flags_are_read_by_the_code():
    """An option marked implemented must be read somewhere outside the table."""
    src = Path(__file__).resolve().parents[2] / "src" / "ftpwarden"
    text = "\n".join(p.read_text() for p in src.rglob("*.py") if p.name != "tunables.py")
    unread = [n for n, t in TUNABLES.items() if t.implemented and not re.search(rf"\b{n}\b", text)]
    assert not unread, unread


def test_octal_flags():
    assert {n for n, t in TUNABLES.items() if t.octal} == {
        "anon_umask", "local_umask", "file_open_mode", "chown_upload_mode"}


@pytest.mark.parametrize("t", TUNABLES.values(), ids=lambda t: t.name)
def test_default_round_trips_through_its_printed_form(t):
    assert parse_value(t, format_value(t, t.default)) == t.default


@pytest.mark.parametrize("name, text", [
    ("anon_umask", "077"), ("file_open_mode", "0666"), ("listen", "YES"),
    ("listen_ipv6", "NO"), ("listen_port", "21"), ("anon_root", ""),
    ("message_file", ".message"),
])
def test_format_value(name, text):
    assert format_value(TUNABLES[name], TUNABLES[name].default) == text


def test_format_tunables_lists_everything_once_with_groups():
    out = format_tunables()
    for name in TUNABLES:
        assert sum(line.split()[:1] == [name] for line in out.splitlines()) == 1, name
    assert "[permissions/umask]" in out and "[ftpwarden]" in out


def test_format_tunables_selected_rows():
    lines = format_tunables(["anon_umask", "http_enable", "anon_root"]).splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line and line[0].islower()}
    assert set(rows) == {"anon_umask", "http_enable", "anon_root"}
    assert rows["anon_umask"][1:4] == ["numeric", "077", "yes"]
    assert rows["http_enable"][1:4] == ["bool", "NO", "refused"]
    assert rows["anon_root"][1:4] == ["string", "(none)", "yes"]


def test_format_tunables_unknown_name():
    with pytest.raises(KeyError):
        format_tunables(["no_such_option"])
