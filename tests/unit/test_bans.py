"""net/bans.py: temporary bans after repeated failed logins, shared across processes."""

from __future__ import annotations

import json
import os
import socket
import zlib

from ftpwarden.logs.configured import ConfiguredEventLog
from ftpwarden.logs.events import EventLog
from ftpwarden.logs.sinks import LOG_FTP, LOG_WARNING, FileSink, JsonLinesSink, SyslogSink
from ftpwarden.net import bans as bans_mod
from ftpwarden.net.bans import BanList


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, ban: int = 60, window: int = 30) -> tuple[BanList, Clock]:
    clock = Clock()
    return BanList(threshold, ban, window, clock=clock), clock


def test_threshold_starts_one_ban():
    b, _ = make()
    assert [b.failed("10.0.0.1") for _ in range(2)] == [False, False]
    assert not b.is_banned("10.0.0.1")
    assert b.failed("10.0.0.1") is True  # the third starts the ban
    assert b.is_banned("10.0.0.1")
    assert b.failed("10.0.0.1") is False  # already banned: no second start (one log line)
    assert not b.is_banned("10.0.0.2")


def test_failures_older_than_the_window_do_not_count():
    b, clock = make(window=30)
    b.failed("10.0.0.1")
    b.failed("10.0.0.1")
    clock.now += 31
    assert b.failed("10.0.0.1") is False  # a new window: this is its first failure
    assert not b.is_banned("10.0.0.1")
    b.failed("10.0.0.1")
    assert b.failed("10.0.0.1") is True


def test_ban_ends_by_itself_and_counting_starts_afresh():
    b, clock = make(ban=60)
    for _ in range(3):
        b.failed("10.0.0.1")
    clock.now += 59.9
    assert b.is_banned("10.0.0.1")
    clock.now += 0.2
    assert not b.is_banned("10.0.0.1")
    assert b.failed("10.0.0.1") is False  # the failures before the ban are gone
    assert not b.is_banned("10.0.0.1")


def test_off_and_garbage():
    b, _ = make(threshold=0)
    assert not any(b.failed("10.0.0.1") for _ in range(50))
    assert not b.is_banned("10.0.0.1")
    b, _ = make(threshold=1)
    assert b.failed("not an address") is False
    assert not b.is_banned("not an address")


def test_ipv4_mapped_ipv6_is_the_same_address():
    b, _ = make(threshold=2)
    b.failed("::ffff:10.0.0.1")
    assert b.failed("10.0.0.1") is True
    assert b.is_banned("::ffff:10.0.0.1") and b.is_banned("10.0.0.1")
    assert b.failed("2001:db8::1") is False
    assert b.failed("2001:db8::1") is True
    assert not b.is_banned("2001:db8::2")


def _colliding(n: int) -> list[str]:
    """n addresses whose keys hash to the same first slot."""
    want, out = None, []
    for i in range(1, 1 << 20):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        h = zlib.crc32(bans_mod._key(ip)) % bans_mod._SLOTS
        if want is None:
            want = h
        if h == want:
            out.append(ip)
            if len(out) == n:
                return out
    raise AssertionError("not enough collisions")


def test_a_collision_never_bans_another_address():
    b, _ = make(threshold=3)
    guilty, innocent, third = _colliding(3)
    for _ in range(3):
        b.failed(guilty)
    assert b.is_banned(guilty)
    assert not b.is_banned(innocent)
    assert b.failed(innocent) is False and b.failed(third) is False
    assert not b.is_banned(innocent) and not b.is_banned(third)
    assert b.is_banned(guilty)


def test_a_full_probe_reuses_the_least_active_slot_and_keeps_bans():
    b, clock = make(threshold=2, ban=1000, window=1000)
    ips = _colliding(bans_mod._PROBE + 2)
    banned = ips[0]
    b.failed(banned)
    b.failed(banned)
    for ip in ips[1:bans_mod._PROBE]:  # fill the rest of the probe with one failure each
        clock.now += 1
        b.failed(ip)
    clock.now += 1
    b.failed(ips[bans_mod._PROBE])  # evicts the least active counter, not the ban
    assert b.is_banned(banned)
    b.failed(ips[1])  # its first failure was forgotten: this is a first one again
    assert not b.is_banned(ips[1])


def test_detach_drops_the_table():
    b, _ = make(threshold=1)
    b.detach()
    assert b.failed("10.0.0.1") is False
    assert not b.is_banned("10.0.0.1")
    b.detach()  # twice is harmless


def test_shared_across_fork():
    b, _ = make(threshold=3)
    b.failed("10.0.0.9")  # one in the parent, two in the child
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            first = b.failed("10.0.0.9")
            second = b.failed("10.0.0.9")
            code = 0 if (first, second) == (False, True) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b.is_banned("10.0.0.9")
    assert not b.is_banned("10.0.0.10")


def test_reconfigure_keeps_bans_in_force():
    b, clock = make(threshold=2, ban=100)
    b.failed("10.0.0.1")
    b.failed("10.0.0.1")
    b.configure(5, 10, 10)
    assert b.is_banned("10.0.0.1")
    assert [b.failed("10.0.0.2") for _ in range(5)] == [False] * 4 + [True]
    clock.now += 11
    assert not b.is_banned("10.0.0.2")
    assert b.is_banned("10.0.0.1")


def test_a_lock_held_by_a_dead_process_never_stalls_for_long(monkeypatch):
    monkeypatch.setattr(bans_mod, "_LOCK_WAIT", 0.05)
    b, _ = make(threshold=1)
    b.failed("10.0.0.1")
    assert b._lock.acquire(timeout=1)  # stands for a holder that died
    try:
        assert b.is_banned("10.0.0.1") is False  # fails open after _LOCK_WAIT
        assert b.failed("10.0.0.2") is False
    finally:
        b._lock.release()
    assert b.is_banned("10.0.0.1")


def test_a_ban_is_logged_in_every_format(tmp_path):
    EventLog().ban("10.0.0.1", 600)  # the default logs nothing and never fails
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(str(tmp_path / "log.sock"))
    daemon.settimeout(2)
    log = ConfiguredEventLog(vsftpd_log=FileSink(str(tmp_path / "v.log")),
                             json=JsonLinesSink(str(tmp_path / "j.log")), clock=lambda: 1_800_000_000.0)
    log.ban("10.0.0.1", 600)
    log.close()
    (line,) = (tmp_path / "v.log").read_text().splitlines()
    assert line.endswith(f'[pid {os.getpid()}] BAN: Client "10.0.0.1", 600 seconds'), line
    (event,) = [json.loads(line) for line in (tmp_path / "j.log").read_text().splitlines()]
    assert (event["event"], event["client"], event["seconds"]) == ("ban", "10.0.0.1", 600)
    syslog = ConfiguredEventLog(syslog=SyslogSink(str(tmp_path / "log.sock")))
    syslog.ban("2001:db8::1", 30)
    datagram = daemon.recv(4096).decode()
    assert datagram.startswith(f"<{LOG_FTP * 8 + LOG_WARNING}>"), datagram
    assert datagram.endswith('BAN: Client "2001:db8::1", 30 seconds'), datagram
    daemon.close()
