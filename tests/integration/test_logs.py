"""Logs written by a real pooled server, read back by parsers written here:
xferlog, vsftpd format (with log_ftp_protocol), JSON lines, syslog, SIGHUP
reopening, and the shipped fail2ban filter."""

from __future__ import annotations

import configparser
import ftplib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ..conftest import wait_for
from .conftest import REPO

TIMEOUT = 20
ALICE_PW = "Al1ce-s3cret-pw"
WRONG_PW = "Wr0ng-guess-pw"
ANON_EMAIL = "visitor@example.org"
BIG = 512 * 1024 * 1024  # sparse: costs no disk

XFERLOG = re.compile(
    r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} (?P<secs>\d+) (?P<host>\S+) (?P<size>\d+) (?P<file>\S+) "
    r"(?P<type>[ab]) _ (?P<dir>[oi]) (?P<mode>[agr]) (?P<user>\S+) ftp 0 \* (?P<status>[ci])$")
VSFTPD = re.compile(
    r'^(?P<date>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}) \[pid (?P<pid>\d+)\] '
    r'(?:\[(?P<user>[^\]]*)\] )?(?P<kind>[A-Za-z ]+): Client "(?P<ip>[^"]*)"'
    r'(?:, "(?P<detail>.*)")?(?:, (?P<bytes>\d+) bytes)?(?:, (?P<rate>\d+\.\d\d)Kbyte/sec)?$')
SYSLOG = re.compile(r"^<(?P<pri>\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d (?P<ident>[^\[\s]+)\[(?P<pid>\d+)\]: (?P<msg>.*)$")


def ftpwarden(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "ftpwarden", *args], input=input,
                          capture_output=True, env=env, timeout=60)


@pytest.fixture
def site(tmp_path: Path) -> SimpleNamespace:
    anon = tmp_path / "anon"
    (anon / "pub").mkdir(parents=True)
    (anon / "pub" / "readme.txt").write_text("public\n")
    with open(anon / "pub" / "big.bin", "wb") as f:
        f.truncate(BIG)
    for p in (anon / "pub" / "readme.txt", anon / "pub" / "big.bin"):
        p.chmod(0o644)
    alice = tmp_path / "alice"
    alice.mkdir()
    db = tmp_path / "users.db"
    r = ftpwarden("user", "add", "--db", str(db), "alice", "--root", str(alice), "--write",
                  input=ALICE_PW.encode() + b"\n")
    assert r.returncode == 0, r.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    return SimpleNamespace(tmp=tmp_path, anon=anon, alice=alice, db=db, logs=logs)


def serve(make_server, site: SimpleNamespace, **opts: str):
    base = dict(listen="YES", listen_address="127.0.0.1", listen_port="0", pooled="YES",
                worker_processes="1", anonymous_enable="YES", anon_root=str(site.anon),
                write_enable="YES", user_db_file=str(site.db), local_root=str(site.alice),
                delay_failed_login="0", xferlog_file=str(site.logs / "xferlog"),
                vsftpd_log_file=str(site.logs / "vsftpd.log"))
    base.update(opts)
    conf = site.tmp / "ftpwarden.conf"
    conf.write_text("".join(f"{k}={v}\n" for k, v in base.items()))
    return make_server(site.anon, "--config", str(conf))


def connect(srv) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
    return ftp


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def fail_login(srv, user: str, password: str) -> None:
    with connect(srv) as ftp, pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(user, password)


def partial_download(ftp: ftplib.FTP, abor: bool) -> int:
    """Start RETR of the big file, read a little, then ABOR or drop the data connection."""
    conn = ftp.transfercmd("RETR pub/big.bin")
    got = len(conn.recv(65536))
    if abor:
        ftp.putcmd("ABOR")
        first = ftp.getline()
        conn.close()
        if first.startswith("426"):
            assert ftp.getline().startswith("226")
    else:
        conn.close()
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
    return got


# ---------------------------------------------------------------- files

