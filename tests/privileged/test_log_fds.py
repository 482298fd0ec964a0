"""Issue 18 item 7: no process of an isolated session that runs as nopriv_user or
as the login user holds a log descriptor (it could clear O_APPEND and truncate
root's logs); the broker writes what they report, and checks it.  The zygote,
which forks them, holds no log descriptor either."""

from __future__ import annotations

import ftplib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpwarden.logs.events import EventLog, TransferRecord
from ftpwarden.priv.logrelay import ForwardingEventLog, LogRelay
from ftpwarden.priv.messages import (
    ChannelError,
    LogCommand,
    LogConnect,
    LogFsChange,
    LogNotice,
    LogReply,
    LogTransfer,
    LogTransferStart,
    decode,
)

from ..conftest import wait_for
from ..integration.conftest import ReusingFTP_TLS, client_ctx, start_server, stop_server
from .conftest import conf_at, ids, session_processes, tls_lines, write_conf, zygote

TIMEOUT = 30
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")


# ---------------------------------------------------------------- the census, from /proc

def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
    return out


def _unprivileged(srv) -> list[int]:
    return [pid for pid in session_processes(srv) if ids(pid)[0][0] != 0]


def _census(srv, logs: set[str], expected: int) -> dict[int, dict[int, str]]:
    """fds of every non-root session process, once `expected` of them run."""
    assert wait_for(lambda: len(_unprivileged(srv)) == expected, timeout=10), _unprivileged(srv)
    found = {pid: _fd_targets(pid) for pid in _unprivileged(srv)}
    for pid, fds in found.items():
        held = {fd: t for fd, t in fds.items() if t in logs}
        assert not held, f"pid {pid} (uid {ids(pid)[0][0]}) holds log files: {held}"
        assert fds.get(2) == "/dev/null", f"pid {pid}: fd 2 is {fds.get(2)}"
    return found


@pytest.fixture(params=["plain", "tls"])
def logged(request, tmp_path_factory, accounts):
    base = tmp_path_factory.mktemp("logfds")
    logs = base / "logs"
    logs.mkdir(mode=0o700)
    tls = request.param == "tls"
    # anonymous, in a root of our own: the shared test accounts' homes change under other tests
    anon = base / "anon"
    (anon / "incoming").mkdir(parents=True, mode=0o755)
    os.chmod(anon, 0o755)
    os.chown(anon / "incoming", accounts["ftp"].pw_uid, accounts["ftp"].pw_gid)
    (anon / "down.txt").write_text("logged download\n")
    os.chmod(anon / "down.txt", 0o644)
    conf = conf_at(base, "anonymous_enable=YES", f"anon_root={anon}", "no_anon_password=YES", "write_enable=YES",
                   "anon_upload_enable=YES", *(tls_lines(base) + ["allow_anon_ssl=YES"] if tls else []),
                   "xferlog_enable=YES", "dual_log_enable=YES", f"xferlog_file={logs / 'xferlog'}",
                   f"vsftpd_log_file={logs / 'vsftpd.log'}", f"json_log_file={logs / 'log.json'}",
                   "log_ftp_protocol=YES")
    srv = start_server(["-v", "--config", str(conf)], anon, base)
    srv.extra.update(tls=tls, logs=logs)
    yield srv
    stop_server(srv)


