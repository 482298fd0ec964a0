"""Start, watch and stop the servers under test.

Each server runs under bench/reaper.py (a child subreaper), on 127.0.0.1, on a
free high port with its own passive port range, stdout/stderr in files of the
temp dir. It is ready when a TCP connect gets a 220 banner; then one real login
and one download must work, or the server is reported "n/a (reason)".

Accounting over the server's whole process tree, found by scanning /proc
for parent links (the kernel here has no /proc/PID/task/TID/children):
- CPU: utime+stime+cutime+cstime of every live process below the reaper, plus
  the reaper's own cutime+cstime (everything that exited and was reaped there);
- memory: Pss, and Private_Clean+Private_Dirty (USS) from /proc/PID/smaps_rollup,
  summed over the live processes below the reaper.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from client import Control, FtpError, tls_client_context, wait_ready
from fixture import BENCH, PAM_SERVICE, PASSWORD, SECURE_CHROOT_DIR, SRC, USER, Fixture, first_line

__all__ = ["ALL_SERVERS", "ISOLATED", "ISOLATED_DEFAULT", "FEATURES", "Server", "Unavailable", "start_server",
           "server_version", "PortPlan", "proc_table"]

ALL_SERVERS = ["ftpwarden-pooled", "ftpwarden-isolated", "ftpwarden-isolated-process",
               "ftpwarden-isolated-nosandbox", "pyftpdlib", "vsftpd"]
ISOLATED = ("ftpwarden-isolated", "ftpwarden-isolated-process", "ftpwarden-isolated-nosandbox")  # root only
# what `--servers ftpwarden` means as root (the no-sandbox variant only measures the sandboxes' cost)
ISOLATED_DEFAULT = ISOLATED[:2]
# What a workload may ask of a server beside the common setup (Workload.features):
# "anonymous": anonymous logins (read-only) on the data directory;
# "local": the system users fixture.LOCAL_USERS log in (PAM service PAM_SERVICE).
FEATURES = ("anonymous", "local")
VSFTPD = "/usr/sbin/vsftpd"
HOST = "127.0.0.1"
_CLK = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class Unavailable(Exception):
    """This server cannot be measured in this run; str(e) says why."""


# -- /proc ---------------------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (ppid, state, own ticks utime+stime, children ticks cutime+cstime)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        x = stat[stat.rindex(b")") + 2:].split()
        out[int(name)] = (int(x[1]), x[0].decode(), int(x[11]) + int(x[12]), int(x[13]) + int(x[14]))
    return out


def descendants(root: int, table: dict[int, tuple[int, str, int, int]]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


SESSION_COMMS = ("ftpwarden-login", "ftpwarden-user")  # priv/zygote.py's names of its children


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _smaps_rollup(pid: int) -> tuple[int, int]:
    pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    uss += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, uss


# -- ports ---------------------------------------------------------------------------
class PortPlan:
    """Control ports from 20000 up (checked free); 1000 passive ports per instance
    from 21000 up: below Linux's ephemeral range (32768+), so clients never collide.
    11 ranges, given back when an instance stops; at most 9 instances run at once.
    (500 were too few for 200 busy clients: vsftpd tries 10 random ports, then 500 OOPS.)"""

    def __init__(self) -> None:
        self._next_ctrl = 20000
        self._free_pasv = [(lo, lo + 999) for lo in range(21000, 32000, 1000)]

    def control(self) -> int:
        while self._next_ctrl < 21000:
            port = self._next_ctrl
            self._next_ctrl += 1
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                    return port
                except OSError:
                    continue
        raise Unavailable("no free control port in 20000-20999")

    def pasv(self) -> tuple[int, int]:
        if not self._free_pasv:
            raise Unavailable("out of passive port ranges")
        return self._free_pasv.pop(0)

    def release(self, pasv: tuple[int, int]) -> None:
        """A stopped server's passive range can be used again."""
        if pasv not in self._free_pasv:
            self._free_pasv.append(pasv)


