"""The command line's messages: a mistake is one clear line and exit code 2, never a traceback.

`main([...])` runs in-process; serve is stopped just before it would listen
(`cli._listen` replaced), so no test here opens a socket.
"""

from __future__ import annotations

import os

import pytest

from ftpwarden import cli
from ftpwarden.cli import main


@pytest.fixture
def run(capsys):
    """main(argv) -> (code, stdout, stderr)."""
    def _run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return _run


@pytest.fixture
def listen_calls(monkeypatch):
    """serve stops where it would listen; the (addresses, port, workers) it asked for are kept."""
    calls: list[tuple[list, int, int]] = []

    def fake(addresses, cfg, workers):
        calls.append((addresses, int(cfg.listen_port), workers))
        raise cli.StartupError("stopped by the test before listening")
    monkeypatch.setattr(cli, "_listen", fake)
    return calls


def clean(err: str) -> str:
    """stderr without the root-only advice printed in quick mode with pooled=YES as root."""
    return "".join(line for line in err.splitlines(True) if "pooled=YES as root" not in line)


# pooled mode's own flags (--workers): as root, quick mode is isolated mode unless pooled=YES
POOLED = ("-o", "pooled=YES")


# ---------------------------------------------------------------- tunables

def test_tunables_unknown_name_is_a_message():
    code = main(["tunables", "nosuch"])
    assert code == 2


def test_tunables_messages(run):
    code, out, err = run("tunables", "nosuch")
    assert (code, out, err) == (2, "", "ftpwarden: tunables: unknown option 'nosuch'\n")
    code, _, err = run("tunables", "listen_prot")
    assert code == 2 and "did you mean 'listen_port'?" in err


@pytest.mark.parametrize("name", ["LISTEN_PORT", "Listen_Port", "listen_port"])
def test_tunables_names_match_whatever_the_case(run, name):
    code, out, err = run("tunables", name)
    assert code == 0 and err == ""
    assert "\nlisten_port " in out and "listen_address" not in out


# ---------------------------------------------------------------- serve's flags

@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port 70000: listen_port=70000 is not a port number (0-65535)"),
    (["--port", "-1"], "--port -1: 'listen_port' must be a non-negative number"),
    (["--port", "abc"], "--port abc: 'listen_port' must be a non-negative number"),
    (["--port", "99999999999999999999"], "--port 99999999999999999999: 'listen_port' is too large"),
    (["--workers", "-1"], "--workers -1: 'worker_processes' must be a non-negative number"),
    (["--workers", "100000"], "--workers 100000: worker_processes=100000: at most 256"),
    (["--bind", ","], "--bind ',': no address given"),
    (["--user", "alice"], "--user 'alice': expected NAME:PASSWORD"),
    (["--user", "a b:pw"], "--user 'a b': use 1-128 of"),
    (["--user", "al:pw", "--user", "al:pw2"], "--user al: given twice"),
    (["-o", "listen_port"], "-o listen_port: expected NAME=VALUE"),
    (["-o", "implicit_ssl_port=99999"], "-o implicit_ssl_port=99999: implicit_ssl_port=99999 is not a port"),
])
def test_bad_serve_flags_exit_2_with_a_message(run, listen_calls, tmp_path, argv, message):
    code, _, err = run("serve", str(tmp_path), *argv)
    assert code == 2
    assert clean(err).startswith(f"ftpwarden: {message}"), err
    assert "Traceback" not in err and listen_calls == []


@pytest.mark.parametrize("name", ["ftp", "FTP", "anonymous", "Anonymous"])
def test_quick_user_may_not_take_an_anonymous_name(run, listen_calls, tmp_path, name):
    code, _, err = run("serve", str(tmp_path), "--user", f"{name}:secretpw")
    assert code == 2
    assert f"--user {name}: {name!r} is reserved: it always logs in as anonymous" in err
    assert "secretpw" not in err and listen_calls == []