@as_root
def test_no_session_process_of_a_user_holds_a_log_fd(logged):
    logs = logged.extra["logs"]
    log_files = {str(logs / n) for n in ("xferlog", "vsftpd.log", "log.json")} | {str(logged.stderr_path)}
    ftp: ftplib.FTP = ReusingFTP_TLS(context=client_ctx(), timeout=TIMEOUT) if logged.extra["tls"] \
        else ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(logged.host, logged.port)
    _census(logged, log_files, 1)  # the pre-login worker
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.auth()
        _census(logged, log_files, 1)  # the same, now with the key
    ftp.login()
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    # plain: the post-login worker; TLS: that and the TLS helper
    _census(logged, log_files, 2 if logged.extra["tls"] else 1)
    ftp.storbinary("STOR incoming/up.bin", io.BytesIO(b"u" * 4321))
    got = io.BytesIO()
    ftp.retrbinary("RETR down.txt", got.write)
    assert got.getvalue() == b"logged download\n"
    _census(logged, log_files, 2 if logged.extra["tls"] else 1)
    files = set(log_files) - {str(logged.stderr_path)}  # its stderr is the server's
    assert not {fd: t for fd, t in _fd_targets(zygote(logged)).items() if t in files}, "the zygote holds a log file"
    ftp.quit()

    # the broker wrote every line the workers used to write
    def vsftpd_kinds() -> set[str]:
        text = (logs / "vsftpd.log").read_text()
        return {k for k in ("CONNECT", "OK LOGIN", "OK UPLOAD", "OK DOWNLOAD", "FTP command", "FTP response")
                if k in text}
    assert wait_for(lambda: len(vsftpd_kinds()) == 6), vsftpd_kinds()
    text = (logs / "vsftpd.log").read_text()
    assert '[anonymous] OK UPLOAD: Client "127.0.0.1", "/incoming/up.bin", 4321 bytes' in text
    assert 'FTP command: Client "127.0.0.1", "USER anonymous"' in text
    assert len(set(re.findall(r"\[pid (\d+)\]", text))) == 1  # one writer for the session: the broker
    xfer = [line.split() for line in (logs / "xferlog").read_text().splitlines()]
    assert sorted((f[7], f[11], f[12]) for f in xfer) == [("16", "o", "a"), ("4321", "i", "a")]
    def json_events() -> list[dict]:
        return [json.loads(line) for line in (logs / "log.json").read_text().splitlines()]
    assert wait_for(lambda: json_events()[-1]["event"] == "disconnect")  # the worker's last word
    events = json_events()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connect" and "transfer_end" in kinds and kinds[-1] == "disconnect", kinds
    assert kinds.count("disconnect") == 1, kinds  # the handover to the post-login worker is not one
    assert [(e["user"], e["ok"], e["user_class"]) for e in events if e["event"] == "login"] == \
        [("anonymous", True, "anonymous")]
    assert len({e["session"] for e in events}) == 1  # one session id, the broker's
    assert {e["client"] for e in events} == {"127.0.0.1"}
    # -v: the vsftpd-format lines on the broker's stderr
    assert wait_for(lambda: "OK DOWNLOAD" in logged.stderr())


def _connected_to(inode: int) -> set[int]:
    """Pids holding a unix socket whose peer is socket `inode` (ss -x shows peers)."""
    out = subprocess.run(["ss", "-x", "-a", "-p"], capture_output=True, text=True, timeout=10).stdout
    pids = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) > 7 and f[7] == str(inode):
            pids.update(int(p) for p in re.findall(r"pid=(\d+)", line))
    return pids


@as_root
@pytest.mark.skipif(not shutil.which("ss"), reason="iproute2's ss lists unix socket peers")
def test_workers_hold_no_syslog_socket(tmp_path_factory, accounts):
    """A connected syslog socket could only add lines, never truncate: still, a
    worker holds none (it could forge lines with any priority); the broker sends."""
    base = tmp_path_factory.mktemp("logsys")
    sockdir = tempfile.mkdtemp(prefix="fw-syslog-")  # AF_UNIX paths are short
    path = os.path.join(sockdir, "log")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    conf = write_conf(base, "delay_failed_login=0", "xferlog_enable=YES", "syslog_enable=YES",
                      f"syslog_socket={path}")
    srv = start_server(["--config", str(conf)], Path(accounts["alice"].pw_dir), base)
    try:
        ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.connect(srv.host, srv.port)
        ftp.login("ftpw_alice", "alice-pw-1")
        assert wait_for(lambda: len(_unprivileged(srv)) == 1)
        holders = _connected_to(os.fstat(rx.fileno()).st_ino)
        assert holders and all(ids(pid)[0][0] == 0 for pid in holders), holders  # the listener+broker only
        assert zygote(srv) not in holders
        assert ftp.sendcmd("NOOP").startswith("200")
        ftp.quit()
        got = ""
        while "OK LOGIN" not in got:
            got += rx.recv(65536).decode() + "\n"
        assert 'CONNECT: Client "127.0.0.1"' in got and "[ftpw_alice] OK LOGIN" in got
    finally:
        stop_server(srv)
        rx.close()
        os.unlink(path)
        os.rmdir(sockdir)


