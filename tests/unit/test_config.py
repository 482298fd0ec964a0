"""vsftpd.conf and -o parsing: values, errors at FILE:LINE, warnings."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest

from ftpwarden.policy.config import (
    Config,
    ConfigError,
    default_config,
    load_config,
    parse_value,
)
from ftpwarden.policy.tunables import TUNABLES


@pytest.fixture
def conf(tmp_path):
    """Write `text` to a vsftpd.conf and return its path."""
    def write(text: str | bytes) -> str:
        path = tmp_path / "vsftpd.conf"
        if isinstance(text, str):
            text = text.encode()
        path.write_bytes(text)
        return str(path)
    return write


def test_no_file_gives_table_defaults():
    cfg, warnings = load_config(None)
    assert warnings == []
    assert cfg == default_config()
    assert cfg.explicit == frozenset()
    assert all(getattr(cfg, n) == t.default for n, t in TUNABLES.items())
    assert cfg.listen is True and cfg.pasv_min_port == 5001 and cfg.anon_umask == 0o77


def test_comments_blank_lines_crlf_and_spaces(conf):
    path = conf("# a comment\r\n\r\n   \r\n  # indented comment\r\n"
                "anon_root=/srv/ftp  \r\n  write_enable = YES\r\n"
                "ftpd_banner=Hello = world\r\n")
    cfg, warnings = load_config(path)
    assert warnings == []
    assert cfg.anon_root == "/srv/ftp"
    assert cfg.write_enable is True
    assert cfg.ftpd_banner == "Hello = world"  # split at the first "=" only
    assert cfg.explicit == {"anon_root", "write_enable", "ftpd_banner"}


@pytest.mark.parametrize("raw, value", [
    ("YES", True), ("yes", True), ("Yes", True), ("TRUE", True), ("true", True), ("1", True),
    ("NO", False), ("no", False), ("No", False), ("FALSE", False), ("false", False), ("0", False),
])
def test_boolean_spellings(conf, raw, value):
    cfg, _ = load_config(conf(f"write_enable={raw}\n"))
    assert cfg.write_enable is value


@pytest.mark.parametrize("raw", ["Y", "on", "2", "YES # comment", "", "yes please"])
def test_bad_boolean_names_the_accepted_words(conf, raw):
    path = conf(f"write_enable={raw}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    expected = "missing value" if raw == "" else "must be YES or NO (or TRUE/FALSE, 1/0)"
    assert str(e.value).startswith(f"{path}:1: ")
    assert expected in str(e.value)


@pytest.mark.parametrize("raw, value", [
    ("022", 0o22), ("077", 0o77), ("0", 0), ("00", 0), ("0666", 0o666), ("21", 21), ("2121", 2121),
])
def test_numbers_decimal_and_octal(raw, value):
    assert parse_value(TUNABLES["local_umask"], raw) == value


def test_octal_umask_from_file(conf):
    cfg, _ = load_config(conf("local_umask=022\n"))
    assert cfg.local_umask == 0o22 == 18


@pytest.mark.parametrize("raw", ["abc", "-1", "+5", "1_0", "08", "0x1f", "1e3", "٣", "99999999999"])
def test_bad_numbers(raw):
    with pytest.raises(ValueError, match="local_umask"):
        parse_value(TUNABLES["local_umask"], raw)


def test_bad_value_names_file_and_line(conf):
    path = conf("# umask\nlocal_umask=022\nanon_umask=abc\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert "anon_umask" in str(e.value) and "'abc'" in str(e.value)
    assert e.value.where == f"{path}:3"


def test_empty_string_means_unset(conf):
    cfg, _ = load_config(conf("ftpd_banner=\n"))
    assert cfg.ftpd_banner is None


def test_unknown_option_suggests_close_name(conf):
    path = conf("listen=YES\nanonymous_enabel=YES\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}:2: unknown option 'anonymous_enabel' "
                            "(did you mean 'anonymous_enable'?)")


def test_unknown_option_without_close_name(conf):
    with pytest.raises(ConfigError) as e:
        load_config(conf("frobnicate_everything=YES\n"))
    assert "did you mean" not in str(e.value)


def test_line_without_equals(conf):
    path = conf("listen=NO\nanonymous_enable\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:2: expected NAME=VALUE")


def test_unreadable_file(tmp_path):
    path = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: cannot read: ")


def test_invalid_utf8_names_the_line(conf):
    path = conf(b"listen=NO\nftpd_banner=caf\xe9\n")
    with pytest.raises(ConfigError, match=":2: not valid UTF-8"):
        load_config(path)


def test_override_wins_over_file(conf):
    cfg, _ = load_config(conf("anon_root=/srv/a\nlisten_port=21\n"),
                         ["anon_root=/srv/b", "listen_port = 2121"])
    assert cfg.anon_root == "/srv/b"
    assert cfg.listen_port == 2121


def test_override_errors_name_the_dash_o_as_typed(conf):
    with pytest.raises(ConfigError) as e:
        load_config(conf("listen=NO\n"), ["write_enable=maybe"])
    assert str(e.value).startswith("-o write_enable=maybe: ")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["listen_port=21", "anon_rot=/srv"])
    assert str(e.value).startswith("-o anon_rot=/srv: unknown option 'anon_rot'")


def test_duplicate_in_file_warns_and_last_wins(conf):
    path = conf("listen_port=21\nlisten_port=2121\n")
    cfg, warnings = load_config(path)
    assert cfg.listen_port == 2121
    assert warnings == [f"{path}:2: option 'listen_port' is set again (first at {path}:1); "
                        "the last value wins"]


def test_override_of_file_value_is_not_a_duplicate(conf):
    _, warnings = load_config(conf("listen_port=21\n"), ["listen_port=2121"])
    assert warnings == []


@pytest.fixture
def unimplemented(monkeypatch):
    """Make `name` a recognised-but-unimplemented tunable for one test: every vsftpd
    option is honoured or refused (issue 12), so the warning path needs a stand-in."""
    def mark(name: str) -> None:
        monkeypatch.setitem(TUNABLES, name, dataclasses.replace(TUNABLES[name], implemented=False))
    return mark


def test_unimplemented_option_warns_only_when_not_default(conf, unimplemented):
    unimplemented("no_log_lock")
    unimplemented("wc_logs_enable")
    path = conf("listen=NO\nlisten_ipv6=YES\nno_log_lock=YES\n")
    _, warnings = load_config(path)
    assert warnings == [f"{path}:3: option 'no_log_lock' is recognised but not implemented yet; "
                        "it has no effect"]
    _, warnings = load_config(conf("no_log_lock=NO\nwc_logs_enable=NO\n"))
    assert warnings == []


def test_unimplemented_option_via_override_warns(conf, unimplemented):
    unimplemented("seccomp_sandbox")
    _, warnings = load_config(None, ["listen_port=2121", "seccomp_sandbox=NO"])
    assert warnings == ["-o seccomp_sandbox=NO: option 'seccomp_sandbox' is recognised but not implemented yet; "
                        "it has no effect"]


def test_pasv_port_order(conf):
    path = conf("pasv_max_port=40000\nlisten=YES\npasv_min_port=50000\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: pasv_min_port (50000) is above pasv_max_port")
    with pytest.raises(ConfigError, match=r"^-o pasv_max_port=3000: pasv_min_port \(5001, the default\)"):
        load_config(None, ["pasv_max_port=3000"])


def test_pasv_port_zero_means_any(conf):
    cfg, _ = load_config(conf("pasv_min_port=50000\npasv_max_port=0\n"))
    assert (cfg.pasv_min_port, cfg.pasv_max_port) == (50000, 0)


def test_listen_and_listen_ipv6(conf):
    path = conf("listen_ipv6=YES\n")  # listen defaults to YES, as in vsftpd's code
    with pytest.raises(ConfigError, match="run two copies") as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:1: ")
    cfg, _ = load_config(path, ["listen=NO"])
    assert cfg.listen_ipv6 is True and cfg.listen is False


@pytest.mark.parametrize("name", ["listen_port", "pasv_min_port", "pasv_max_port", "ftp_data_port"])
def test_port_out_of_range(conf, name):
    path = conf(f"listen=YES\n{name}=65536\n")
    with pytest.raises(ConfigError, match="not a port number") as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:2: ")


def test_config_is_immutable():
    cfg = default_config()
    with pytest.raises(AttributeError):
        cfg.anon_root = "/tmp"
    with pytest.raises(AttributeError):
        cfg.explicit = frozenset()
    with pytest.raises(AttributeError):
        del cfg.anon_root
    with pytest.raises(AttributeError, match="did you mean 'anon_root'"):
        _ = cfg.anon_rot
    with pytest.raises(TypeError):
        cfg._values["anon_root"] = "/tmp"  # the mapping is read-only too


def test_replace():
    cfg = default_config(anon_root="/srv/ftp")
    new = cfg.replace(listen_port=2121, write_enable=True)
    assert (new.listen_port, new.write_enable, new.anon_root) == (2121, True, "/srv/ftp")
    assert (cfg.listen_port, cfg.write_enable) == (21, False)  # original untouched
    assert new.explicit == {"anon_root", "listen_port", "write_enable"}
    assert new != cfg and new == default_config(anon_root="/srv/ftp", listen_port=2121,
                                                write_enable=True)
    with pytest.raises(ConfigError, match="did you mean 'listen_port'"):
        cfg.replace(listen_prot=21)


@pytest.mark.parametrize("changes", [
    {"listen": "YES"}, {"listen_port": True}, {"listen_port": -1}, {"anon_root": 5},
])
def test_replace_and_default_config_check_types(changes):
    with pytest.raises(ConfigError, match="takes a"):
        default_config(**changes)
    with pytest.raises(ConfigError, match="takes a"):
        default_config().replace(**changes)


def test_default_config_unknown_name():
    with pytest.raises(ConfigError, match="unknown option 'no_such'"):
        default_config(no_such=1)


def test_copy_and_hash():
    cfg = default_config(anon_root="/srv")
    assert copy.deepcopy(cfg) == cfg and hash(copy.copy(cfg)) == hash(cfg)
    assert isinstance(copy.copy(cfg), Config)


DEBIAN_CONF = """\
# Example config file /etc/vsftpd.conf
#
# Run standalone?  vsftpd can run either from an inetd or as a standalone
# daemon started from an initscript.
listen=NO
#
# This directive enables listening on IPv6 sockets.
listen_ipv6=YES
#
# Allow anonymous FTP? (Disabled by default).
anonymous_enable=NO
#
# Uncomment this to allow local users to log in.
local_enable=YES
#
# Uncomment this to enable any form of FTP write command.
#write_enable=YES
#
#local_umask=022
dirmessage_enable=YES
#
use_localtime=YES
#
# Activate logging of uploads/downloads.
xferlog_enable=YES
#
# Make sure PORT transfer connections originate from port 20 (ftp-data).
connect_from_port_20=YES
#
#chroot_local_user=YES
#
secure_chroot_dir=/var/run/vsftpd/empty
#
pam_service_name=vsftpd
#
rsa_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem
rsa_private_key_file=/etc/ssl/private/ssl-cert-snakeoil.key
ssl_enable=NO
#
# Uncomment this to indicate that vsftpd use a utf8 filesystem.
#utf8_filesystem=YES
"""


def test_debian_default_conf_loads(conf):
    path = conf(DEBIAN_CONF)
    cfg, warnings = load_config(path)
    assert (cfg.listen, cfg.listen_ipv6, cfg.anonymous_enable, cfg.local_enable) == (
        False, True, False, True)
    assert cfg.secure_chroot_dir == "/var/run/vsftpd/empty"
    assert cfg.pam_service_name == "vsftpd"
    assert cfg.rsa_private_key_file == "/etc/ssl/private/ssl-cert-snakeoil.key"
    assert cfg.ssl_enable is False
    warned = sorted(w.split("'")[1] for w in warnings)
    # ssl_enable=NO is the default: no warning for it.
    assert warned == []  # every option of Debian's stock file is implemented
    assert all(w.startswith(f"{path}:") for w in warnings)


# ---------------------------------------------------------------- check-config = serve's checks

def _bad_configs(tmp):
    """(name, lines, expected message, the option whose line it is reported at)."""
    (tmp / "bad.db").write_text("# users\nalice\n")
    return [
        ("anon_root missing", [f"anon_root={tmp}/nope"], f"anon_root: {tmp}/nope is not a directory",
         "anon_root"),
        ("cert missing", ["ssl_enable=YES", f"rsa_cert_file={tmp}/no.pem"],
         f"rsa_cert_file/rsa_private_key_file: cannot load {tmp}/no.pem", "rsa_cert_file"),
        ("user db malformed", [f"user_db_file={tmp}/bad.db", f"local_root={tmp}"],
         f"user_db_file: {tmp}/bad.db:2: user alice: missing password hash", "user_db_file"),
        ("user db missing", [f"user_db_file={tmp}/none.db"],
         f"user_db_file: cannot read {tmp}/none.db: No such file or directory", "user_db_file"),
        ("banner missing", [f"banner_file={tmp}/banner"],
         f"banner_file: cannot read {tmp}/banner: No such file or directory", "banner_file"),
        ("log dir missing", [f"vsftpd_log_file={tmp}/no/dir.log", "xferlog_enable=YES"],
         f"vsftpd_log_file: cannot open {tmp}/no/dir.log: No such file or directory", "vsftpd_log_file"),
        ("implicit port without TLS", ["implicit_ssl_port=9990"], "implicit_ssl_port: needs ssl_enable=YES",
         "implicit_ssl_port"),
        ("inetd in pooled mode", ["listen=NO"],
         "listen=NO (inetd mode) needs isolated mode: start as root without pooled=YES", "listen"),
    ]


def _write(tmp, name, lines, pooled=True):
    (tmp / "anon").mkdir(exist_ok=True)
    path = tmp / (name.replace(" ", "_") + ".conf")
    head = ["listen_address=127.0.0.1", f"anon_root={tmp}/anon"] + (["pooled=YES"] if pooled else [])
    path.write_text("\n".join(["# test"] + head + lines) + "\n")
    return path


def _line_of(path, option):
    """FILE:LINE of the last line setting `option`."""
    numbers = [i for i, line in enumerate(path.read_text().split("\n"), 1) if line.startswith(option + "=")]
    return f"{path}:{numbers[-1]}"


def _errors(main, capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("ftpwarden: ")]


@pytest.fixture
def no_listen(monkeypatch):
    """cli.main, with serve stopped where it would bind: getting there fails the test."""
    from ftpwarden import cli

    def refuse(*_args):
        raise AssertionError("serve went past its checks")
    monkeypatch.setattr(cli, "_listen", refuse)
    return cli.main


@pytest.mark.parametrize("case", range(8))
def test_check_config_reports_what_serve_refuses(tmp_path, capsys, no_listen, case):
    name, lines, message, option = _bad_configs(tmp_path)[case]
    path = _write(tmp_path, name, lines)
    code, checked = _errors(no_listen, capsys, "check-config", str(path))
    assert code == 2
    assert len(checked) == 1 and checked[0].startswith(f"ftpwarden: {_line_of(path, option)}: {message}")
    assert _errors(no_listen, capsys, "serve", "--config", str(path)) == (2, checked)


def test_check_config_reports_every_problem_at_once(tmp_path, capsys, no_listen):
    table = _bad_configs(tmp_path)
    lines = [line for i in (0, 3, 4) for line in table[i][1]]
    path = _write(tmp_path, "several", lines)
    code, checked = _errors(no_listen, capsys, "check-config", str(path))
    assert code == 2
    assert [line.split(": ")[1] for line in checked] == [_line_of(path, o) for o in ("anon_root", "user_db_file",
                                                                              "banner_file")]
    assert _errors(no_listen, capsys, "serve", "--config", str(path)) == (2, checked)


def test_check_config_collects_bad_lines_too(tmp_path, capsys):
    from ftpwarden.cli import main
    path = tmp_path / "c.conf"
    path.write_text("listen_prot=21\nwrite_enable=maybe\nlisten=YES\n")
    code, checked = _errors(main, capsys, "check-config", str(path))
    assert code == 2 and [line.split(": ")[1] for line in checked] == [f"{path}:1", f"{path}:2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode (nopriv_user, secure_chroot_dir) needs root")
def test_check_config_reports_what_isolated_serve_refuses(tmp_path, capsys, no_listen):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    full = tmp_path / "full"
    full.mkdir(mode=0o755)
    (full / "x").write_text("x")
    cases = [
        (["nopriv_user=nosuchuser_ftpw", f"secure_chroot_dir={empty}"],
         "nopriv_user: no such system user 'nosuchuser_ftpw'", "nopriv_user"),
        ([f"secure_chroot_dir={full}"],
         f"secure_chroot_dir: {full} must be empty, owned by root and not writable by others",
         "secure_chroot_dir"),
        ([f"secure_chroot_dir={tmp_path}/none"],
         f"secure_chroot_dir: {tmp_path}/none must be an existing empty directory", "secure_chroot_dir"),
    ]
    for i, (lines, message, option) in enumerate(cases):
        path = _write(tmp_path, f"iso{i}", lines, pooled=False)
        code, checked = _errors(no_listen, capsys, "check-config", str(path))
        assert (code, checked) == (2, [f"ftpwarden: {_line_of(path, option)}: {message}"])
        assert _errors(no_listen, capsys, "serve", "--config", str(path)) == (2, checked)