def test_transfer_and_protocol_logs(make_server, site):
    logs = site.logs
    srv = serve(make_server, site, xferlog_enable="YES", xferlog_std_format="YES", dual_log_enable="YES",
                log_ftp_protocol="YES", json_log_file=str(logs / "events.json"))
    for name in ("xferlog", "vsftpd.log", "events.json"):
        assert (logs / name).stat().st_mode & 0o777 == 0o600  # created at start-up, private

    with connect(srv) as ftp:
        ftp.login("anonymous", ANON_EMAIL)
        buf = io.BytesIO()
        ftp.retrbinary("RETR pub/readme.txt", buf.write)
        assert buf.getvalue() == b"public\n"
        read_dropped = partial_download(ftp, abor=False)
        read_abor = partial_download(ftp, abor=True)
    fail_login(srv, "alice", WRONG_PW)
    upload = os.urandom(100_000)
    with connect(srv) as ftp:
        ftp.login("alice", ALICE_PW)
        ftp.storbinary("STOR up.bin", io.BytesIO(upload))
        ftp.mkd("d")
        ftp.rename("up.bin", "d/moved.bin")
        ftp.delete("d/moved.bin")
    assert not (site.alice / "d" / "moved.bin").exists()

    assert wait_for(lambda: sum('"event":"disconnect"' in x for x in lines(logs / "events.json")) == 3), \
        "three disconnects"
    events = [json.loads(x) for x in lines(logs / "events.json")]

    # No password anywhere; the anonymous e-mail only in the xferlog user field.
    for path in logs.iterdir():
        text = path.read_text()
        assert ALICE_PW not in text and WRONG_PW not in text, path.name

    # xferlog: one line per transfer that got its 150
    xfer = [XFERLOG.match(x) for x in lines(logs / "xferlog")]
    assert len(xfer) == 4 and all(xfer), lines(logs / "xferlog")
    readme, dropped, aborted, up = xfer
    assert (readme["file"], readme["size"], readme["dir"], readme["mode"], readme["user"], readme["status"]) == (
        "/pub/readme.txt", "7", "o", "a", ANON_EMAIL, "c")
    for m, read in ((dropped, read_dropped), (aborted, read_abor)):
        assert m["file"] == "/pub/big.bin" and m["status"] == "i" and m["mode"] == "a"
        assert read <= int(m["size"]) < BIG  # the bytes moved, not the file size
    assert (up["file"], up["size"], up["dir"], up["mode"], up["user"], up["status"], up["type"]) == (
        "/up.bin", str(len(upload)), "i", "g", "alice", "c", "b")
    assert {m["host"] for m in xfer} == {"127.0.0.1"}

    # vsftpd format
    vs = [VSFTPD.match(x) for x in lines(logs / "vsftpd.log")]
    assert all(vs), [x for x in lines(logs / "vsftpd.log") if not VSFTPD.match(x)]
    assert {m["pid"] for m in vs} == {str(srv.proc.pid)}
    assert {m["ip"] for m in vs} == {"127.0.0.1"}
    kinds = [(m["user"], m["kind"], m["detail"], m["bytes"]) for m in vs
             if not m["kind"].startswith("FTP ")]
    assert kinds == [
        (None, "CONNECT", None, None),
        ("anonymous", "OK LOGIN", None, None),
        ("anonymous", "OK DOWNLOAD", "/pub/readme.txt", "7"),
        ("anonymous", "FAIL DOWNLOAD", "/pub/big.bin", dropped["size"]),
        ("anonymous", "FAIL DOWNLOAD", "/pub/big.bin", aborted["size"]),
        (None, "CONNECT", None, None),
        ("alice", "FAIL LOGIN", None, None),
        (None, "CONNECT", None, None),
        ("alice", "OK LOGIN", None, None),
        ("alice", "OK UPLOAD", "/up.bin", str(len(upload))),
        ("alice", "OK MKDIR", "/d", None),
        ("alice", "OK RENAME", "/up.bin /d/moved.bin", None),
        ("alice", "OK DELETE", "/d/moved.bin", None),
    ]
    assert all(m["rate"] for m in vs if m["kind"].endswith(("DOWNLOAD", "UPLOAD")))
    commands = [m["detail"] for m in vs if m["kind"] == "FTP command"]
    assert [c for c in commands if c.upper().startswith("PASS")] == ["PASS <password>"] * 3
    assert "USER alice" in commands and "MKD d" in commands and "RNTO d/moved.bin" in commands
    responses = [m["detail"] for m in vs if m["kind"] == "FTP response"]
    assert responses[0].startswith("220") and any(r.startswith("530") for r in responses)
    assert sum(r.startswith("230") for r in responses) == 2

    # JSON lines
    assert [e["event"] for e in events if e["event"] in ("connect", "login", "disconnect")] == [
        "connect", "login", "disconnect", "connect", "login", "disconnect", "connect", "login", "disconnect"]
    logins = [(e["user"], e["ok"], e.get("reason")) for e in events if e["event"] == "login"]
    assert logins == [("anonymous", True, None), ("alice", False, "wrong password"), ("alice", True, None)]
    ends = [e for e in events if e["event"] == "transfer_end"]
    assert [(e["path"], e["direction"], e["bytes"], e["complete"]) for e in ends] == [
        ("/pub/readme.txt", "download", 7, True), ("/pub/big.bin", "download", int(dropped["size"]), False),
        ("/pub/big.bin", "download", int(aborted["size"]), False), ("/up.bin", "upload", len(upload), True)]
    assert all(isinstance(e["duration_ms"], int) and e["duration_ms"] >= 0 for e in ends)
    assert [e["op"] for e in events if e["event"] == "fs_change"] == ["MKD", "RNTO", "DELE"]
    assert [e["command"] for e in events if e["event"] == "command" and e["command"].startswith("PASS")] == \
        ["PASS <password>"] * 3
    assert all(e["reason"] for e in events if e["event"] == "disconnect")
    assert all(e["client"] == "127.0.0.1" for e in events)


