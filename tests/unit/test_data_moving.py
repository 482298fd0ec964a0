"""net/data.py on the bulk path: data_connection_timeout counted from the last
byte moved (one timer per transfer, not one per chunk), a passive client that
is already waiting taken without a wait, and a whole file through `send_file`."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from ftpwarden.net import data


def test_a_transfer_that_keeps_moving_outlives_its_timeout():
    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        with pytest.raises(TimeoutError):
            async with data.Stalled(0.3) as stall:
                for _ in range(8):  # 0.8 s in all, never 0.3 s without a byte
                    await asyncio.sleep(0.1)
                    stall.moved()
                    last = loop.time()
                await asyncio.sleep(3)
        return last - started, loop.time() - last

    alive, waited = asyncio.run(asyncio.wait_for(run(), 10))
    assert alive >= 0.75, alive
    assert 0.25 <= waited < 1.0, waited


def test_a_stalled_transfer_times_out_from_its_last_byte():
    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with data.Stalled(0.3):
                await asyncio.sleep(3)
        return loop.time() - started

    waited = asyncio.run(asyncio.wait_for(run(), 10))
    assert 0.25 <= waited < 1.0, waited


def test_no_timeout_leaves_no_timer():
    async def run() -> int:
        loop = asyncio.get_running_loop()
        before = sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined] # wait_for's
        async with data.Stalled(0) as stall:
            stall.moved()
            await asyncio.sleep(0.05)
        async with data.Stalled(30):
            pass
        return sum(1 for h in loop._scheduled if not h.cancelled()) - before  # type: ignore[attr-defined]

    assert asyncio.run(asyncio.wait_for(run(), 10)) == 0


def _channel(**cfg: object) -> data.DataChannel:
    options = {"pasv_min_port": 0, "pasv_max_port": 0, "pasv_address": None, "pasv_promiscuous": False,
               "accept_timeout": 2, "bind_retries": 9, "isolate_network": False}
    options.update(cfg)
    return data.DataChannel(SimpleNamespace(**options), local_ip="127.0.0.1", remote_ip="127.0.0.1")


def test_a_waiting_passive_client_is_taken_at_once():
    async def run() -> None:
        channel = _channel()
        host, port = await channel.open_passive()
        client = socket.create_connection((host, port), timeout=5)
        try:
            sock = await asyncio.wait_for(channel.connect("pasv", None), 5)
            assert not sock.getblocking()
            assert sock.getpeername() == client.getsockname()
            sock.close()
        finally:
            client.close()
        assert channel.listener is None  # one listener serves one transfer

    asyncio.run(run())


def test_a_passive_client_that_comes_later_is_still_waited_for():
    async def run() -> None:
        channel = _channel()
        host, port = await channel.open_passive()
        loop = asyncio.get_running_loop()
        client: list[socket.socket] = []
        loop.call_later(0.2, lambda: client.append(socket.create_connection((host, port), timeout=5)))
        sock = await asyncio.wait_for(channel.connect("pasv", None), 5)
        sock.close()
        client[0].close()

    asyncio.run(run())


def test_a_whole_file_goes_through_send_file(tmp_path):
    payload = os.urandom(6 * 1024 * 1024 + 123)
    path = tmp_path / "f"
    path.write_bytes(payload)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=10)
        server, _ = lsock.accept()
    server.setblocking(False)
    got = bytearray()

    def read() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (chunk := client.recv(1 << 20)):
            got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    progress = [0]
    fd = os.open(path, os.O_RDONLY)
    try:
        conn = data.PlainConn(server)
        asyncio.run(asyncio.wait_for(data.send_file(conn, fd, 0, False, progress, 5), 20))
        if data.UNSENT_LOW:  # the socket was tuned for sendfile
            assert server.getsockopt(socket.IPPROTO_TCP, data._TCP_NOTSENT_LOWAT) == data.UNSENT_LOW
        asyncio.run(conn.close())
    finally:
        os.close(fd)
    reader.join(20)
    client.close()
    assert progress[0] == len(payload)
    assert bytes(got) == payload


def test_a_whole_file_goes_to_a_unix_socket_from_an_offset(tmp_path):
    """Isolated TLS: the plaintext goes to the helper over a socketpair, untuned;
    a short sendfile there means a full socket, never the end of the file."""
    payload = os.urandom(3 * 1024 * 1024 + 7)
    path = tmp_path / "f"
    path.write_bytes(payload)
    server, client = socket.socketpair()
    client.settimeout(10)
    server.setblocking(False)
    got = bytearray()

    def read() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (chunk := client.recv(1 << 16)):
            got.extend(chunk)
            time.sleep(0.001)  # a slow reader: the socket fills again and again

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    progress = [0]
    fd = os.open(path, os.O_RDONLY)
    try:
        conn = data.PlainConn(server)
        asyncio.run(asyncio.wait_for(data.send_file(conn, fd, 1000, False, progress, 5), 20))
        asyncio.run(conn.close())
    finally:
        os.close(fd)
    reader.join(20)
    client.close()
    assert progress[0] == len(payload) - 1000
    assert bytes(got) == payload[1000:]
