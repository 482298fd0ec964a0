"""Log line formats (xferlog, vsftpd format, syslog, JSON) and the sinks, read back
by parsers written here from the format descriptions, not from our code."""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import socket
import stat
import time

import pytest

from ftpwarden.logs.configured import ConfiguredEventLog, LogFileError, build_event_log
from ftpwarden.logs.events import EventLog, TransferRecord
from ftpwarden.logs.protolog import command_text, reply_texts, transfer_tail, vsftpd_line
from ftpwarden.logs.sinks import FileSink, JsonLinesSink, SyslogSink, syslog_datagram
from ftpwarden.logs.xferlog import log_date, xferlog_line
from ftpwarden.policy.config import load_config

# Sat Nov  7 02:26:16 2026 UTC: a one-digit day shows the padding.
NOW = calendar.timegm((2026, 11, 7, 2, 26, 16, 0, 0, 0))

# xferlog(5): 5 date tokens, then 13 fields separated by single spaces.
XFERLOG = re.compile(
    r"^(?P<date>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}) (?P<secs>\d+) (?P<host>\S+) (?P<size>\d+) "
    r"(?P<file>\S+) (?P<type>[ab]) (?P<action>[_CUT]) (?P<dir>[oid]) (?P<mode>[agr]) (?P<user>\S+) "
    r"(?P<service>\S+) (?P<auth>[01]) (?P<authid>\S+) (?P<status>[ci])$")

VSFTPD = re.compile(
    r'^(?P<date>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}) \[pid (?P<pid>\d+)\] '
    r'(?:\[(?P<user>[^\]]*)\] )?(?P<kind>[A-Za-z ]+): Client "(?P<ip>[^"]*)"'
    r'(?:, "(?P<detail>.*)")?(?:, (?P<bytes>\d+) bytes)?(?:, (?P<rate>\d+\.\d\d)Kbyte/sec)?$')

SYSLOG = re.compile(r"^<(?P<pri>\d+)>(?P<stamp>\w{3} [ \d]\d \d\d:\d\d:\d\d) (?P<ident>[^\[\s]+)"
                    r"\[(?P<pid>\d+)\]: (?P<msg>.*)$", re.S)


def record(**kw) -> TransferRecord:
    base = dict(session="1.1", remote_ip="192.0.2.7", user="ftp", user_class="anonymous",
                anon_password="me@example.org", path="/pub/file.txt",
                direction="o", ascii=False, size=12345, seconds=2.4, complete=True,
                started_at=NOW - 2.4)
    base.update(kw)
    return TransferRecord(**base)


def parse_xferlog(line: str) -> dict[str, str]:
    assert "\n" not in line
    assert len(line.split()) == 18, line
    m = XFERLOG.match(line)
    assert m, line
    return m.groupdict()


# ---------------------------------------------------------------- xferlog

def test_xferlog_anonymous_download_complete():
    line = xferlog_line(record(), NOW, localtime=False)
    f = parse_xferlog(line)
    assert line.startswith("Sat Nov  7 02:26:16 2026 ")  # day padded with a space, as ctime
    assert time.strptime(" ".join(f["date"].split()), "%a %b %d %H:%M:%S %Y")[:6] == (2026, 11, 7, 2, 26, 16)
    assert (f["secs"], f["host"], f["size"], f["file"]) == ("2", "192.0.2.7", "12345", "/pub/file.txt")
    assert (f["type"], f["action"], f["dir"], f["mode"]) == ("b", "_", "o", "a")
    assert f["user"] == "me@example.org"  # anonymous: the e-mail given as password
    assert (f["service"], f["auth"], f["authid"], f["status"]) == ("ftp", "0", "*", "c")


def test_xferlog_guest_upload_interrupted():
    rec = record(user="alice", user_class="guest", anon_password="", direction="i", ascii=True,
                 size=4096, complete=False, path="/up/part.bin")
    f = parse_xferlog(xferlog_line(rec, NOW, localtime=False))
    assert (f["type"], f["dir"], f["mode"], f["user"], f["size"], f["status"]) == (
        "a", "i", "g", "alice", "4096", "i")


@pytest.mark.parametrize("user_class, mode, who", [("real", "r", "bob"), ("guest", "g", "bob"),
                                                  ("anonymous", "a", "x@y")])