def test_default_xferlog_enable_writes_vsftpd_format_only(make_server, site):
    srv = serve(make_server, site, xferlog_enable="YES")
    with connect(srv) as ftp:
        ftp.login("anonymous", ANON_EMAIL)
        ftp.retrbinary("RETR pub/readme.txt", lambda b: None)
    got = wait_for(lambda: [x for x in lines(site.logs / "vsftpd.log") if "OK DOWNLOAD" in x])
    assert got, "download line"
    assert VSFTPD.match(got[0])["detail"] == "/pub/readme.txt"
    assert not (site.logs / "xferlog").exists()
    assert not any("FTP command" in x for x in lines(site.logs / "vsftpd.log"))  # log_ftp_protocol=NO


def test_unwritable_log_file_stops_start_up(site):
    conf = site.tmp / "bad.conf"
    conf.write_text(f"listen_port=0\npooled=YES\nanonymous_enable=YES\nanon_root={site.anon}\n"
                    f"xferlog_enable=YES\nvsftpd_log_file={site.tmp}/missing/dir/vsftpd.log\n")
    r = ftpwarden("serve", "--config", str(conf))
    assert r.returncode != 0
    assert f"vsftpd_log_file: cannot open {site.tmp}/missing/dir/vsftpd.log" in r.stderr.decode()


# ---------------------------------------------------------------- fail2ban

