"""Virtual path normalisation: a table of (cwd, argument, expected)."""

from __future__ import annotations

import pytest

from ftpwarden.proto import paths
from ftpwarden.proto.errors import RemoteProtocolError

RESOLVE = [
    ("/", "a", "/a"),
    ("/", "", "/"),
    ("/a/b", "c", "/a/b/c"),
    ("/a/b", "/c", "/c"),
    ("/a/b", "..", "/a"),
    ("/a/b", "../..", "/"),
    ("/a/b", "../../..", "/"),
    ("/", "../../..", "/"),
    ("/", "/a/../../b", "/b"),
    ("/x", "a//b/./c", "/x/a/b/c"),
    ("/x", "a/b/", "/x/a/b"),
    ("/x", ".", "/x"),
    ("/x", "./", "/x"),
    ("/x", "//", "/"),
    ("/x", "...", "/x/..."),
    ("/x", "..foo", "/x/..foo"),
    ("/x", "~", "/"),
    ("/x", "~/", "/"),
    ("/x", "~/a/../b", "/b"),
    ("/x", "~bob", "/x/~bob"),  # tilde_user_enable=NO: just a name
    ("/x", "a~", "/x/a~"),
    ("/x", 'we"ird name', '/x/we"ird name'),
    pytest.param("/x", "/" * 4096, "/", id="exactly-MAX_PATH-is-allowed"),
]


@pytest.mark.parametrize("cwd,arg,expected", RESOLVE)
def test_resolve(cwd: str, arg: str, expected: str) -> None:
    assert paths.resolve(cwd, arg) == expected


@pytest.mark.parametrize("arg", ["a\0b", "\0", "/etc/passwd\0.txt",
                                 pytest.param("a" * 5000, id="5000-chars"),
                                 pytest.param("/" * 4097, id="MAX_PATH+1")])
def test_resolve_rejects(arg: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        paths.resolve("/", arg)
    assert info.value.code == 553


@pytest.mark.parametrize("vpath,par,base,rel", [
    ("/", "/", "", "."),
    ("/a", "/", "a", "a"),
    ("/a/b", "/a", "b", "a/b"),
    ("/a/b/c.txt", "/a/b", "c.txt", "a/b/c.txt"),
])
def test_parent_basename_relative(vpath: str, par: str, base: str, rel: str) -> None:
    assert paths.parent(vpath) == par
    assert paths.basename(vpath) == base
    assert paths.to_relative(vpath) == rel


@pytest.mark.parametrize("vpath,quoted", [
    ("/", '"/"'),
    ("/a b", '"/a b"'),
    ('/say "hi"', '"/say ""hi"""'),
])
def test_quote_pwd(vpath: str, quoted: str) -> None:
    assert paths.quote_pwd(vpath) == quoted


@pytest.mark.parametrize("arg,is_dir", [
    ("keep.txt/", True), ("x/", True), ("a/b/", True), ("a/b/.", True), ("a//", True),
    ("keep.txt", False), ("a/b", False), ("/", False), (".", False), ("./", False), ("", False),
    ("a/..", False),
])
def test_names_directory(arg: str, is_dir: bool) -> None:
    assert paths.names_directory(arg) is is_dir


@pytest.mark.parametrize("arg,split", [
    ("*.txt", ("", "*.txt")), ("sub/*.txt", ("sub/", "*.txt")), ("/sub/?.txt", ("/sub/", "?.txt")),
    ("/[ab]*", ("/", "[ab]*")), ("d*r/file", None), ("plain.txt", None), ("", None), ("sub/", None),
])
def test_split_glob_only_in_the_last_component(arg: str, split: tuple[str, str] | None) -> None:
    assert paths.split_glob(arg) == split


@pytest.mark.parametrize("name,pattern,ok", [
    ("a.txt", "*.txt", True), ("a.txt", "?.txt", True), ("ab.txt", "?.txt", False),
    ("b1", "[ab][0-9]", True), ("c1", "[ab][0-9]", False), ("A.TXT", "*.txt", False),
    ("a[1]", "a[1]", True),  # the literal name still matches itself
])
def test_glob_match(name: str, pattern: str, ok: bool) -> None:
    assert paths.glob_match(name, pattern) is ok


def test_glob_match_is_linear_on_hostile_patterns() -> None:
    import time
    t = time.monotonic()
    assert not paths.glob_match("a" * 4000, "*a" * 60 + "*b")
    assert time.monotonic() - t < 1.0