# ---------------------------------------------------------------- what the broker (and inetd's monitor) accepts

class Recorder(EventLog):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattribute__(self, name: str):
        if name in ("connect", "login", "command", "reply", "transfer_start", "transfer", "fs_change",
                    "disconnect"):
            return lambda *a, **k: object.__getattribute__(self, "calls").append((name, *a))
        return object.__getattribute__(self, name)


ALICE = SimpleNamespace(name="alice", user_class=SimpleNamespace(value="real"), anon_password="")


def test_the_monitor_fills_in_who_and_refuses_what_is_out_of_bounds():
    rec = Recorder()
    relay = LogRelay(rec, "10.0.0.9", "77.1")
    relay.handle(LogConnect())
    relay.handle(LogCommand("claimed", b"USER claimed"))
    with pytest.raises(ChannelError):
        relay.handle(LogConnect())  # once
    with pytest.raises(ChannelError):
        relay.handle(LogTransferStart("/x", True))  # before login
    relay.logged_in(ALICE)
    relay.handle(LogCommand("root", b"STOR x"))  # the worker's claim of who it is: ignored
    relay.handle(LogTransfer("/x", True, False, 5, 2_000_000, True, 1_700_000_000_000_000))
    assert rec.calls[0] == ("connect", "77.1", "10.0.0.9")
    assert rec.calls[1] == ("command", "77.1", "10.0.0.9", "claimed", b"USER claimed")
    assert rec.calls[2] == ("command", "77.1", "10.0.0.9", "alice", b"STOR x")
    record = rec.calls[3][1]
    assert isinstance(record, TransferRecord)
    assert (record.session, record.remote_ip, record.user, record.user_class, record.size, record.seconds) == \
        ("77.1", "10.0.0.9", "alice", "real", 5, 2.0)
    for bad in (LogCommand("u", b"x" * 9000), LogReply("u", b"y" * 20000), LogFsChange("TRUNCATE", "/a", "", True),
                LogTransfer("/x", True, False, -1, 0, True, 0), LogFsChange("MKD", "/" * 9000, "", True)):
        with pytest.raises(ChannelError):
            relay.handle(bad)


def test_a_workers_notice_is_one_line_per_line_and_never_critical(caplog):
    relay = LogRelay(None, "10.0.0.9", "77.1")
    with caplog.at_level(logging.DEBUG, logger="ftpwarden.worker"):
        relay.handle(LogNotice(logging.CRITICAL, "boom\nFri Nov 27 [pid 1] OK LOGIN\x1b[2J"))
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]
    assert all("\x1b" not in r.getMessage() and "77.1" in r.getMessage() for r in caplog.records)


def test_the_worker_side_cuts_long_replies_at_line_ends():
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        fwd = ForwardingEventLog(a)
        reply = b"".join(b"211-line %05d\r\n" % i for i in range(3000)) + b"211 End\r\n"
        fwd.reply("s", "ip", "u", reply)
        fwd.login("s", "ip", "u", "real", True)  # the monitor logs logins itself: nothing sent
        b.setblocking(False)
        pieces = []
        while True:
            try:
                pieces.append(decode(b.recv(70000)))
            except BlockingIOError:
                break
    assert len(pieces) > 1 and all(isinstance(p, LogReply) for p in pieces)
    assert b"".join(p.data for p in pieces) == reply  # type: ignore[attr-defined]
    assert all(p.data.endswith(b"\r\n") for p in pieces)  # type: ignore[attr-defined]
