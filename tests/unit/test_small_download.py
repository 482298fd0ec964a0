"""net/transfer.py `_sent_at_once`: which downloads go before their 150, and how a
socket that takes only part of the file hands over to the usual path."""

from __future__ import annotations

import asyncio
import os
import socket
from types import SimpleNamespace

from ftpwarden.net import data, transfer
from ftpwarden.proto.actions import SendFile


def _cc(kind: str = "pasv", rates: object = None) -> SimpleNamespace:
    return SimpleNamespace(session=SimpleNamespace(data_kind=kind), ctx=SimpleNamespace(account_rates=rates))


def _pair(buffers: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected (server, client) pair; `buffers`: small socket buffers, set
    before the connection so the window is small too."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.socket()
        client.settimeout(10)
        if buffers:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        client.connect(lsock.getsockname())
        server, _ = lsock.accept()
    server.setblocking(False)
    return server, client


def test_only_small_plain_binary_passive_downloads(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    size = 100
    refused = [
        (_cc(), SendFile("f", protected=True)),
        (_cc(), SendFile("f", ascii=True)),
        (_cc(), SendFile("f", rate=1000)),
        (_cc(rates=object()), SendFile("f")),
        (_cc("port"), SendFile("f")),
    ]
    for cc, action in refused:
        held = transfer.Held()
        assert not transfer._sent_at_once(cc, action, held, size, [0])  # type: ignore[arg-type]
        assert held.conn is None  # untouched: the usual path does it all
    big = transfer.Held()
    assert not transfer._sent_at_once(_cc(), SendFile("f"), big, transfer.SMALL_DOWNLOAD + 1, [0])  # type: ignore[arg-type]
    assert big.conn is None


def test_whole_file_at_once(tmp_path):
    path = tmp_path / "f"
    want = os.urandom(8192)
    path.write_bytes(want)
    server, client = _pair()
    held = transfer.Held(fd=os.open(path, os.O_RDONLY), sock=server)
    progress = [0]
    try:
        assert transfer._sent_at_once(_cc(), SendFile("f", offset=10), held, len(want), progress)  # type: ignore[arg-type]
        assert progress[0] == len(want) - 10 and held.sock is None and held.conn is not None
        asyncio.run(held.conn.close())
        held.conn = None
        got = b""
        while chunk := client.recv(65536):
            got += chunk
        assert got == want[10:]
    finally:
        held.release()
        client.close()


def test_a_full_socket_hands_over_where_it_stopped(tmp_path):
    path = tmp_path / "f"
    want = os.urandom(transfer.SMALL_DOWNLOAD)
    path.write_bytes(want)
    server, client = _pair(buffers=4096)
    held = transfer.Held(fd=os.open(path, os.O_RDONLY), sock=server)
    progress = [0]
    try:
        # the client does not read yet: the socket takes only part of the file
        assert not transfer._sent_at_once(_cc(), SendFile("f"), held, len(want), progress)  # type: ignore[arg-type]
        assert 0 < progress[0] < len(want) and held.conn is not None

        async def rest() -> bytes:
            assert held.conn is not None and held.fd is not None
            loop = asyncio.get_running_loop()
            client.setblocking(False)
            sending = asyncio.ensure_future(data.send_file(held.conn, held.fd, progress[0], False, progress))
            got = bytearray()
            async with asyncio.timeout(10):
                while len(got) < len(want):
                    got += await loop.sock_recv(client, 65536)
                await sending
            return bytes(got)

        assert asyncio.run(rest()) == want
        assert progress[0] == len(want)
    finally:
        held.release()
        client.close()