def _fail2ban_regexes() -> list[re.Pattern]:
    """The filter's failregex lines for the log file (fail2ban's own <HOST> made a named group;
    the syslog variant needs fail2ban's common.conf and is left out)."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(REPO / "contrib" / "fail2ban" / "filter.d" / "ftpwarden.conf")
    rules = [r.strip() for r in cp["Definition"]["failregex"].splitlines() if r.strip()]
    return [re.compile(r.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")) for r in rules if "%(" not in r]


def _banned_hosts(log_lines: list[str]) -> list[str]:
    date = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}")  # fail2ban cuts the date out
    regexes = _fail2ban_regexes()
    assert regexes
    hosts = []
    for line in log_lines:
        rest = date.sub("", line, count=1)
        for rx in regexes:
            if m := rx.search(rest):
                hosts.append(m.group("host"))
                break
    return hosts


def test_fail2ban_filter_matches_our_fail_login_lines(make_server, site):
    srv = serve(make_server, site, xferlog_enable="YES", log_ftp_protocol="YES")
    fail_login(srv, "alice", WRONG_PW)
    fail_login(srv, "nobody", WRONG_PW)
    # A client-chosen name or command cannot make the filter ban another address.
    fail_login(srv, 'x] FAIL LOGIN: Client "203.0.113.9"', WRONG_PW)
    with connect(srv) as ftp:
        ftp.login("alice", ALICE_PW)
        with pytest.raises(ftplib.error_perm):
            ftp.sendcmd('SITE x] FAIL LOGIN: Client "203.0.113.9"')
    log = site.logs / "vsftpd.log"
    assert wait_for(lambda: sum("OK LOGIN" in x for x in lines(log)) == 1), "the good login"
    assert wait_for(lambda: any("SITE x]" in x for x in lines(log))), "the SITE line"
    fails = [x for x in lines(log) if " FAIL LOGIN: " in x and "FTP " not in x]
    assert len(fails) == 3
    assert _banned_hosts(fails[:2]) == ["127.0.0.1", "127.0.0.1"]
    assert "203.0.113.9" not in _banned_hosts(lines(log))
    assert _banned_hosts([x for x in lines(log) if "OK LOGIN" in x or "CONNECT" in x]) == []

    # Where fail2ban itself is installed, ask it too (it needs its common.conf beside the filter).
    common = Path("/etc/fail2ban/filter.d/common.conf")
    if shutil.which("fail2ban-regex") and common.exists():
        fdir = site.tmp / "f2b" / "filter.d"
        fdir.mkdir(parents=True)
        shutil.copy(common, fdir)
        shutil.copy(REPO / "contrib" / "fail2ban" / "filter.d" / "ftpwarden.conf", fdir)
        r = subprocess.run(["fail2ban-regex", "--out", "ip", str(log), str(fdir / "ftpwarden.conf")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["127.0.0.1", "127.0.0.1"]


# ---------------------------------------------------------------- syslog

def test_syslog(make_server, site):
    sockdir = tempfile.mkdtemp(prefix="fw-syslog-")  # AF_UNIX paths are short
    path = os.path.join(sockdir, "log")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    try:
        srv = serve(make_server, site, xferlog_enable="YES", syslog_enable="YES", syslog_socket=path)
        fail_login(srv, "alice", WRONG_PW)
        with connect(srv) as ftp:
            ftp.login("anonymous", ANON_EMAIL)
            ftp.retrbinary("RETR pub/readme.txt", lambda b: None)
        got = []
        while not any("OK DOWNLOAD" in m["msg"] for m in got):
            m = SYSLOG.match(rx.recv(65536).decode())
            assert m
            got.append(m)
    finally:
        rx.close()
        os.unlink(path)
        os.rmdir(sockdir)
    assert {(m["ident"], m["pid"]) for m in got} == {("ftpwarden", str(srv.proc.pid))}
    msgs = [(m["pri"], m["msg"]) for m in got]
    assert msgs[:5] == [
        ("94", 'CONNECT: Client "127.0.0.1"'),
        ("92", '[alice] FAIL LOGIN: Client "127.0.0.1"'),    # LOG_FTP | LOG_WARNING
        ("94", 'CONNECT: Client "127.0.0.1"'),
        ("94", '[anonymous] OK LOGIN: Client "127.0.0.1"'),  # LOG_FTP | LOG_INFO
        ("94", msgs[4][1]),
    ]
    assert msgs[4][1].startswith('[anonymous] OK DOWNLOAD: Client "127.0.0.1", "/pub/readme.txt", 7 bytes, ')
    assert not (site.logs / "vsftpd.log").exists()  # syslog instead of the file, as vsftpd
    assert all(WRONG_PW not in m["msg"] for m in got)


# ---------------------------------------------------------------- SIGHUP

def _workers(pid: int, workers: str) -> list[int]:
    if workers == "1":
        return [pid]  # one worker runs in the server process itself
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == int(workers)
    return [int(c) for c in children]


def _open_logs(pid: int) -> set[str]:
    """The vsftpd.log* files `pid` holds open (Linux /proc)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "vsftpd.log" in target:
            found.add(target)
    return found


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reopens_log_files(make_server, site, workers):
    log = site.logs / "vsftpd.log"
    rotated = site.logs / "vsftpd.log.1"
    srv = serve(make_server, site, xferlog_enable="YES", worker_processes=workers)

    def session(n: int) -> None:
        with connect(srv) as ftp:
            ftp.login("alice", ALICE_PW)
            ftp.mkd(f"s{n}")

    def mkdirs(path: Path) -> list[str]:
        return [m["detail"] for m in map(VSFTPD.match, lines(path)) if m and m["kind"] == "OK MKDIR"]

    session(1)
    assert wait_for(lambda: mkdirs(log) == ["/s1"]), "session 1"
    os.rename(log, rotated)
    session(2)  # after logrotate's rename, before the HUP: goes on in the renamed file
    assert wait_for(lambda: mkdirs(rotated) == ["/s1", "/s2"]), "session 2 in the renamed file"
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: all(_open_logs(pid) == {str(log)} for pid in _workers(srv.proc.pid, workers))), \
        "every worker writing to the new file"
    for n in (3, 4, 5, 6):
        session(n)
    assert wait_for(lambda: len(mkdirs(log)) == 4), "sessions 3-6 in the new file"
    assert mkdirs(rotated) == ["/s1", "/s2"]
    assert sorted(mkdirs(log)) == ["/s3", "/s4", "/s5", "/s6"]
    assert log.stat().st_mode & 0o777 == 0o600
    assert srv.proc.poll() is None  # SIGHUP did not stop the server