def test_usage_errors_return_2_instead_of_raising(run):
    code, _, err = run("serve", "--port")
    assert code == 2 and "expected one argument" in err
    assert run("--version")[0] == 0


def test_missing_directory(run, tmp_path):
    code, _, err = run("serve", str(tmp_path / "nope"))
    assert (code, clean(err)) == (2, f"ftpwarden: {tmp_path / 'nope'}: not a directory\n")


# ---------------------------------------------------------------- quick mode and -o

def test_dash_o_warnings_name_what_was_typed(run, listen_calls, tmp_path):
    _, _, err = run("serve", str(tmp_path), "-o", "ftpd_banner=hi")
    assert clean(err) == "ftpwarden: stopped by the test before listening\n"  # no warning at all
    _, _, err = run("serve", str(tmp_path), "-o", "ftpd_banner=hi", "-o", "ftpd_banner=ho")
    assert "warning: -o ftpd_banner=ho: option 'ftpd_banner' is set again (first at -o ftpd_banner=hi)" in err
    assert "-o:" not in err


def test_dash_o_listen_address_is_used_in_quick_mode(run, listen_calls, tmp_path):
    run("serve", str(tmp_path), "-o", "listen_address=127.0.0.2")
    assert listen_calls[-1][0] == [("127.0.0.2", None)]
    run("serve", str(tmp_path))
    assert listen_calls[-1][0][0] == ("127.0.0.1", None)  # quick mode's default: loopback


def test_port_flag_and_dash_o_must_agree(run, listen_calls, tmp_path):
    code, _, err = run("serve", str(tmp_path), "--port", "27082", "-o", "listen_port=27083")
    assert code == 2 and listen_calls == []
    assert clean(err) == ("ftpwarden: --port 27082: says listen_port=27082 but -o listen_port=27083 "
                          "says otherwise; give one of them\n")
    run("serve", str(tmp_path), "-o", "listen_port=27083")
    assert listen_calls[-1][1] == 27083  # -o alone is obeyed
    run("serve", str(tmp_path), "--port", "27082", "-o", "listen_port=27082")
    assert listen_calls[-1][1] == 27082  # both, agreeing
    run("serve", str(tmp_path), "--port", "021")
    assert listen_calls[-1][1] == 21  # a flag is decimal, not octal as a file's 021


def test_workers_flag_and_dash_o(run, listen_calls, tmp_path):
    run("serve", str(tmp_path), "-o", "worker_processes=3", *POOLED)
    assert listen_calls[-1][2] == 3
    code, _, err = run("serve", str(tmp_path), "--workers", "2", "-o", "worker_processes=3", *POOLED)
    assert code == 2 and "--workers 2: says worker_processes=2 but -o worker_processes=3" in err


def test_bind_flag_and_dash_o_listen_address_must_agree(run, listen_calls, tmp_path):
    code, _, err = run("serve", str(tmp_path), "--bind", "127.0.0.1", "-o", "listen_address=127.0.0.2")
    assert code == 2
    assert "--bind 127.0.0.1: -o listen_address=127.0.0.2 says otherwise; give one of them" in err


def test_flag_overrides_the_config_file(run, listen_calls, tmp_path):
    conf = tmp_path / "vsftpd.conf"
    conf.write_text(f"listen_port=2100\nanon_root={tmp_path}\npooled=YES\nlisten_address=127.0.0.1\n")
    run("serve", "--config", str(conf), "--port", "2200")
    assert listen_calls[-1][1] == 2200


def test_verbose_flag_builds_a_stderr_log(monkeypatch, tmp_path):
    """-v gives the session log even when the config asks for no log file."""
    from ftpwarden.logs.configured import ConfiguredEventLog
    from ftpwarden.policy.config import default_config
    events = cli._events(default_config(), verbose=True)
    assert isinstance(events, ConfiguredEventLog) and events.stderr is not None
    assert type(cli._events(default_config())) is not ConfiguredEventLog


