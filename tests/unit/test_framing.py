"""The control-line framer: lines, the cap, TOO_LONG, handover bytes, Telnet IAC."""

from __future__ import annotations

from ftpwarden.proto.framing import TOO_LONG, LineFramer, line_cap, strip_telnet


def test_lines_split_across_chunks():
    f = LineFramer(16)
    assert f.feed(b"NO") == []
    assert f.feed(b"OP\r\nUSER a\nPA") == [b"NOOP", b"USER a"]
    assert f.buffered == 2
    assert f.feed(b"SS b\r\n") == [b"PASS b"]
    assert f.buffered == 0


def test_only_one_cr_is_removed():
    assert LineFramer(16).feed(b"A\r\r\n") == [b"A\r"]


def test_cap_is_line_max_plus_crlf():
    assert line_cap(None) == line_cap(0) == 4098
    assert line_cap(100) == 102
    f = LineFramer(4)
    assert f.feed(b"ABCD\r\n") == [b"ABCD"]
    assert f.feed(b"ABCDE\r\n") == [TOO_LONG]  # the line with its CRLF must fit in the cap
    assert f.feed(b"ABCDE\n") == [b"ABCDE"]


def test_too_long_is_reported_before_the_newline_and_the_rest_dropped():
    f = LineFramer(8)
    assert f.feed(b"X" * 9) == []
    assert f.feed(b"X") == [TOO_LONG]
    assert f.buffered == 0 and f.discarding
    assert f.feed(b"Y" * 100_000) == []
    assert f.buffered == 0
    assert f.feed(b"YY\r\nNOOP\r\n") == [b"NOOP"]
    assert not f.discarding


def test_end_returns_an_unterminated_last_line():
    f = LineFramer(8)
    f.feed(b"QUIT")
    assert f.end() == [b"QUIT"]
    assert f.end() == []


def test_unread_frames_again_to_the_same_frames():
    f = LineFramer(8)
    frames = f.feed(b"CWD a\nNOOP\r\n" + b"Z" * 20 + b"\nPW")
    assert frames == [b"CWD a", b"NOOP", TOO_LONG]
    g = LineFramer(8)
    assert g.feed(f.unread(frames)) == frames
    assert g.buffered == 2


def test_unread_keeps_an_unfinished_too_long_line_unfinished():
    f = LineFramer(8)
    frames = f.feed(b"Z" * 20)
    assert frames == [TOO_LONG]
    g = LineFramer(8)
    assert g.feed(f.unread(frames)) == [TOO_LONG]
    assert g.discarding
    assert g.feed(b"ZZ\nNOOP\n") == [b"NOOP"]


def test_strip_telnet():
    assert strip_telnet(b"\xff\xf4\xff\xf2ABOR") == b"ABOR"
    assert strip_telnet(b"NO\xff\xfbOP") == b"NOP"   # IAC WILL x: three bytes
    assert strip_telnet(b"a\xff\xffb") == b"a\xffb"   # IAC IAC: a literal 0xFF
    assert strip_telnet(b"NOOP") == b"NOOP"
    assert strip_telnet(b"A\xff") == b"A"