# -- a running server ------------------------------------------------------------------
@dataclass
class Server:
    name: str
    tls: bool
    port: int
    pasv: tuple[int, int]
    proc: subprocess.Popen
    logs: Path  # config and logs: this path + .conf, .stdout, .stderr
    version: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name + (" (TLS)" if self.tls else "")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        table = proc_table()
        root = table.get(self.proc.pid)
        ticks = root[3] if root else 0
        for pid in descendants(self.proc.pid, table):
            ticks += table[pid][2] + table[pid][3]
        return ticks / _CLK

    def memory(self) -> dict[str, float]:
        """PSS and USS (KiB) summed over the live tree, and its number of processes."""
        table = proc_table()
        pss = uss = procs = 0
        for pid in descendants(self.proc.pid, table):
            if table[pid][1] == "Z":
                continue
            p, u = _smaps_rollup(pid)
            pss, uss, procs = pss + p, uss + u, procs + 1
        return {"pss_kib": pss, "uss_kib": uss, "procs": procs}

    def root_rss_kib(self, uss: bool = False) -> int:
        """RSS summed over the tree's live processes running as root (uid 0): what
        unauthenticated clients can make privileged processes hold. Shared pages count
        in every process, as RSS does; read from /proc/PID/statm, fast enough to sample.
        `uss`: the private memory (USS, from smaps_rollup) instead: slower, exact."""
        total = 0
        table = proc_table()
        for pid in descendants(self.proc.pid, table):
            if table[pid][1] == "Z":
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid != 0:
                    continue
                if uss:
                    total += _smaps_rollup(pid)[1]
                    continue
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * _PAGE_KIB
            except (OSError, ValueError, IndexError):
                continue
        return total

    def nprocs(self) -> int:
        table = proc_table()
        return sum(1 for pid in descendants(self.proc.pid, table) if table[pid][1] != "Z")

    def session_procs(self) -> int:
        """Processes that exist for sessions, not for the server itself: isolated ftpwarden's
        pre-login processes, TLS helpers and identity workers (an idle one lingers 10 s after
        its last session), vsftpd's per-session processes (below its listener). 0 elsewhere."""
        table = proc_table()
        live = [pid for pid in descendants(self.proc.pid, table) if table[pid][1] != "Z"]
        if self.name in ISOLATED:
            return sum(1 for pid in live if _comm(pid) in SESSION_COMMS)
        if self.name == "vsftpd":
            top = {pid for pid in live if table[pid][0] == self.proc.pid}
            return sum(1 for pid in live if pid not in top)
        return 0

    def first_error(self) -> str:
        for name in ("stderr", "stdout"):
            try:
                text = Path(f"{self.logs}.{name}").read_text(errors="replace")
            except OSError:
                continue
            lines = [ln for ln in text.splitlines() if ln.strip()]
            errors = [ln for ln in lines if not ln.lower().startswith("warning")]
            if errors and errors[0].startswith("Traceback"):
                return first_line(lines[-1])  # the exception, not the traceback's header
            if lines:
                return first_line((errors or lines)[0])
        return f"exited with status {self.proc.poll()}"

    def stop(self) -> None:
        """SIGTERM (passed on by the reaper), then SIGKILL by PID for whatever is left."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        left = descendants(self.proc.pid, proc_table()) if self.proc.poll() is None else []
        for pid in left + ([self.proc.pid] if self.proc.poll() is None else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# -- the servers -----------------------------------------------------------------------
def _conf(lines: dict[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _ftpwarden(name: str, fx: Fixture, port: int, pasv: tuple[int, int], tls: bool, conf: Path,
               features: frozenset[str]):
    if fx.userdb is None:
        raise Unavailable(fx.userdb_error or "no user DB")
    if name in ISOLATED and os.geteuid() != 0:
        raise Unavailable("isolated mode needs root")
    opts: dict[str, object] = {
        "listen": "YES", "listen_port": port, "listen_address": HOST,
        "anonymous_enable": "NO", "write_enable": "YES",
        "user_db_file": fx.userdb, "local_root": fx.data,
        "pasv_min_port": pasv[0], "pasv_max_port": pasv[1],
        "max_clients": 5000, "max_per_ip": 5000,
    }
    if name == "ftpwarden-pooled":
        opts["pooled"] = "YES"
    else:
        opts["secure_chroot_dir"] = SECURE_CHROOT_DIR
    if name == "ftpwarden-isolated-process":
        opts["session_isolation"] = "process"
    if name == "ftpwarden-isolated-nosandbox":  # vsftpd's three sandboxes off: what they cost
        opts.update(isolate="NO", isolate_network="NO", seccomp_sandbox="NO")
    if "anonymous" in features:
        opts.update(anonymous_enable="YES", anon_root=fx.data, no_anon_password="YES")
    if "local" in features:
        if name not in ISOLATED:
            raise Unavailable("system users log in only in isolated mode")
        if not fx.local_users:
            raise Unavailable(fx.local_users_error or "no local users (needs root)")
        opts.update(local_enable="YES", pam_service_name=PAM_SERVICE)
    if tls:
        if fx.cert is None:
            raise Unavailable(fx.cert_error or "no certificate")
        opts.update(ssl_enable="YES", rsa_cert_file=fx.cert, rsa_private_key_file=fx.key)
    conf.write_text(_conf(opts))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return [sys.executable, "-m", "ftpwarden", "serve", "--config", str(conf)], env


def _pyftpdlib(fx: Fixture, port: int, pasv: tuple[int, int], tls: bool, features: frozenset[str]):
    if "local" in features:
        raise Unavailable("no system users (DummyAuthorizer)")
    argv = [sys.executable, str(BENCH / "pyftpdlib_server.py"), "--port", str(port), "--root", str(fx.data),
            "--pasv", f"{pasv[0]}-{pasv[1]}"] + (["--anonymous"] if "anonymous" in features else [])
    if tls:
        if fx.cert is None:
            raise Unavailable(fx.cert_error or "no certificate")
        argv += ["--tls", str(fx.cert), str(fx.key)]
    return argv, dict(os.environ)


def _vsftpd(fx: Fixture, port: int, pasv: tuple[int, int], tls: bool, conf: Path, features: frozenset[str]):
    if os.geteuid() != 0:
        raise Unavailable("vsftpd needs root")
    if not os.path.exists(VSFTPD):
        raise Unavailable(f"{VSFTPD} not installed")
    if not fx.system_user:
        raise Unavailable(fx.system_user_error or "no system user")
    opts: dict[str, object] = {
        "listen": "YES", "listen_port": port, "listen_address": HOST, "background": "NO",
        "anonymous_enable": "NO", "local_enable": "YES", "write_enable": "YES",
        "pam_service_name": PAM_SERVICE, "local_root": fx.data, "chroot_local_user": "NO",
        "pasv_min_port": pasv[0], "pasv_max_port": pasv[1],
        "max_clients": 5000, "max_per_ip": 5000,
        "secure_chroot_dir": SECURE_CHROOT_DIR, "xferlog_enable": "NO",
    }
    if "anonymous" in features:  # as ftp_username (Debian's "ftp"), chrooted to anon_root
        opts.update(anonymous_enable="YES", anon_root=fx.data, no_anon_password="YES")
    if "local" in features and not fx.local_users:
        raise Unavailable(fx.local_users_error or "no local users")
    if tls:
        if fx.cert is None:
            raise Unavailable(fx.cert_error or "no certificate")
        # ssl_ciphers: 3.0.3's default (DES-CBC3-SHA) is refused by OpenSSL 3.
        opts.update(ssl_enable="YES", rsa_cert_file=fx.cert, rsa_private_key_file=fx.key, ssl_ciphers="HIGH")
    conf.write_text(_conf(opts))
    return [VSFTPD, str(conf)], dict(os.environ)


def server_version(name: str) -> str:
    try:
        if name.startswith("ftpwarden"):
            m = re.search(r'__version__\s*=\s*"([^"]+)"', (SRC / "ftpwarden" / "__init__.py").read_text())
            return m.group(1) if m else "?"
        if name == "pyftpdlib":
            import pyftpdlib
            return pyftpdlib.__ver__
        if name == "vsftpd":
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "vsftpd"], capture_output=True,
                               text=True, timeout=10)
            return r.stdout.strip() or "?"
    except Exception:  # a version string is decoration, never a reason to fail
        pass
    return "?"


def start_server(name: str, fx: Fixture, ports: PortPlan, *, tls: bool = False, tag: str = "",
                 ready_timeout: float = 20.0, features: frozenset[str] = frozenset()) -> Server:
    """Start `name` and check one login and one download; Unavailable if it cannot.
    `tag` names a second instance's config and log files; `features` (FEATURES) what
    it must offer beside the common setup."""
    port, pasv = ports.control(), ports.pasv()
    try:
        return _start(name, fx, port, pasv, tls, f"{name}{'-tls' if tls else ''}{tag}", ready_timeout,
                      features)
    except Unavailable:
        ports.release(pasv)
        raise


def _start(name: str, fx: Fixture, port: int, pasv: tuple[int, int], tls: bool, stem: str,
           ready_timeout: float, features: frozenset[str]) -> Server:
    conf = fx.tmp / f"{stem}.conf"
    if name.startswith("ftpwarden"):
        argv, env = _ftpwarden(name, fx, port, pasv, tls, conf, features)
    elif name == "pyftpdlib":
        argv, env = _pyftpdlib(fx, port, pasv, tls, features)
    elif name == "vsftpd":
        argv, env = _vsftpd(fx, port, pasv, tls, conf, features)
    else:
        raise Unavailable(f"unknown server {name!r}")
    env["BENCH_PARENT_PID"] = str(os.getpid())
    logs = fx.tmp
    with open(logs / f"{stem}.stdout", "wb") as out, open(logs / f"{stem}.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(BENCH / "reaper.py")] + argv, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=env, cwd=str(fx.tmp), start_new_session=True)
    server = Server(name, tls, port, pasv, proc, logs / stem, server_version(name))
    try:
        _check(server, fx, ready_timeout)
    except Unavailable:
        server.stop()
        raise
    return server


def _check(server: Server, fx: Fixture, ready_timeout: float) -> None:
    deadline = time.monotonic() + ready_timeout
    while True:
        if not server.alive():
            raise Unavailable(f"not available: {server.first_error()}")
        try:
            wait_ready(HOST, server.port, min(deadline, time.monotonic() + 0.5))
            break
        except (OSError, FtpError) as e:
            if time.monotonic() >= deadline:
                raise Unavailable(f"not ready after {ready_timeout:.0f}s: {e}") from None
    try:
        c = Control(HOST, server.port, timeout=15, tls=tls_client_context() if server.tls else None)
        try:
            c.login(USER, PASSWORD)
            n = c.retr("small/f00000.bin", bytearray(65536))
            if n != 8192:
                raise FtpError(f"test download gave {n} bytes, not 8192")
        finally:
            c.quit()
    except (OSError, FtpError) as e:
        why = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
        if not server.alive():
            why += f" (server exited: {server.first_error()})"
        raise Unavailable(f"check failed: {why}") from None