def test_help_mentions_what_verbose_logs(run):
    code, out, _ = run("serve", "--help")
    assert code == 0 and "logins, transfers, deletes" in " ".join(out.split())


def test_no_traceback_for_fuzzed_arguments(run, listen_calls, tmp_path):
    """A few hundred odd argument lists: each ends with a code and, if 2, a message line."""
    import random
    rng = random.Random(1729)
    words = ["--port", "--workers", "--bind", "--user", "-o", "--config", "-v", "--write", "tunables",
             "check-config", "x", "", "-1", "0", "65536", "1e3", "::1", "[::1]", "a:b", "ftp:x", "=",
             "listen_port=", "listen_port=1", "ssl_enable=YES", "\x00", "é", str(tmp_path), "nosuch=1"]
    for _ in range(300):
        argv = [rng.choice(["serve", "check-config", "tunables"])] + rng.choices(words, k=rng.randint(0, 5))
        code, _, err = run(*argv)
        assert "Traceback" not in err, (argv, err)
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            assert err.strip(), argv


@pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode's checks apply when started as root")
def test_check_config_names_the_secure_chroot_dir_it_uses(run, tmp_path):
    conf = tmp_path / "vsftpd.conf"
    conf.write_text(f"anon_root={tmp_path}\n")
    code, out, err = run("check-config", str(conf))
    assert code == 0, err
    assert "serve would run isolated mode" in out
    assert "secure_chroot_dir: /run/ftpwarden/empty (the default: root's, empty, 0755" in out


# ---------------------------------------------------------------- quick mode as root

def test_quick_mode_as_root_runs_sessions_as_nopriv_user():
    """ftp_username and guest_username follow nopriv_user unless -o names them; a --user may
    write the top of the jail (anonymous never may: the broker's rule, checked at start)."""
    from ftpwarden.policy.config import load_config
    cfg, _ = load_config(None, ["nopriv_user=ftpsvc"], base=[("quick mode", "anonymous_enable=YES")])
    got = cli._quick_as_nopriv(cfg)
    assert (got.ftp_username, got.guest_username, got.allow_writeable_chroot) == ("ftpsvc", "ftpsvc", True)
    cfg, _ = load_config(None, ["ftp_username=ftp"])
    got = cli._quick_as_nopriv(cfg)
    assert (got.ftp_username, got.guest_username) == ("ftp", "nobody")


@pytest.fixture
def bound_listen(monkeypatch):
    """serve gets a real listening socket on a free loopback port (closed after the test)."""
    import socket
    socks: list[socket.socket] = []

    def fake(addresses, cfg, workers):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
        return [[s]]
    monkeypatch.setattr(cli, "_listen", fake)
    yield socks
    for s in socks:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="quick mode is isolated mode only when started as root")
@pytest.mark.parametrize("mode, message", [
    (0o700, "nobody cannot read it, and the sessions run as nobody jailed there"),
    (0o777, "nobody can write it, and anonymous sessions never run in a jail whose top they can write"),
])
def test_quick_mode_as_root_refuses_a_directory_nopriv_user_cannot_use(run, bound_listen, tmp_path, mode, message):
    root = tmp_path / "pub"
    root.mkdir()
    root.chmod(mode)
    code, out, err = run("serve", str(root))
    assert code == 2 and out == "", out
    assert err == f"ftpwarden: {root}: {message}" + err.split(message, 1)[1], err
    assert len(err.splitlines()) == 1 and bound_listen  # it got as far as the port, then stopped


@pytest.mark.skipif(os.geteuid() != 0, reason="quick mode is isolated mode only when started as root")
def test_quick_mode_as_root_says_workers_is_ignored(run, bound_listen, tmp_path):
    root = tmp_path / "pub"
    root.mkdir()
    root.chmod(0o777)  # stops start-up right after the port: nothing is served
    code, _, err = run("serve", str(root), "--workers", "2")
    assert code == 2
    assert err.startswith("warning: --workers 2: isolated mode (quick mode as root) has no worker processes; "
                          "ignored\n"), err
