"""Issue 13, item 4: two nodes serving one directory tree (here one local directory)
keep a file whole when both store the same name at once, with atomic_uploads (each
upload writes a hidden file of its own, renamed onto the name once whole) or with
lock_upload_files (the second waits for the first's lock, then empties and writes).

Afterwards the file holds exactly one upload's bytes, never a mix nor a cut; a 226
means the file was whole on disk, so of two 226s clearly apart the later one's bytes
are what the file holds; nothing hidden is left behind.  The checks take the servers
as arguments: tests/privileged/test_shared_storage_isolated.py runs them in isolated mode.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from .conftest import Server

TIMEOUT = 30
SIZE = 3 * 1024 * 1024       # each upload's bytes
CHUNK = 256 * 1024           # sent in chunks with a pause between: two uploads surely overlap
PAUSE = 0.03                 # 12 chunks: an upload lasts about 0.4 s
STAGGER = 0.25               # odd rounds: one upload starts this much later (still overlapping)
ROUNDS_SECONDS = 60.0        # the rounds stop here, if the machine is slow
MIN_ROUNDS = 5
APART = 0.2                  # two 226s this far apart say which upload renamed (or wrote) last
HIDDEN = (".ftpwarden-partial.", ".ftpwarden-upload.")
ALICE = ("alice", "secret")


def login(srv: Server, base: str, cred: tuple[str, str]) -> ftplib.FTP:
    """Logged in, binary, in the check's directory `base`."""
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(srv.host, srv.port)
    ftp.login(*cred)
    ftp.voidcmd("TYPE I")
    ftp.cwd(base)
    return ftp


def fresh_dir(srv: Server, root: Path, cred: tuple[str, str]) -> tuple[str, Path]:
    """A new directory for one check: its FTP path, and where it is on disk (`root` is "/")."""
    base = "/t-" + uuid.uuid4().hex[:10]
    with login(srv, "/", cred) as ftp:
        ftp.mkd(base)
    return base, root / base.lstrip("/")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(HIDDEN))


def send(ftp: ftplib.FTP, cmd: str, data: bytes, stop_at: int | None = None, pause: float = PAUSE,
         rest: int | None = None) -> str:
    """`cmd` with `data` in paced chunks; its final reply (an error reply as its text).
    `stop_at`: the client dies after that many bytes (both connections closed): ""."""
    try:
        with ftp.transfercmd(cmd, rest) as conn:
            for i in range(0, len(data), CHUNK):
                if stop_at is not None and i >= stop_at:
                    conn.close()
                    ftp.close()
                    return ""
                conn.sendall(data[i:i + CHUNK])
                time.sleep(pause)
        return ftp.voidresp()
    except ftplib.Error as e:
        return str(e)


def upload_at_once(clients: list[ftplib.FTP], name: str, contents: list[bytes],
                   delays: list[float]) -> list[tuple[str, float]]:
    """Each client STORs its content to `name`, all starting together (but for its
    delay): (reply, when it came) each."""
    ready = threading.Barrier(len(clients), timeout=TIMEOUT)
    results: list[tuple[str, float]] = [("no reply", 0.0)] * len(clients)

    def one(i: int) -> None:
        ready.wait()
        time.sleep(delays[i])
        reply = send(clients[i], f"STOR {name}", contents[i])
        results[i] = (reply, time.monotonic())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not any(t.is_alive() for t in threads), "an upload hung"
    return results


def check_concurrent_stores(a: Server, b: Server, root: Path, rounds_max: int = 20, locks: bool = False,
                            cred: tuple[str, str] = ALICE, label: str = "") -> None:
    """Rounds of two clients (one on each of `a` and `b`) storing the same name at once.
    `locks`: lock_upload_files without atomic_uploads, where the second waits for the first."""
    base, root = fresh_dir(a, root, cred)
    clients = [login(a, base, cred), login(b, base, cred)]
    rounds, both_ok, ordered = 0, 0, 0
    started = time.monotonic()
    try:
        while rounds < rounds_max and time.monotonic() - started < ROUNDS_SECONDS:
            contents = [os.urandom(SIZE), os.urandom(SIZE)]
            delays = [0.0, 0.0] if rounds % 2 == 0 else [STAGGER, 0.0] if rounds % 4 == 1 else [0.0, STAGGER]
            results = upload_at_once(clients, "same.bin", contents, delays)
            rounds += 1
            for reply, _ in results:  # a 226, or a clear refusal (never a silent nothing)
                assert reply[:1] in ("2", "4", "5"), results
            done = [i for i, (reply, _) in enumerate(results) if reply.startswith("226")]
            assert done, f"round {rounds}: neither upload was stored: {results}"
            held = (root / "same.bin").read_bytes()
            names = {digest(c): i for i, c in enumerate(contents)}
            assert digest(held) in names, \
                f"round {rounds}: the file ({len(held)} bytes) is neither upload whole: {results}"
            if len(done) == 1:  # the refused one never reached the name
                assert held == contents[done[0]], f"round {rounds}: {results}"
            else:
                both_ok += 1
                (_, t0), (_, t1) = results
                if abs(t0 - t1) > APART:  # the later 226 renamed (or wrote) last
                    ordered += 1
                    assert held == contents[0 if t0 > t1 else 1], f"round {rounds}: {results}"
            assert leftovers(root) == [], f"round {rounds}: {leftovers(root)}"
    finally:
        for ftp in clients:
            try:
                ftp.quit()
            except (OSError, ftplib.Error):
                ftp.close()
    print(f"\nFIGURE shared storage ({label}): {rounds} rounds of two {SIZE >> 20} MiB STORs of one name at once "
          f"in {time.monotonic() - started:.1f} s; both 226 in {both_ok}, clearly ordered in {ordered}")
    assert rounds >= MIN_ROUNDS
    if locks:  # one after the other, every round
        assert both_ok == rounds and ordered >= rounds // 2


