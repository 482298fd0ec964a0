"""Any bytes in any chunking -> lines or TOO_LONG; never another exception, never more than the cap held."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpwarden.proto.framing import TOO_LONG, LineFramer, TooLong, strip_telnet

pieces = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"\r\n", b"\n", b"\r", b"\xff\xf4", b"X" * 50])),
                  max_size=30)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(pieces, st.lists(st.integers(0, 10_000), max_size=20), st.integers(0, 64))
def test_any_chunking_gives_the_same_frames_and_holds_at_most_the_cap(parts, cuts, line_max):
    data = b"".join(parts)
    framer = LineFramer(line_max or None)
    frames = []
    for chunk in _split(data, cuts):
        frames += framer.feed(chunk)
        assert framer.buffered < framer.cap
    frames += framer.end()
    whole = LineFramer(line_max or None)
    assert frames == whole.feed(data) + whole.end()  # chunking never changes the result
    for f in frames:
        assert f is TOO_LONG or (isinstance(f, bytes) and b"\n" not in f and len(f) < framer.cap)
    expected_lines = [ln for ln in data.split(b"\n")]
    assert len([f for f in frames if isinstance(f, (bytes, TooLong))]) <= len(expected_lines)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=10), st.lists(st.integers(0, 1000), max_size=10))
def test_unread_frames_again_identically(parts, cuts):
    data = b"".join(parts)
    f = LineFramer(16)
    frames = []
    for chunk in _split(data, cuts):
        frames += f.feed(chunk)
    g = LineFramer(16)
    assert g.feed(f.unread(frames)) == frames
    assert g.buffered == f.buffered and g.discarding == (f.discarding and bool(frames) and frames[-1] is TOO_LONG)


@given(st.binary(max_size=200))
def test_strip_telnet_never_raises_and_never_grows(line):
    out = strip_telnet(line)
    assert len(out) <= len(line)
