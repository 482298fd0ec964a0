"""What crosses the boundaries of the core: decisions on the actions, the typed TLS
state between processes, the one PORT rule, the no-replace rename."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpwarden.net.jail import Jail
from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.priv.messages import ChannelError, Handover, decode, encode
from ftpwarden.proto import actions as A
from ftpwarden.proto import addr
from ftpwarden.proto.commands import Perm
from ftpwarden.proto.principal import Principal, UserClass
from ftpwarden.proto.session import Session


def _session(user_class: UserClass = UserClass.GUEST, **cfg) -> Session:
    s = Session(session_options(default_config(**cfg)), local_ip="127.0.0.1", remote_ip="127.0.0.1")
    name = "anonymous" if user_class is UserClass.ANONYMOUS else "alice"
    s.feed(b"USER " + name.encode())
    (auth,) = s.feed(b"PASS pw")
    assert isinstance(auth, A.Authenticate)
    s.complete(auth, Principal(name=name, user_class=user_class, root="/", grants=frozenset(Perm), umask=0o022))
    s.feed(b"PORT 127,0,0,1,200,10")
    return s


@pytest.mark.parametrize("cls,rate", [(UserClass.ANONYMOUS, 1000), (UserClass.GUEST, 2000)])
def test_the_core_picks_the_rate(cls, rate):
    s = _session(cls, anon_max_rate=1000, local_max_rate=2000, anon_upload_enable=True)
    (retr,) = s.feed(b"RETR f")
    assert isinstance(retr, A.SendFile) and retr.rate == rate


def test_uploads_carry_atomic_and_chown():
    (stor,) = _session(UserClass.ANONYMOUS, atomic_uploads=True, chown_uploads=True).feed(b"STOR f")
    assert isinstance(stor, A.ReceiveFile) and stor.atomic and stor.chown
    (stor,) = _session(atomic_uploads=False, chown_uploads=True).feed(b"STOR f")
    assert isinstance(stor, A.ReceiveFile) and not stor.atomic and not stor.chown  # chown: anonymous only


@pytest.mark.parametrize("line,dir_only", [(b"MLSD x", True), (b"LIST x", False), (b"NLST x/", True),
                                           (b"NLST *.txt", True), (b"NLST x", False)])
def test_the_core_says_which_listings_need_a_directory(line, dir_only):
    (listing,) = _session().feed(line)
    assert isinstance(listing, A.SendListing) and listing.dir_only is dir_only


def test_failure_delay_is_on_the_authenticate_action():
    s = Session(session_options(default_config(delay_failed_login=3)), local_ip="127.0.0.1",
                remote_ip="127.0.0.1")
    s.feed(b"USER alice")
    (auth,) = s.feed(b"PASS pw")
    assert isinstance(auth, A.Authenticate) and auth.failure_delay == 3


def test_tls_state_leaves_and_enters_a_session():
    s = Session(session_options(default_config()), local_ip="127.0.0.1", remote_ip="127.0.0.1")
    assert s.tls_state() == A.TlsState()
    s.resume_tls(A.TlsState(protected=True, pbsz=True, prot_private=True))
    assert s.tls_state() == A.TlsState(True, True, True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.booleans(), st.booleans(), st.booleans())
def test_handover_carries_the_tls_state_typed(pending, protected, pbsz, prot):
    state = A.TlsState(protected, pbsz, prot)
    msg = decode(encode(Handover.of(pending, state)))
    assert isinstance(msg, Handover) and msg.pending == pending and msg.tls_state == state


def test_a_bool_is_one_byte_zero_or_one():
    raw = bytearray(encode(Handover.of(b"", A.TlsState(True, False, True))))
    raw[-1] = 2
    with pytest.raises(ChannelError):
        decode(bytes(raw))


hosts = st.sampled_from(["127.0.0.1", "::ffff:127.0.0.1", "10.0.0.1", "::1", "junk", ""])


@given(hosts, st.integers(-5, 70000), st.booleans())
def test_one_port_rule(host, port, promiscuous):
    ok = addr.port_allowed(host, port, "127.0.0.1", promiscuous=promiscuous)
    if not 0 < port < 65536:
        assert not ok
    elif promiscuous:
        assert ok
    else:
        assert ok == (port >= 1024 and host in ("127.0.0.1", "::ffff:127.0.0.1"))


def test_rename_without_replace_never_replaces(tmp_path):
    (tmp_path / "part").write_text("new")
    (tmp_path / "old").write_text("old")
    jail = Jail(str(tmp_path))
    try:
        with pytest.raises(FileExistsError):
            jail.rename("/part", "/old", replace=False)
        assert (tmp_path / "old").read_text() == "old"
        jail.rename("/part", "/fresh", replace=False)
        assert sorted(os.listdir(tmp_path)) == ["fresh", "old"]
    finally:
        jail.close()