def check_resume_on_the_other_node(a: Server, b: Server, root: Path, cred: tuple[str, str] = ALICE) -> None:
    """An atomic upload cut on node `a` is continued on node `b` (APPE).  While that
    resume runs, a second one by REST + STOR is refused (the interrupted file is taken),
    and an APPE meanwhile writes a file of its own: the name ends whole, nothing is left."""
    base, root = fresh_dir(a, root, cred)
    payload = os.urandom(SIZE)
    cut = 1024 * 1024
    assert send(login(a, base, cred), "STOR big.bin", payload, stop_at=cut) == ""
    partial = root / ".ftpwarden-partial.big.bin"
    deadline = time.monotonic() + TIMEOUT
    while not (partial.exists() and partial.stat().st_size == cut):
        assert time.monotonic() < deadline, leftovers(root)
        time.sleep(0.05)
    assert not (root / "big.bin").exists()

    resumer, other = login(b, base, cred), login(a, base, cred)
    result: list[str] = []
    slow = threading.Thread(target=lambda: result.append(send(resumer, "APPE big.bin", payload[cut:], pause=0.2)))
    slow.start()
    deadline = time.monotonic() + TIMEOUT
    while partial.exists():  # the resume claims it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = send(other, "STOR big.bin", payload[cut:], rest=cut)
    assert refused.startswith("550"), refused  # REST continues a file: there is none to continue
    assert send(other, "APPE big.bin", b"tail").startswith("226")
    slow.join(TIMEOUT * 2)
    assert result and result[0].startswith("226"), result
    assert (root / "big.bin").read_bytes() == payload  # the resume finished last: its whole file
    assert leftovers(root) == []
    for ftp in (resumer, other):
        ftp.quit()


# ---------------------------------------------------------------- pooled mode

def two_nodes(make_server, tmp_path: Path, *opts: str, nodes: int = 2) -> tuple[Server, Server, Path]:
    """Two pooled servers on one root directory (or one server twice: two sessions of one node)."""
    root = tmp_path / "shared"
    root.mkdir()
    args = [str(root), "--port", "0", "--bind", "127.0.0.1", "--workers", "1", "--user", "alice:secret",
            "-o", "delay_failed_login=0", "-o", "ban_threshold=0"]
    for o in opts:
        args += ["-o", o]
    a = make_server(root, *args)
    return a, (make_server(root, *args) if nodes == 2 else a), root


MODES = {"atomic": ("atomic_uploads=YES", "lock_upload_files=NO"),
         "atomic+lock": ("atomic_uploads=YES", "lock_upload_files=YES"),
         "lock": ("atomic_uploads=NO", "lock_upload_files=YES")}


@pytest.mark.parametrize("nodes", [2, 1], ids=["two-nodes", "one-node"])
@pytest.mark.parametrize("mode", list(MODES))
def test_storing_one_name_at_once_leaves_one_whole_file(make_server, tmp_path, mode, nodes):
    check_concurrent_stores(*two_nodes(make_server, tmp_path, *MODES[mode], nodes=nodes),
                            rounds_max=20 if nodes == 2 else 8, locks=mode == "lock",
                            label=f"pooled, {mode}, {'two nodes' if nodes == 2 else 'one node'}")


def test_an_interrupted_atomic_upload_is_resumed_on_the_other_node(make_server, tmp_path):
    check_resume_on_the_other_node(*two_nodes(make_server, tmp_path, "atomic_uploads=YES"))
