"""Real services for the tests: PostgreSQL, HAProxy, Prometheus and headless
Chromium from Debian (scripts/test-setup installs them; they never run as
system services).  Each one runs on a free loopback port, in a temporary
directory of its own, as the unprivileged account ftpw_svc when the tests run
as root (as the tests' own user otherwise).  A context manager returns once the
service answers (or raises with the service's log after a bounded wait), and on
leaving it stops the process it started by its PID, waits for every process
that process left behind, and removes the directory.  /work/notes/services.md
has examples and timings."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import proc_stat, process_tree

SVC_USER = "ftpw_svc"  # created by scripts/test-setup
PG_USER = "ftpw"  # the database superuser initdb creates
PG_DB = "ftpwarden"
START_TIMEOUT = 20.0  # seconds for a service to answer; a 2-core machine under load included
STOP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (a service started on it soon after gets it, barring a race)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_range(count: int, hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """The first of `count` consecutive ports with nothing on them on every one of `hosts`:
    for passive ranges and the balancer's frontends for them.  Below the ephemeral ports
    (32768-), where no client's port or TIME_WAIT lingers; bound without SO_REUSEADDR, so
    a port in TIME_WAIT (on which HAProxy's bind fails) counts as taken."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(12000, 32000 - count)
        socks: list[socket.socket] = []
        try:
            for host in hosts:
                for port in range(base, base + count):
                    socks.append(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET))
                    socks[-1].bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} free ports in a row")