def test_xferlog_access_mode_and_user(user_class, mode, who):
    f = parse_xferlog(xferlog_line(record(user="bob", user_class=user_class, anon_password="x@y"),
                                   NOW, localtime=False))
    assert (f["mode"], f["user"]) == (mode, who)


@pytest.mark.parametrize("seconds, shown", [(0.0, "1"), (0.2, "1"), (1.4, "1"), (3.6, "4"), (61, "61")])
def test_xferlog_transfer_time_whole_seconds_at_least_one(seconds, shown):
    assert parse_xferlog(xferlog_line(record(seconds=seconds), NOW, localtime=False))["secs"] == shown


def test_xferlog_names_cannot_break_fields_or_lines():
    rec = record(path="/a dir/evil\nSat Nov  7 00:00:00 2026 1 6.6.6.6 1 /x b _ o a y ftp 0 * c",
                 anon_password="two words")
    f = parse_xferlog(xferlog_line(rec, NOW, localtime=False))
    assert f["file"].startswith("/a_dir/evil?Sat_Nov__7")  # spaces -> '_', newline -> '?'
    assert f["user"] == "two_words"
    assert f["host"] == "192.0.2.7" and f["status"] == "c"


def test_xferlog_empty_anonymous_password_keeps_the_field():
    f = parse_xferlog(xferlog_line(record(anon_password=""), NOW, localtime=False))
    assert f["user"] == "*"


def test_log_date_local_time_matches_ctime_layout():
    now = time.time()
    assert log_date(now, localtime=True) == time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(now))
    assert log_date(NOW, localtime=False) == "Sat Nov  7 02:26:16 2026"
    assert log_date(NOW + 5 * 86400, localtime=False) == "Thu Nov 12 02:26:16 2026"


# ---------------------------------------------------------------- vsftpd format

def test_vsftpd_line_login_exact():
    line = vsftpd_line(NOW, 1234, "alice", "OK LOGIN", "127.0.0.1", localtime=False)
    assert line == 'Sat Nov  7 02:26:16 2026 [pid 1234] [alice] OK LOGIN: Client "127.0.0.1"'


def test_vsftpd_line_download_parses():
    line = vsftpd_line(NOW, 42, "bob", "OK DOWNLOAD", "192.0.2.7", "/pub/f",
                       tail=transfer_tail(3482, 1.0), localtime=False)
    m = VSFTPD.match(line)
    assert m, line
    assert m.group("pid", "user", "kind", "ip", "detail", "bytes", "rate") == (
        "42", "bob", "OK DOWNLOAD", "192.0.2.7", "/pub/f", "3482", "3.40")


def test_vsftpd_line_without_user_and_detail():
    m = VSFTPD.match(vsftpd_line(NOW, 7, "", "CONNECT", "::1", localtime=False))
    assert m and m.group("user") is None and m.group("kind") == "CONNECT" and m.group("ip") == "::1"


def test_vsftpd_line_names_cannot_start_a_new_line():
    line = vsftpd_line(NOW, 7, "eve\n", "OK MKDIR", "10.0.0.1", "/x\r\nSat Nov  7 [pid 1] FAIL LOGIN",
                       localtime=False)
    assert "\n" not in line and "\r" not in line
    assert VSFTPD.match(line).group("user") == "eve?"


@pytest.mark.parametrize("size, seconds, tail", [
    (3482, 1.0, ", 3482 bytes, 3.40Kbyte/sec"),
    (1024, 0.0, ", 1024 bytes, 10.00Kbyte/sec"),  # no time measured: vsftpd takes 0.1 s
    (0, 0.5, ", 0.00Kbyte/sec"),                  # vsftpd leaves out "0 bytes"
])
def test_transfer_tail(size, seconds, tail):
    assert transfer_tail(size, seconds) == tail


@pytest.mark.parametrize("line", [
    b"PASS s3cret", b"pass s3cret", b"Pass s3cret", b"  PASS s3cret", b"PASS",
    b"\xff\xf4\xff\xf2PASS s3cret",   # Telnet IP/DM before the verb: the session strips them
    b"PA\xff\xffSS s3cret",           # not a command the session knows, masked all the same
    b"PASS\ts3cret", b"PASS s3cret\x00", b"PASS s3cret\rx",
])
def test_pass_is_always_masked(line):
    assert command_text(line) == "PASS <password>"


