"""Issue 16, idle sessions: the control connection is an asyncio Protocol.

- an idle session holds no task (its coroutine runs only while a command is handled);
- lines pipelined in one chunk are answered in order, and an EOF after them
  still gets every answer (the plain side stays open for the replies);
- one loop-wide sweep ends an idle (or never logged-in) session with 421;
- drain waits while the transport is paused, wakes on resume, fails on a lost connection;
- AUTH TLS: a command that arrives with the client's last handshake flight (one
  segment, as curl sends it) is answered, and the next one too.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from ftpwarden.net import control, tls
from ftpwarden.net.context import ServerContext
from ftpwarden.net.control import ControlConnection
from ftpwarden.policy.config import default_config
from ftpwarden.proto.principal import Principal, UserClass

from ..conftest import make_cert

WAIT = 5.0  # seconds any one step may take


def _ctx(**cfg: object) -> ServerContext:
    return ServerContext(default_config(**cfg), None)


def _anonymous(root: Path) -> Principal:
    return Principal("ftp", UserClass.ANONYMOUS, str(root), frozenset(), 0o077, chroot=False)


async def _start(ctx: ServerContext, **kw: object) -> tuple[ControlConnection, socket.socket, asyncio.Future[None]]:
    """A session on one end of a socketpair; the test talks through the other end (blocking, in a thread)."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    cc = ControlConnection(ctx, addresses=("127.0.0.1", "127.0.0.1"),
                           on_end=lambda _cc: ended.done() or ended.set_result(None), **kw)  # type: ignore[arg-type]
    await loop.connect_accepted_socket(lambda: cc, ours)
    return cc, theirs, ended


async def _lines(sock: socket.socket, n: int) -> list[bytes]:
    def read() -> list[bytes]:
        f = sock.makefile("rb")
        return [f.readline() for _ in range(n)]
    return await asyncio.wait_for(asyncio.to_thread(read), WAIT)


def test_idle_session_holds_no_task(tmp_path: Path) -> None:
    async def main() -> None:
        cc, theirs, ended = await _start(_ctx(), account=_anonymous(tmp_path))
        assert (await _lines(theirs, 1))[0].startswith(b"230")
        await asyncio.sleep(0.05)
        assert cc.handler is None
        assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing runs for the idle session
        theirs.sendall(b"NOOP\r\n")
        assert (await _lines(theirs, 1))[0].startswith(b"200")
        theirs.close()
        await asyncio.wait_for(ended, WAIT)
    asyncio.run(main())


def test_pipelined_lines_then_eof_are_all_answered(tmp_path: Path) -> None:
    async def main() -> None:
        cc, theirs, ended = await _start(_ctx(), account=_anonymous(tmp_path))
        theirs.sendall(b"NOOP\r\nPWD\r\nSYST\r\nNOOP")  # the last line unterminated
        theirs.shutdown(socket.SHUT_WR)
        lines = await _lines(theirs, 5)
        assert [line[:3] for line in lines] == [b"230", b"200", b"257", b"215", b"200"], lines
        await asyncio.wait_for(ended, WAIT)
        assert cc.end_reason == "client closed"
        theirs.close()
    asyncio.run(main())


@pytest.mark.parametrize("logged_in", [True, False])
def test_sweep_ends_an_idle_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged_in: bool) -> None:
    monkeypatch.setattr(control._Sweep, "PERIOD", 0.05)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = _ctx(idle_session_timeout=1, login_timeout=1)
        cc, theirs, ended = await _start(ctx, account=_anonymous(tmp_path) if logged_in else None)
        started = loop.time()
        assert (await _lines(theirs, 1))[0][:3] == (b"230" if logged_in else b"220")
        assert (await _lines(theirs, 1))[0] == b"421 Timeout.\r\n"
        await asyncio.wait_for(ended, WAIT)
        assert 0.9 < loop.time() - started < 3
        assert cc.end_reason == ("idle timeout" if logged_in else "login timeout")
        assert theirs.recv(1) == b""  # closed
        theirs.close()
    asyncio.run(main())


def test_drain_waits_while_paused_and_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        cc, theirs, ended = await _start(_ctx(), account=_anonymous(tmp_path))
        await _lines(theirs, 1)
        cc.pause_writing()
        drain = asyncio.ensure_future(cc.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        cc.resume_writing()
        await asyncio.wait_for(drain, WAIT)
        cc.pause_writing()
        drain = asyncio.ensure_future(cc.drain())
        await asyncio.sleep(0.05)
        theirs.close()  # the connection drops while a drain waits
        cc.transport.abort()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(drain, WAIT)
        await asyncio.wait_for(ended, WAIT)
    asyncio.run(main())


def test_a_command_in_the_handshakes_last_flight_is_read(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    ctx = _ctx(ssl_enable=True, rsa_cert_file=str(cert), rsa_private_key_file=str(key), delay_failed_login=0)
    ctx.tls_contexts = tls.Contexts.fixed(tls.make_context(ctx.cfg))
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE

    def client(sock: socket.socket) -> list[bytes]:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"AUTH TLS\r\n")
        assert f.readline().startswith(b"234")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_obj = client_ctx.wrap_bio(incoming, outgoing)
        while True:
            try:
                tls_obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536) or b"")
        tls_obj.write(b"USER alice\r\n")  # with the client's Finished, in one segment
        sock.sendall(outgoing.read())
        got: list[bytes] = []
        buf = b""
        while len(got) < 2:
            while b"\n" not in buf:
                try:
                    buf += tls_obj.read(4096)
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536) or b"")
            line, buf = buf.split(b"\n", 1)
            if line[:3] == b"331":
                tls_obj.write(b"NOOP\r\n")
                sock.sendall(outgoing.read())
            got.append(line)
        return got

    async def main() -> None:
        _cc, theirs, ended = await _start(ctx)
        replies = await asyncio.wait_for(asyncio.to_thread(client, theirs), WAIT)
        assert [r[:3] for r in replies] == [b"331", b"200"], replies
        theirs.close()
        await asyncio.wait_for(ended, WAIT)
    asyncio.run(main())