def _account() -> tuple[int, int] | None:
    """(uid, gid) to run services as: ftpw_svc under root, None (ourselves) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SVC_USER)
    except KeyError:
        raise RuntimeError(f"no account {SVC_USER}: run scripts/test-setup") from None
    return pw.pw_uid, pw.pw_gid


def _need(program: str) -> str:
    path = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")  # sbin: off a normal user's PATH
    if path is None:
        raise RuntimeError(f"{program} is not installed: run scripts/test-setup")
    return path


@dataclass
class Service:
    """A running service: the process we started, its directory, and where it answers."""

    name: str
    proc: subprocess.Popen[bytes]
    work: Path
    port: int
    url: str = ""

    def log(self) -> str:
        """What the service wrote to stdout and stderr so far."""
        try:
            return (self.work / f"{self.name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextmanager
def _workdir(name: str) -> Iterator[Path]:
    """A fresh directory owned by the service's account, removed at the end."""
    # /tmp, not $TMPDIR: the account must reach it, and PostgreSQL's socket path must stay short
    work = Path(tempfile.mkdtemp(prefix=f"ftpw-{name}-", dir="/tmp"))
    try:
        if (acct := _account()) is not None:
            os.chown(work, *acct)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _spawn(argv: list[str], work: Path, log_name: str, *, stdout_pipe: bool = False,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in `work` as the service account, in a session of its own, with a
    minimal environment; stderr (and stdout unless piped) goes to work/LOG_NAME.log."""
    acct = _account()
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    ids: dict[str, Any] = {} if acct is None else {"user": acct[0], "group": acct[1], "extra_groups": []}
    with open(work / f"{log_name}.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(argv, cwd=work, env={**base, **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout_pipe else log, stderr=log,
                                start_new_session=True, **ids)


def _run(argv: list[str], work: Path, timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    """A short command (initdb, haproxy -c) as the service account; its output captured."""
    acct = _account()
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    ids: dict[str, Any] = {} if acct is None else {"user": acct[0], "group": acct[1], "extra_groups": []}
    return subprocess.run(argv, cwd=work, env={**base, **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, **ids)


def processes_in(work: Path) -> list[int]:
    """Live processes of the service account whose command line names `work`: what a
    service started from that directory left running (zombies excluded)."""
    uid = os.geteuid() if (acct := _account()) is None else acct[0]
    needle = str(work).encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid or needle not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        if (st := proc_stat(pid)) is not None and st[1] != "Z":
            out.append(pid)
    return out


def _started(pid: int) -> int | None:
    """When a process started (clock ticks after boot): with its PID, names it beyond PID reuse."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def _stop(svc: Service, sig: int = signal.SIGTERM) -> None:
    """Stop the process we started with `sig` (SIGKILL after STOP_TIMEOUT), then its
    descendants and anything else still running from its directory: all ours."""
    ours = {pid: _started(pid) for pid in [*process_tree(svc.proc.pid), *processes_in(svc.work)]}

    def _alive(pid: int) -> bool:  # still running, and still the process we saw (not a reused PID)
        st = proc_stat(pid)
        return st is not None and st[1] != "Z" and (pid not in ours or _started(pid) == ours[pid])

    if svc.proc.poll() is None:
        try:
            svc.proc.send_signal(sig)
            svc.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait(5)
    if svc.proc.stdout is not None:
        svc.proc.stdout.close()
    deadline = time.monotonic() + STOP_TIMEOUT
    while (left := [p for p in {*ours, *processes_in(svc.work)} if _alive(p)]) and time.monotonic() < deadline:
        if time.monotonic() > deadline - STOP_TIMEOUT / 2:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    if left:
        raise RuntimeError(f"{svc.name}: processes {left} still run after stop")


def _wait_ready(svc: Service, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    """Return once `ready()` is true; raise with the log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"{svc.name} exited with status {svc.proc.returncode}:\n{svc.log()[-4000:]}")
        if ready():
            return
        time.sleep(0.05)
    _stop(svc)
    raise RuntimeError(f"{svc.name} not ready after {timeout:.0f}s:\n{svc.log()[-4000:]}")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP socket listens on host:port (from /proc/net: no connection made,
    so a proxy in front of a test's backend sees nothing)."""
    want = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc/net prints each 32-bit word in host (little-endian) order
            addr = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            if addr in (want, bytes(len(want))):  # the address itself, or the wildcard
                return True
    return False


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_bin(program: str) -> str:
    """A PostgreSQL server program, 15 preferred (Debian keeps them off PATH)."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name != "15")
    for d in dirs:
        if (d / program).exists():
            return str(d / program)
    raise RuntimeError(f"PostgreSQL's {program} is not installed: run scripts/test-setup")


@dataclass
class Postgres(Service):
    """A PostgreSQL cluster of our own: `url` names the database `ftpwarden`, whose owner
    is the superuser `ftpw` (trust on 127.0.0.1, or the password given to postgres())."""

    password: str | None = None

    def psql(self, sql: str, *, check: bool = True, db: str = PG_DB, timeout: float = 15.0
             ) -> subprocess.CompletedProcess[str]:
        """Run `sql` through psql over TCP (unaligned, tuples only); check=True raises on an error."""
        env = dict(os.environ, PGPASSWORD=self.password or "", PGCONNECT_TIMEOUT="5")
        r = subprocess.run([_need("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: exit status {r.returncode}: {r.stderr}")
        return r

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, nothing is lost): a database going down mid-test."""
        _stop(self, signal.SIGINT)

    def start(self) -> None:
        """Start it again after stop(), on the same port and data."""
        if self.proc.poll() is None:
            return
        self.proc = _spawn(_pg_server_argv(self.work, self.port), self.work, self.name)
        _wait_ready(self, lambda: _pg_ready(self.port))


def _pg_server_argv(work: Path, port: int) -> list[str]:
    # fsync and friends off: a test database, thrown away at the end
    return [_pg_bin("postgres"), "-D", str(work / "data"), "-p", str(port), "-k", str(work),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off"]


def _pg_ready(port: int) -> bool:
    r = subprocess.run([_need("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                        "-d", "postgres", "-t", "1"], capture_output=True, timeout=5)
    return r.returncode == 0


@contextmanager
def postgres(password: str | None = None) -> Iterator[Postgres]:
    """A fresh PostgreSQL on a free port of 127.0.0.1: initdb in a temporary directory,
    then the server in the foreground (our child, so we stop exactly it).  With a
    password, TCP logins need it (scram-sha-256) and `url` carries it."""
    with _workdir("postgres") as work:
        args = [_pg_bin("initdb"), "-D", str(work / "data"), "-U", PG_USER, "--no-sync", "-E", "UTF8",
                "--locale=C.UTF-8", "--no-instructions", "--auth-local=trust"]
        if password is None:
            args.append("--auth-host=trust")
        else:
            (work / "pw").write_text(password + "\n")
            if (acct := _account()) is not None:
                os.chown(work / "pw", *acct)
            args += ["--auth-host=scram-sha-256", f"--pwfile={work / 'pw'}"]
        r = _run(args, work, timeout=60)
        (work / "pw").unlink(missing_ok=True)
        if r.returncode != 0:
            raise RuntimeError(f"initdb: exit status {r.returncode}:\n{r.stdout}{r.stderr}")
        port = free_port()
        cred = PG_USER if password is None else f"{PG_USER}:{urllib.parse.quote(password, safe='')}"
        pg = Postgres("postgres", _spawn(_pg_server_argv(work, port), work, "postgres"), work, port,
                      f"postgresql://{cred}@127.0.0.1:{port}/{PG_DB}", password)
        try:
            _wait_ready(pg, lambda: _pg_ready(port))
            pg.psql(f"CREATE DATABASE {PG_DB}", db="postgres")
            yield pg
        finally:
            pg.stop()


# --- HAProxy ----------------------------------------------------------------------------------

def _bind_ports(cfg_text: str) -> list[tuple[str, int]]:
    """(host, first port) of each `bind` line: what must listen before HAProxy is ready."""
    out = []
    for m in re.finditer(r"^\s*bind\s+(\[[^\]]*\]|[^\s:]*):(\d+)", cfg_text, re.M):
        host = m.group(1).strip("[]") or "0.0.0.0"
        out.append((host if host not in ("0.0.0.0", "*", "::") else "127.0.0.1", int(m.group(2))))
    return out


@contextmanager
def haproxy(cfg_text: str) -> Iterator[Service]:
    """HAProxy in the foreground (-db) with this configuration (ports chosen by the caller,
    e.g. with free_port()); checked first with `haproxy -c`, whose report a bad
    configuration raises.  Ready once every `bind` port listens."""
    exe = _need("haproxy")
    with _workdir("haproxy") as work:
        cfg = work / "haproxy.cfg"
        cfg.write_text(cfg_text)
        r = _run([exe, "-c", "-f", str(cfg)], work, timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"haproxy -c: exit status {r.returncode}:\n{r.stdout}{r.stderr}")
        binds = _bind_ports(cfg_text)
        svc = Service("haproxy", _spawn([exe, "-f", str(cfg), "-db"], work, "haproxy"), work,
                      binds[0][1] if binds else 0)
        try:
            _wait_ready(svc, lambda: all(listening(p, h) for h, p in binds))
            yield svc
        finally:
            _stop(svc)  # SIGTERM: HAProxy's hard stop, connections closed at once


# --- Prometheus -------------------------------------------------------------------------------

def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def prometheus(targets: list[str], metrics_path: str = "/metrics",
               scrape_interval: str = "1s") -> Iterator[Service]:
    """Prometheus scraping `targets` ("127.0.0.1:PORT") every second as job `ftpwarden`, its
    database in a temporary directory; `url` is its base URL (for query())."""
    exe = _need("prometheus")
    with _workdir("prometheus") as work:
        cfg = work / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": "ftpwarden", "metrics_path": metrics_path,
                                "static_configs": [{"targets": targets}]}],
        }, indent=1))
        port = free_port()
        argv = [exe, f"--config.file={cfg}", f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        svc = Service("prometheus", _spawn(argv, work, "prometheus"), work, port, f"http://127.0.0.1:{port}")
        try:
            _wait_ready(svc, lambda: _http_ok(f"{svc.url}/-/ready"))
            yield svc
        finally:
            _stop(svc)


def query(url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: the result list, each item
    {"metric": {labels}, "value": [time, "string value"]}; a bad query raises with its error."""
    q = urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
        raise RuntimeError(f"query {promql!r}: HTTP {e.code}: {body.get('error', '')}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r}: {body}")
    return list(body["data"]["result"])


# --- Chromium ---------------------------------------------------------------------------------

@contextmanager
def _chromium_run(url: str, timeout: float, shot_size: tuple[int, int] | None = None
                  ) -> Iterator[tuple[bytes, Path]]:
    """Headless Chromium on `url` with its own profile, bounded by `timeout`: (stdout, work dir);
    --dump-dom, or with `shot_size` a screenshot to WORK/shot.png.  As the unprivileged
    account it keeps its sandbox (user namespaces): no --no-sandbox."""
    exe = _need("chromium")
    with _workdir("chromium") as work:
        what = (["--dump-dom"] if shot_size is None else
                [f"--screenshot={work / 'shot.png'}", f"--window-size={shot_size[0]},{shot_size[1]}"])
        argv = [exe, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-dev-shm-usage",  # /dev/shm may be small (containers); /tmp is enough here
                "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={work / 'profile'}",
                *what, url]
        svc = Service("chromium", _spawn(argv, work, "chromium", stdout_pipe=True), work, 0, url)
        try:
            out, _ = svc.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(svc, signal.SIGKILL)
            raise RuntimeError(f"chromium on {url}: no result after {timeout:.0f}s (ran in {work}, now removed):\n"
                               f"{svc.log()[-4000:]}") from None
        try:
            if svc.proc.returncode != 0:
                raise RuntimeError(f"chromium on {url}: exit status {svc.proc.returncode}:\n{svc.log()[-4000:]}")
            yield out, work
        finally:
            _stop(svc)


def chromium_dump_dom(url: str, timeout: float = 30.0) -> str:
    """The page's DOM after load (scripts run) as HTML text: what a browser shows, to check elements."""
    with _chromium_run(url, timeout) as (out, _):
        return out.decode("utf-8", errors="replace")


def chromium_screenshot(url: str, out_png: Path, size: tuple[int, int] = (1280, 800),
                        timeout: float = 30.0) -> Path:
    """A PNG of the page at `size` (width, height) written to `out_png`."""
    with _chromium_run(url, timeout, size) as (_, work):
        shot = work / "shot.png"
        if not shot.exists():
            raise RuntimeError(f"chromium on {url}: no screenshot written")
        shutil.copyfile(shot, out_png)
    return out_png
