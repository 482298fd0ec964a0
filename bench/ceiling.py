"""The machine's loopback ceiling and the benchmark client's own ceilings.

- loopback: `sendfile()` of the big file in one process -> `recv_into()` in another:
  two small helper processes, the fastest a single TCP stream goes here;
- client download: the same sender -> the client's RETR read loop (client.recv_all);
- client upload: the client's STOR path (client.send_file, sendfile) -> a plain reader;
- client TLS download/upload: the same over TLS, the other end a plain Python ssl
  socket (OpenSSL on both sides), to bound the TLS workloads.

If a server's rate comes near the client's ceiling, the client is the bottleneck.

Helper processes (run by the benchmark, one connection each, then they exit):
    python3 bench/ceiling.py serve-send FILE [--tls CERT KEY]
    python3 bench/ceiling.py serve-recv [--tls CERT KEY]
    python3 bench/ceiling.py fetch PORT
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from client import recv_all, send_file, tls_client_context

__all__ = ["measure_ceilings"]

HERE = Path(__file__).resolve().parent
_TIMEOUT = 120


def _listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    return s


def _server_tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _helper(argv: list[str]) -> int:
    what = argv[0]
    tls = _server_tls(argv[argv.index("--tls") + 1], argv[argv.index("--tls") + 2]) if "--tls" in argv else None
    if what == "fetch":
        c = socket.create_connection(("127.0.0.1", int(argv[1])), timeout=_TIMEOUT)
        t = time.perf_counter()
        n = recv_all(c, bytearray(4 << 20))
        print(json.dumps({"bytes": n, "seconds": time.perf_counter() - t}), flush=True)
        return 0
    ls = _listen()
    ls.settimeout(_TIMEOUT)
    conn, _ = ls.accept()
    conn.settimeout(_TIMEOUT)
    if tls is not None:
        conn = tls.wrap_socket(conn, server_side=True)
    if what == "serve-send":
        send_file(conn, argv[1])
        if tls is not None:
            try:
                conn = conn.unwrap()
            except (OSError, ValueError):
                pass
        conn.close()
    elif what == "serve-recv":
        n = recv_all(conn, bytearray(4 << 20))
        print(json.dumps({"bytes": n}), flush=True)
        conn.close()
    return 0


def _spawn(*args: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, str(HERE / "ceiling.py"), *args], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.strip().isdigit():
        p.kill()
        p.wait()
        raise RuntimeError(f"ceiling helper {args[0]} did not start")
    return p, int(line)


def _finish(p: subprocess.Popen) -> str:
    try:
        out = p.stdout.readline()
        p.wait(timeout=_TIMEOUT)
        return out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / 2**20 / seconds if seconds > 0 else 0.0


def loopback(big: Path) -> dict:
    send, port = _spawn("serve-send", str(big))
    fetch = subprocess.run([sys.executable, str(HERE / "ceiling.py"), "fetch", str(port)],
                           capture_output=True, text=True, timeout=_TIMEOUT)
    _finish(send)
    r = json.loads(fetch.stdout)
    return {"mib_s": _rate(r["bytes"], r["seconds"]), "bytes": r["bytes"]}


def client_download(big: Path, tls: tuple[str, str] | None = None) -> dict:
    send, port = _spawn("serve-send", str(big), *(("--tls", *tls) if tls else ()))
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        if tls:
            s = tls_client_context().wrap_socket(s)
        n = recv_all(s, bytearray(4 << 20))
        t1, c1 = time.perf_counter(), time.process_time()
        s.close()
    finally:
        _finish(send)
    return {"mib_s": _rate(n, t1 - t0), "client_cores": (c1 - c0) / (t1 - t0), "bytes": n}


def client_upload(big: Path, tls: tuple[str, str] | None = None) -> dict:
    recv, port = _spawn("serve-recv", *(("--tls", *tls) if tls else ()))
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        if tls:
            s = tls_client_context().wrap_socket(s)
        send_file(s, str(big))
        if tls:
            try:
                s = s.unwrap()
            except (OSError, ValueError):
                pass
        else:
            s.shutdown(socket.SHUT_WR)
        c1 = time.process_time()
        out = recv.stdout.readline()  # the reader has seen EOF
        t1 = time.perf_counter()
        s.close()
        n = json.loads(out)["bytes"]
    finally:
        _finish(recv)
    return {"mib_s": _rate(n, t1 - t0), "client_cores": (c1 - c0) / (t1 - t0), "bytes": n}


def measure_ceilings(big: Path, cert: Path | None, key: Path | None, with_tls: bool) -> dict[str, dict]:
    """One sample of each ceiling: name -> {"mib_s": ..., ...}; failures -> {"error": ...}."""
    tls = (str(cert), str(key)) if cert and key else None
    tests = {
        "loopback": lambda: loopback(big),
        "client_download": lambda: client_download(big),
        "client_upload": lambda: client_upload(big),
    }
    if with_tls and tls:
        tests["client_tls_download"] = lambda: client_download(big, tls)
        tests["client_tls_upload"] = lambda: client_upload(big, tls)
    out = {}
    for name, fn in tests.items():
        try:
            out[name] = fn()
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
