"""priv/logrelay.py: an isolated worker sends the monitor only the events its sinks write
(commands, replies and transfer starts are a datagram each on the hot path)."""

from __future__ import annotations

import socket

from ftpwarden.logs.configured import ConfiguredEventLog
from ftpwarden.logs.events import EventLog, TransferRecord
from ftpwarden.logs.sinks import JsonLinesSink
from ftpwarden.priv.logrelay import ForwardingEventLog, wanted_events
from ftpwarden.priv.messages import LogCommand, LogReply, LogTransfer, LogTransferStart, decode


def _sent(wants: dict[str, bool]) -> list[type]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        fwd = ForwardingEventLog(a, **wants)
        fwd.command("s", "ip", "u", b"RETR f")
        fwd.reply("s", "ip", "u", b"226 Transfer complete.\r\n")
        fwd.transfer_start("s", "ip", "u", "/f", "o")
        fwd.transfer(TransferRecord(session="s", remote_ip="ip", user="u", user_class="real", anon_password="",
                                    path="/f", direction="o", ascii=False, size=1, seconds=0.1, complete=True,
                                    started_at=1.0))
        b.setblocking(False)
        got = []
        while True:
            try:
                got.append(type(decode(b.recv(70000))))
            except BlockingIOError:
                return got


def test_default_logs_get_transfers_only():
    assert _sent(wanted_events(ConfiguredEventLog())) == [LogTransfer]


def test_protocol_log_gets_commands_and_replies():
    events = ConfiguredEventLog(protocol=True, stderr=object())  # type: ignore[arg-type]
    assert _sent(wanted_events(events)) == [LogCommand, LogReply, LogTransfer]


def test_json_log_gets_commands_and_starts(tmp_path):
    events = ConfiguredEventLog(json=JsonLinesSink(str(tmp_path / "log.json")))
    try:
        assert _sent(wanted_events(events)) == [LogCommand, LogTransferStart, LogTransfer]
    finally:
        events.close()


def test_no_log_gets_none_of_the_frequent_ones():
    assert _sent(wanted_events(EventLog())) == []


def test_other_event_logs_get_everything():
    class Recording(EventLog):
        pass

    assert _sent(wanted_events(Recording())) == [LogCommand, LogReply, LogTransferStart, LogTransfer]


def test_a_forwarder_forked_again_keeps_its_choice():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        first = ForwardingEventLog(a, **wanted_events(ConfiguredEventLog()))
        assert _sent(wanted_events(first)) == [LogTransfer]
