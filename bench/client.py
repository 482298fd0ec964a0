"""A small, fast FTP client for the benchmark.

Raw blocking sockets for the control channel, PASV data connections read with
`recv_into` into one big preallocated buffer (the bytes are counted, never kept),
and uploads with `socket.sendfile` (zero-copy from the page cache). Each
`Control` is used by one thread; concurrency comes from threads, since every
call here that moves data releases the GIL.

TLS (`tls=` an SSLContext): AUTH TLS, PBSZ 0, PROT P, and every data connection
resumes the control connection's TLS session (vsftpd's require_ssl_reuse=YES
insists on it). The data handshake runs after the 1xx reply, as ftplib does.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time

__all__ = ["FtpError", "Control", "recv_all", "send_file", "tls_client_context", "login_once"]

DEFAULT_TIMEOUT = 60.0
_PASV = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
_MAX_REPLY = 64 * 1024


class FtpError(Exception):
    """A reply we did not expect, or a connection that ended early."""


def tls_client_context() -> ssl.SSLContext:
    """Client context for self-signed test certificates (loopback only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def recv_all(sock: socket.socket, buf: bytearray | memoryview, keep: bytearray | None = None) -> int:
    """Read `sock` to EOF into `buf` (overwritten again and again); return the byte count.
    With `keep`, the bytes are also appended there (listings)."""
    view = memoryview(buf)
    total = 0
    recv_into = sock.recv_into
    while True:
        n = recv_into(view)
        if not n:
            return total
        total += n
        if keep is not None:
            keep += view[:n]


def send_file(sock: socket.socket, path: str, chunk: bytearray | None = None) -> int:
    """Send the whole file at `path`: sendfile on a plain socket, read+sendall over TLS."""
    with open(path, "rb") as f:
        if not isinstance(sock, ssl.SSLSocket):
            return sock.sendfile(f)
        view = memoryview(chunk if chunk is not None else bytearray(1 << 20))
        total = 0
        while True:
            n = f.readinto(view)
            if not n:
                return total
            sock.sendall(view[:n])
            total += n


class Control:
    """One FTP control connection."""

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout, self.tls = host, port, timeout, tls
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.banner = self.expect(None, 2)
        except BaseException:
            self.sock.close()
            raise

    # -- replies -----------------------------------------------------------------
    def _line(self) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1:]
                return line.rstrip(b"\r")
            if len(self._buf) > _MAX_REPLY:
                raise FtpError("reply line too long")
            data = self.sock.recv(65536)
            if not data:
                raise FtpError("control connection closed by the server")
            self._buf += data

    def reply(self) -> tuple[int, str]:
        first = self._line()
        code = first[:3]
        if len(first) < 3 or not code.isdigit():
            raise FtpError(f"bad reply line {first[:80]!r}")
        if first[3:4] == b"-":
            while True:
                line = self._line()
                if line[:3] == code and line[3:4] == b" ":
                    break
        return int(code), first.decode("utf-8", "replace")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line)
        return self.reply()

    def expect(self, line: str | None, first_digit: int) -> str:
        code, text = self.cmd(line) if line is not None else self.reply()
        if code // 100 != first_digit:
            shown = "PASS ***" if line and line.startswith("PASS") else line
            raise FtpError(f"{shown or 'greeting'}: {text[:200]}")
        return text

    # -- session -----------------------------------------------------------------
    def login(self, user: str, password: str) -> None:
        if self.tls is not None:
            self.expect("AUTH TLS", 2)
            self.sock = self.tls.wrap_socket(self.sock)
            self._buf = b""
        code, text = self.cmd(f"USER {user}")
        if code == 331:
            code, text = self.cmd(f"PASS {password}")
        if code != 230:
            raise FtpError(f"login refused: {text[:200]}")
        if self.tls is not None:
            self.expect("PBSZ 0", 2)
            self.expect("PROT P", 2)
        self.expect("TYPE I", 2)

    def quit(self) -> None:
        try:
            self.cmd("QUIT")
        except (OSError, FtpError):
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- data --------------------------------------------------------------------
    def _pasv(self) -> socket.socket:
        text = self.expect("PASV", 2)
        m = _PASV.search(text.encode())
        if not m:
            raise FtpError(f"PASV: cannot parse {text[:100]!r}")
        nums = [int(x) for x in m.groups()]
        # Always the control connection's peer: the reply's address is not trusted.
        data = socket.create_connection((self.host, nums[4] * 256 + nums[5]), timeout=self.timeout)
        return data

    def _start(self, line: str) -> socket.socket:
        data = self._pasv()
        try:
            code, text = self.cmd(line)
            if code // 100 != 1:
                raise FtpError(f"{line.split()[0]}: {text[:200]}")
            if self.tls is not None:
                data = self.tls.wrap_socket(data, session=self.sock.session)
            return data
        except BaseException:
            data.close()
            raise

    def _finish(self, data: socket.socket, what: str) -> None:
        if isinstance(data, ssl.SSLSocket):
            try:
                data = data.unwrap()
            except (OSError, ValueError):
                pass
        data.close()
        code, text = self.reply()
        if code // 100 != 2:
            raise FtpError(f"{what}: {text[:200]}")

    def retr(self, path: str, buf: bytearray | memoryview) -> int:
        """Download `path`, discarding the bytes; return how many arrived."""
        data = self._start(f"RETR {path}")
        try:
            n = recv_all(data, buf)
        except BaseException:
            data.close()
            raise
        self._finish(data, "RETR")
        return n

    def stor(self, path: str, local: str) -> int:
        """Upload the local file `local` as `path`; return the bytes sent."""
        data = self._start(f"STOR {path}")
        try:
            n = send_file(data, local)
            if not isinstance(data, ssl.SSLSocket):
                data.shutdown(socket.SHUT_WR)
        except BaseException:
            data.close()
            raise
        self._finish(data, "STOR")
        return n

    def listing(self, verb: str, path: str, buf: bytearray | memoryview) -> bytes:
        """LIST or MLSD of `path`; returns the listing's bytes."""
        data = self._start(f"{verb} {path}")
        keep = bytearray()
        try:
            recv_all(data, buf, keep)
        except BaseException:
            data.close()
            raise
        self._finish(data, verb)
        return bytes(keep)


def login_once(host: str, port: int, user: str, password: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """connect + USER + PASS + QUIT (expects 221), as login_rate does it."""
    c = Control(host, port, timeout=timeout)
    try:
        code, text = c.cmd(f"USER {user}")
        if code == 331:
            code, text = c.cmd(f"PASS {password}")
        if code != 230:
            raise FtpError(f"login refused: {text[:200]}")
        c.expect("QUIT", 2)
    finally:
        c.close()


def wait_ready(host: str, port: int, deadline: float) -> str:
    """Poll until a TCP connect gets a 220 banner; return it (FtpError/OSError at deadline)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            c = Control(host, port, timeout=2.0)
            c.quit()
            return c.banner
        except (OSError, FtpError) as e:
            last = e
            time.sleep(0.05)
    raise FtpError(f"no 220 banner on {host}:{port}: {last}")


if __name__ == "__main__":  # manual use: python3 bench/client.py HOST PORT USER PASS PATH
    import sys
    h, p, u, pw, path = sys.argv[1:6]
    c = Control(h, int(p))
    c.login(u, pw)
    b = bytearray(4 << 20)
    t = time.perf_counter()
    n = c.retr(path, b)
    dt = time.perf_counter() - t
    print(f"{n} bytes in {dt:.3f}s = {n / dt / 2**20:.1f} MiB/s")
    c.quit()
    os._exit(0)
