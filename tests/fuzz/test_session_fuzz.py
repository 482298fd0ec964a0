"""Any bytes fed to a Session yield replies and actions, never another exception (h11's invariant)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.proto.actions import Action, Authenticate
from ftpwarden.proto.commands import COMMANDS, Perm
from ftpwarden.proto.principal import Principal, UserClass
from ftpwarden.proto.replies import Reply
from ftpwarden.proto.session import Session

REPLY = re.compile(rb"^(\d{3}) [^\r\n]*\r\n$|^(\d{3})-[^\r\n]*\r\n(?:[^\r\n]*\r\n)*?\2 [^\r\n]*\r\n$")


def _Account() -> Principal:
    return Principal("fuzz", UserClass.GUEST, root="/", grants=frozenset(Perm), umask=0o022)


verbs = st.sampled_from(sorted(COMMANDS) + ["GET", "XYZ", "SITE CHMOD", "OPTS HASH", "OPTS MLST"])
lines = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v, a: (v + " ").encode() + a, verbs, st.binary(max_size=80)),
    st.builds(lambda v, a: f"{v} {a}".encode("utf-8", "surrogatepass"), verbs, st.text(max_size=60)),
)


def _check(events: list) -> None:
    for ev in events:
        assert isinstance(ev, (Reply, Action)), ev
        if isinstance(ev, Reply):
            raw = ev.encode()
            assert REPLY.match(raw), raw
            assert 100 <= ev.code <= 599


@settings(max_examples=400, deadline=None)
@given(st.lists(lines, max_size=25), st.booleans())
def test_any_input_gives_replies_or_actions(seq, log_in):
    s = Session(session_options(default_config()), local_ip="127.0.0.1", remote_ip="127.0.0.1")
    _check(s.greeting())
    if log_in:
        s.feed(b"USER fuzz")
        (auth,) = s.feed(b"PASS x")
        assert isinstance(auth, Authenticate)
        s.complete(auth, _Account())
    for line in seq:
        events = s.feed(line.replace(b"\r\n", b""))
        _check(events)
        if any(isinstance(e, Reply) and e.close for e in events):
            break
