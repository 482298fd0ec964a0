"""net/proctitle.py: the title in the exec-time strings, and what a session's title shows."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ftpwarden.net import proctitle

CHILD = textwrap.dedent("""
    import ctypes, os
    from ftpwarden.net import proctitle
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    assert not proctitle.active()
    proctitle.show("ignored")  # not taken over: nothing happens
    assert b"ignored" not in open("/proc/self/cmdline", "rb").read()
    assert proctitle.take_over() and proctitle.active()
    proctitle.show("127.0.0.1: connected")
    print(open("/proc/self/cmdline", "rb").read())
    proctitle.show("x" * 5000)  # cut to the room there is, still one string
    long = open("/proc/self/cmdline", "rb").read()
    print(long.count(b"\\0"), long.startswith(b"ftpwarden: xxx"))
    print(libc.getenv(b"FTPW_MARK"), os.environ["FTPW_MARK"])  # libc's environment was moved, not lost
    name = ctypes.c_char_p.in_dll(libc, "program_invocation_short_name").value
    print(name)
""")


def test_take_over_and_show(tmp_path):
    script = tmp_path / "child.py"  # not -c: the command line would hold the script's text
    script.write_text(CHILD)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                       env={"FTPW_MARK": "kept", "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == repr(b"ftpwarden: 127.0.0.1: connected\0")
    assert lines[1] == "1 True"
    assert lines[2] == "b'kept' kept"
    assert lines[3] == repr(sys.executable.rsplit("/", 1)[1].encode())  # the program's name survives the title


class Events:
    def __init__(self):
        self.seen = []

    def command(self, *args):
        self.seen.append(("command", args[-1]))

    def reply(self, *args):
        self.seen.append(("reply", args[-1]))

    def disconnect(self, *args):
        self.seen.append(("disconnect",))


@pytest.fixture
def shown(monkeypatch):
    out: list[str] = []
    monkeypatch.setattr(proctitle, "show", out.append)
    return out


def test_command_titles(shown):
    events = Events()
    titles = proctitle.CommandTitles(events, "10.0.0.1/alice")
    titles.command("s", "10.0.0.1", "alice", b"RETR a file.txt\r\n")
    titles.reply("s", "10.0.0.1", "alice", b"150 Opening.\r\n")
    titles.reply("s", "10.0.0.1", "alice", b"226 Done.\r\n")
    titles.command("s", "10.0.0.1", "alice", b"pass hunter2\r\n")
    titles.command("s", "10.0.0.1", "alice", b"ACCT hunter2\r\n")
    titles.disconnect("s", "10.0.0.1", "alice", "bye")
    assert shown == ["10.0.0.1/alice: IDLE", "10.0.0.1/alice: RETR a file.txt", "10.0.0.1/alice: IDLE",
                     "10.0.0.1/alice: pass", "10.0.0.1/alice: ACCT"]
    assert [e[0] for e in events.seen] == ["command", "reply", "reply", "command", "command", "disconnect"]
    assert events.seen[3] == ("command", b"pass hunter2\r\n")  # the log's own masking is the EventLog's


def test_printable():
    assert proctitle.printable("RETR a\x1b[2Jb\x7f") == "RETR a?[2Jb?"
    assert proctitle.printable("STOR café") == "STOR café"