@pytest.mark.parametrize("line, shown", [
    (b"USER alice", "USER alice"),
    (b"RETR passport.pdf", "RETR passport.pdf"),
    (b"CWD a\x1b[31mb", "CWD a?[31mb"),
    (b"STOR caf\xc3\xa9.txt", "STOR café.txt"),
    (b"STOR bad\xff\xfe", "STOR bad\ufffd\ufffd"),
])
def test_other_commands_logged_as_sent(line, shown):
    assert command_text(line) == shown


def test_reply_texts_one_per_line():
    assert reply_texts(b"230 Login successful.\r\n") == ["230 Login successful."]
    assert reply_texts(b"211-Features:\r\n EPRT\r\n211 End\r\n") == ["211-Features:", " EPRT", "211 End"]


# ---------------------------------------------------------------- sinks

def test_file_sink_creates_0600_appends_and_reopens(tmp_path):
    path = tmp_path / "x.log"
    old = os.umask(0)
    try:
        sink = FileSink(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sink.write("one")
    os.rename(path, tmp_path / "x.log.1")
    sink.write("two")          # after the rename, before the HUP: still the old file
    sink.reopen()
    sink.write("three")
    assert (tmp_path / "x.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sink.close()
    sink.write("after close")  # dropped, no exception
    sink.reopen()
    assert path.read_text() == "three\n"


def test_file_sink_keeps_existing_content_and_mode(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("old\n")
    path.chmod(0o640)
    sink = FileSink(str(path))
    sink.write("new")
    sink.close()
    assert path.read_text() == "old\nnew\n" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_file_sink_reopen_failure_keeps_old_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    sink = FileSink(str(d / "x.log"))
    sink.write("a")
    os.rename(d, tmp_path / "moved")  # the directory is gone: reopen cannot create the file
    sink.reopen()
    sink.write("b")
    assert (tmp_path / "moved" / "x.log").read_text() == "a\nb\n"


def test_file_sink_open_error_raises(tmp_path):
    with pytest.raises(OSError):
        FileSink(str(tmp_path / "missing" / "x.log"))


def test_stdout_sink(capfd):
    sink = FileSink("-")
    sink.write("to stdout")
    sink.reopen()
    sink.close()
    assert capfd.readouterr().out == "to stdout\n"


def test_json_lines_sink(tmp_path):
    path = tmp_path / "e.json"
    sink = JsonLinesSink(str(path))
    sink.emit({"event": "x", "name": "caf\u00e9\n\udcff"})
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == {"event": "x", "name": "caf\u00e9\n\udcff"}


def _dgram_server(path: str) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    return srv


def test_syslog_datagram_rfc3164():
    data = syslog_datagram(11, 6, NOW, "ftpwarden", 99, 'OK LOGIN: Client "1.2.3.4"')
    m = SYSLOG.match(data.decode())
    assert m, data
    assert int(m.group("pri")) == 11 * 8 + 6 == 94
    t = time.localtime(NOW)
    assert m.group("stamp") == time.strftime("%b %e %H:%M:%S", t)
    assert (m.group("ident"), m.group("pid"), m.group("msg")) == ("ftpwarden", "99", 'OK LOGIN: Client "1.2.3.4"')


def test_syslog_sink_sends_drops_and_reconnects(tmp_path):
    path = str(tmp_path / "log")
    sink = SyslogSink(path)          # nothing listens yet: no error, messages dropped
    assert not sink.connected
    sink.send("lost")
    srv = _dgram_server(path)
    sink.send("hello", severity=4)   # the daemon appeared: connect on the way
    m = SYSLOG.match(srv.recv(65536).decode())
    assert m and m.group("msg") == "hello" and m.group("pri") == "92"
    assert int(m.group("pid")) == os.getpid()
    srv.close()
    os.unlink(path)
    sink.send("daemon gone")         # dropped, no exception
    srv = _dgram_server(path)        # the daemon restarted
    sink.send("back")
    assert SYSLOG.match(srv.recv(65536).decode()).group("msg") == "back"
    sink.close()
    srv.close()


# ---------------------------------------------------------------- which sink gets what

def _cfg(tmp_path, *overrides: str):
    base = [f"xferlog_file={tmp_path / 'xferlog'}", f"vsftpd_log_file={tmp_path / 'vsftpd.log'}"]
    cfg, _ = load_config(None, base + list(overrides))
    return cfg


def test_nothing_enabled_is_the_free_eventlog(tmp_path):
    log = build_event_log(_cfg(tmp_path))
    assert type(log) is EventLog
    assert not (tmp_path / "xferlog").exists() and not (tmp_path / "vsftpd.log").exists()


@pytest.mark.parametrize("opts, xferlog, vsftpd", [
    (["xferlog_enable=YES"], False, True),                              # vsftpd's default format
    (["xferlog_enable=YES", "xferlog_std_format=YES"], True, False),
    (["xferlog_enable=YES", "xferlog_std_format=YES", "dual_log_enable=YES"], True, True),
    (["dual_log_enable=YES"], True, True),
    (["xferlog_enable=YES", "syslog_enable=YES"], False, False),        # syslog instead of the file
    (["log_ftp_protocol=YES"], False, False),                           # needs a vsftpd-format log
])
def test_files_opened_as_vsftpd_does(tmp_path, opts, xferlog, vsftpd):
    opts = opts + [f"syslog_socket={tmp_path / 'nosock'}"]
    log = build_event_log(_cfg(tmp_path, *opts))
    assert (tmp_path / "xferlog").exists() == xferlog
    assert (tmp_path / "vsftpd.log").exists() == vsftpd
    log.close()


def test_unopenable_log_file_names_option_and_path(tmp_path):
    bad = tmp_path / "no" / "such" / "xferlog"
    with pytest.raises(LogFileError, match=f"^xferlog_file: cannot open {bad}: No such file or directory$"):
        build_event_log(_cfg(tmp_path, "xferlog_enable=YES", "xferlog_std_format=YES", f"xferlog_file={bad}"))
    with pytest.raises(LogFileError, match=r"^json_log_file: cannot open"):
        build_event_log(_cfg(tmp_path, f"json_log_file={bad}"))


def _session(log: EventLog) -> None:
    log.connect("9.1", "192.0.2.7")
    log.command("9.1", "192.0.2.7", "", b"USER alice")
    log.reply("9.1", "192.0.2.7", "alice", b"331 Please specify the password.\r\n")
    log.command("9.1", "192.0.2.7", "alice", b"PASS wr0ng-pw")
    log.login("9.1", "192.0.2.7", "alice", None, False, "wrong password")
    log.command("9.1", "192.0.2.7", "alice", b"pass s3cret-pw")
    log.login("9.1", "192.0.2.7", "alice", "guest", True)
    log.transfer(record(session="9.1", user="alice", user_class="guest", anon_password="", path="/up/a b",
                        direction="i", size=2048, seconds=0.5, complete=False))
    log.fs_change("9.1", "192.0.2.7", "alice", "RNTO", "/a", "/b", True)
    log.fs_change("9.1", "192.0.2.7", "alice", "MKD", "/d", "", False)
    log.disconnect("9.1", "192.0.2.7", "alice", "client closed")


def test_a_session_in_every_format(tmp_path):
    sock = str(tmp_path / "sock")
    srv = _dgram_server(sock)
    files = ConfiguredEventLog(xferlog=FileSink(str(tmp_path / "xferlog")),
                               vsftpd_log=FileSink(str(tmp_path / "vsftpd.log")),
                               json=JsonLinesSink(str(tmp_path / "e.json")),
                               protocol=True, clock=lambda: NOW)
    syslog = ConfiguredEventLog(syslog=SyslogSink(sock), protocol=True, clock=lambda: NOW)
    _session(files)
    _session(syslog)
    files.close()
    syslog.close()

    texts = {p: (tmp_path / p).read_text() for p in ("xferlog", "vsftpd.log", "e.json")}
    datagrams = []
    srv.setblocking(False)
    while True:
        try:
            datagrams.append(srv.recv(65536).decode())
        except BlockingIOError:
            break
    for text in [*texts.values(), *datagrams]:
        assert "s3cret-pw" not in text and "wr0ng-pw" not in text

    [x] = texts["xferlog"].splitlines()
    f = parse_xferlog(x)
    assert (f["file"], f["dir"], f["mode"], f["user"], f["size"], f["status"]) == (
        "/up/a_b", "i", "g", "alice", "2048", "i")

    got = [VSFTPD.match(line) for line in texts["vsftpd.log"].splitlines()]
    assert all(got), texts["vsftpd.log"]
    assert [(m["user"], m["kind"], m["detail"]) for m in got] == [
        (None, "CONNECT", None),
        (None, "FTP command", "USER alice"),
        ("alice", "FTP response", "331 Please specify the password."),
        ("alice", "FTP command", "PASS <password>"),
        ("alice", "FAIL LOGIN", None),
        ("alice", "FTP command", "PASS <password>"),
        ("alice", "OK LOGIN", None),
        ("alice", "FAIL UPLOAD", "/up/a b"),
        ("alice", "OK RENAME", "/a /b"),
        ("alice", "FAIL MKDIR", "/d"),
    ]
    assert {m["pid"] for m in got} == {str(os.getpid())}
    assert (got[7]["bytes"], got[7]["rate"]) == ("2048", "4.00")

    syslog_msgs = [SYSLOG.match(d) for d in datagrams]
    assert all(syslog_msgs) and len(syslog_msgs) == len(got)
    assert [m["msg"] for m in syslog_msgs] == [line.split("] ", 1)[1] for line in texts["vsftpd.log"].splitlines()]
    assert [m["pri"] for m in syslog_msgs if "FAIL LOGIN" in m["msg"]] == ["92"]   # LOG_FTP | LOG_WARNING
    assert {m["pri"] for m in syslog_msgs if "FAIL LOGIN" not in m["msg"]} == {"94"}  # LOG_FTP | LOG_INFO

    events = [json.loads(line) for line in texts["e.json"].splitlines()]
    assert [e["event"] for e in events] == ["connect", "command", "command", "login", "command", "login",
                                            "transfer_end", "fs_change", "fs_change", "disconnect"]
    assert all(e["time"] == "2026-11-07T02:26:16.000Z" and e["session"] == "9.1" for e in events)
    assert [e["command"] for e in events if e["event"] == "command"] == [
        "USER alice", "PASS <password>", "PASS <password>"]
    fail, ok = [e for e in events if e["event"] == "login"]
    assert (fail["ok"], fail["reason"], ok["ok"], ok["user_class"]) == (False, "wrong password", True, "guest")
    assert "reason" not in ok
    t = events[6]
    assert (t["direction"], t["bytes"], t["duration_ms"], t["rate"], t["complete"], t["path"]) == (
        "upload", 2048, 500, 4096, False, "/up/a b")
    assert events[7]["target"] == "/b" and events[-1]["reason"] == "client closed"


def test_transfer_start_is_json_only(tmp_path):
    log = ConfiguredEventLog(vsftpd_log=FileSink(str(tmp_path / "v.log")),
                             json=JsonLinesSink(str(tmp_path / "e.json")), clock=lambda: NOW)
    log.transfer_start("9.1", "192.0.2.7", "alice", "/up/x", "i")
    log.close()
    assert (tmp_path / "v.log").read_text() == ""
    [e] = map(json.loads, (tmp_path / "e.json").read_text().splitlines())
    assert (e["event"], e["path"], e["direction"], e["user"]) == ("transfer_start", "/up/x", "upload", "alice")


def test_protocol_lines_only_with_log_ftp_protocol(tmp_path):
    log = ConfiguredEventLog(vsftpd_log=FileSink(str(tmp_path / "v.log")), clock=lambda: NOW)
    _session(log)
    log.close()
    kinds = [VSFTPD.match(line)["kind"] for line in (tmp_path / "v.log").read_text().splitlines()]
    assert kinds == ["CONNECT", "FAIL LOGIN", "OK LOGIN", "FAIL UPLOAD", "OK RENAME", "FAIL MKDIR"]


def test_events_never_raise(caplog):
    class Broken:
        def write(self, *args):
            raise RuntimeError("sink bug")

        emit = send = reopen = close = write

    log = ConfiguredEventLog(xferlog=Broken(), vsftpd_log=Broken(), json=Broken(), protocol=True)
    with caplog.at_level(logging.ERROR, logger="ftpwarden.logs"):
        _session(log)  # every call logs the bug and returns
        log.reopen()
    logged = [r for r in caplog.records if r.name == "ftpwarden.logs"]
    assert [r.getMessage() for r in logged] == [f"logging {event} failed" for event in (
        "connect", "command", "reply", "command", "login", "command", "login", "transfer", "fs_change", "fs_change",
        "disconnect", "reopen")]
    assert all(r.exc_info and repr(r.exc_info[1]) == "RuntimeError('sink bug')" for r in logged)
