"""The workloads: each takes one running server and returns one sample of its metrics.

A sample is {"metrics": {key: number}, "expected": {key: n}, "missing": {key: why},
"notes": [str]}; the keys, labels and units are in report.METRICS. Server CPU is the
process tree's CPU time between just before and just after the timed part
(servers.Server.cpu_seconds); client CPU is this process's own CPU time over the
same wall time, in cores (1.0 = one core busy the whole time).

Every loop is bounded in time: socket timeouts on every connection, deadlines on
every loop, thread joins with timeouts.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from client import Control, FtpError, login_once, tls_client_context
from fixture import CHEAP_USER, CONC_SIZE, LOCAL_USERS, PASSWORD, SMALL_SIZE, SRC, USER, Fixture, sha256_file
from servers import HOST, Server

__all__ = ["WORKLOADS", "Workload", "Sample", "hash_check_ms"]

GIB = float(1 << 30)
MIB = float(1 << 20)
LOOP_LIMIT = 300.0  # no single sample may run longer than this


@dataclass
class Sample:
    metrics: dict[str, float] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value
    notes: list[str] = field(default_factory=list)


class Meter:
    """Wall time, server tree CPU and client CPU around a block."""

    def __init__(self, server: Server, settle: Callable[[], None] | None = None) -> None:
        self.server, self.settle = server, settle

    def __enter__(self) -> Meter:
        self.cpu0 = self.server.cpu_seconds()
        self.c0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1, self.c1 = time.perf_counter(), time.process_time()
        if exc[0] is None:
            (self.settle or (lambda: time.sleep(0.2)))()
        self.cpu1 = self.server.cpu_seconds()

    @property
    def wall(self) -> float:
        return self.t1 - self.t0

    @property
    def server_cpu(self) -> float:
        return self.cpu1 - self.cpu0

    @property
    def client_cores(self) -> float:
        return (self.c1 - self.c0) / self.wall if self.wall > 0 else 0.0


@dataclass
class Ctx:
    fx: Fixture
    seq: int = 0
    buf: bytearray = field(default_factory=lambda: bytearray(4 << 20))

    def control(self, server: Server, timeout: float = 60.0, user: str = USER) -> Control:
        c = Control(HOST, server.port, timeout=timeout, tls=tls_client_context() if server.tls else None)
        try:
            c.login(user, PASSWORD)
        except BaseException:
            c.close()
            raise
        return c


def _wait_procs(server: Server, target: int, limit: float) -> None:
    """Let sessions end: wait until the tree is back to `target` processes (bounded)."""
    deadline = time.monotonic() + limit
    while server.nprocs() > target and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


IDLE_SETTLE = 15.0  # seconds for every session process to go: an idle identity worker lingers 10 s


def _no_sessions(server: Server, limit: float = IDLE_SETTLE) -> None:
    """Wait until no process of the tree is there for a session (bounded)."""
    deadline = time.monotonic() + limit
    while server.session_procs() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)


# -- big transfers ------------------------------------------------------------------------
def retr_big(server: Server, ctx: Ctx) -> Sample:
    size = ctx.fx.sizes.big
    c = ctx.control(server, timeout=120)
    try:
        with Meter(server) as m:
            n = c.retr("big.bin", ctx.buf)
    finally:
        c.quit()
    if n != size:
        raise FtpError(f"RETR big.bin gave {n} bytes, not {size}")
    return Sample({"mib_s": n / MIB / m.wall, "cpu_s_per_gib": m.server_cpu / (n / GIB),
                   "client_cores": m.client_cores})


def stor_big(server: Server, ctx: Ctx) -> Sample:
    fx = ctx.fx
    ctx.seq += 1
    name = f"up/{server.name}{'-tls' if server.tls else ''}-{ctx.seq}.bin"
    target = fx.data / name
    c = ctx.control(server, timeout=120)
    try:
        with Meter(server) as m:
            n = c.stor(name, str(fx.data / "big.bin"))
    finally:
        c.quit()
    s = Sample({"mib_s": n / MIB / m.wall, "cpu_s_per_gib": m.server_cpu / (n / GIB),
                "client_cores": m.client_cores})
    try:
        size = target.stat().st_size
        ok = size == fx.sizes.big and sha256_file(target) == fx.big_sha256
        if not ok:
            s.notes.append(f"upload on disk: {size} bytes" + (", sha256 differs" if size == fx.sizes.big else ""))
    except OSError as e:
        ok = False
        s.notes.append(f"upload not found on disk: {e.strerror}")
    finally:
        try:
            target.unlink()
        except OSError:
            pass
    s.metrics["verified"], s.expected["verified"] = int(ok), 1
    return s


# -- many small files ----------------------------------------------------------------------
def retr_small(server: Server, ctx: Ctx) -> Sample:
    count = ctx.fx.sizes.small_files
    lat: list[float] = []
    c = ctx.control(server)
    try:
        deadline = time.monotonic() + LOOP_LIMIT
        with Meter(server) as m:
            for i in range(count):
                t = time.perf_counter()
                n = c.retr(f"small/f{i:05d}.bin", ctx.buf)
                lat.append(time.perf_counter() - t)
                if n != SMALL_SIZE:
                    raise FtpError(f"small/f{i:05d}.bin: {n} bytes, not {SMALL_SIZE}")
                if time.monotonic() > deadline:
                    break
    finally:
        c.quit()
    s = Sample({"files_s": len(lat) / m.wall, "p99_ms": _percentile(lat, 99) * 1e3,
                "cpu_ms_per_file": m.server_cpu * 1e3 / len(lat), "client_cores": m.client_cores})
    if len(lat) < count:
        s.notes.append(f"stopped after {LOOP_LIMIT:.0f}s at {len(lat)} of {count} files")
    return s


def _percentile(values: list[float], p: float) -> float:
    from report import percentile
    return percentile(values, p)


# -- listings --------------------------------------------------------------------------------
LISTINGS_MIN, LISTINGS_MAX, LISTINGS_SECONDS = 3, 50, 0.5  # enough listings for 10 ms CPU ticks


def list_big(server: Server, ctx: Ctx) -> Sample:
    want = ctx.fx.sizes.list_entries
    s = Sample()
    c = ctx.control(server)
    try:
        for verb in ("LIST", "MLSD"):
            key = verb.lower()
            done = 0
            try:
                with Meter(server) as m:
                    while done < LISTINGS_MIN or (done < LISTINGS_MAX
                                                  and time.perf_counter() - m.t0 < LISTINGS_SECONDS):
                        text = c.listing(verb, "list", ctx.buf)
                        done += 1
            except FtpError as e:
                s.missing[f"{key}_ms"] = s.missing[f"{key}_cpu_ms"] = str(e)
                continue
            seen = text.count(b"entry-")
            if seen != want:
                s.notes.append(f"{verb} listed {seen} of {want} entries")
            s.metrics[f"{key}_ms"] = m.wall * 1e3 / done
            s.metrics[f"{key}_cpu_ms"] = m.server_cpu * 1e3 / done
    finally:
        c.quit()
    return s


# -- logins ----------------------------------------------------------------------------------------
def hash_check_ms(server_name: str, fx: Fixture) -> tuple[float | None, str]:
    """The CPU cost of one password check of benchuser's stored hash, measured alone in this
    process (median of 7): ftpwarden's verify_password on the user DB's hash, crypt(3) on
    the shadow hash for vsftpd (what pam_unix computes), a dict compare for pyftpdlib.
    Returns (ms or None, what was measured or why not)."""
    kind = "ftpwarden" if server_name.startswith("ftpwarden") else server_name
    what, fn = "", None
    try:
        if kind == "ftpwarden":
            if str(SRC) not in sys.path:
                sys.path.insert(0, str(SRC))
            from ftpwarden.policy.passwords import verify_password
            stored = fx.userdb_hash()
            what = (stored or "?").split("$")[1] + (" " + stored.split("$")[2] if stored else "")
            fn = lambda: verify_password(PASSWORD, stored)  # noqa: E731
        elif kind == "vsftpd":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            stored = fx.shadow_hash()
            what = "crypt(3) $" + (stored or "?").split("$")[1] + "$"
            fn = lambda: crypt.crypt(PASSWORD, stored) == stored  # noqa: E731
        elif kind == "pyftpdlib":
            from pyftpdlib.authorizers import DummyAuthorizer
            auth = DummyAuthorizer()
            auth.add_user(USER, PASSWORD, str(fx.data))
            what = "plain-text compare (DummyAuthorizer)"

            def fn() -> bool:  # 1000 checks, one is too short to time; raises if refused
                for _ in range(1000):
                    auth.validate_authentication(USER, PASSWORD, None)
                return True
        if fn is None:
            return None, "unknown server"
        times = []
        for _ in range(7):
            t = time.thread_time()  # CPU, not wall: steady on a busy machine, and comparable
            ok = fn()               # with the server's CPU per login
            times.append(time.thread_time() - t)
            if not ok:
                return None, "the stored hash did not verify"
    except Exception as e:  # the hash check is a side figure: never fail the run for it
        return None, f"{type(e).__name__}: {e}"
    times.sort()
    return times[len(times) // 2] * 1e3 / (1000 if kind == "pyftpdlib" else 1), what


def _login_loop(server: Server, ctx: Ctx, user: str) -> tuple[int, Meter, list[str], int]:
    """`login_clients` threads log `user` in and out for `login_seconds`:
    (logins done, the meter around them, some errors, failures)."""
    sizes = ctx.fx.sizes
    base_procs = server.nprocs()
    deadline = time.perf_counter() + sizes.login_seconds
    counts = [0] * sizes.login_clients
    fails = [0] * sizes.login_clients
    errors: list[str] = []

    def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            try:
                login_once(HOST, server.port, user, PASSWORD, timeout=30)
                counts[i] += 1
            except (OSError, FtpError) as e:
                fails[i] += 1
                if len(errors) < 3:
                    errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sizes.login_clients)]
    with Meter(server, settle=lambda: _wait_procs(server, base_procs, 10)) as m:
        for t in threads:
            t.start()
        for t in threads:
            t.join(sizes.login_seconds + 60)
    return sum(counts), m, errors, sum(fails)


def login_rate(server: Server, ctx: Ctx) -> Sample:
    done, m, errors, failed = _login_loop(server, ctx, USER)
    s = Sample(notes=[f"failed logins: {failed} (e.g. {errors[0]})"] if errors else [])
    if not done:
        raise FtpError(f"no login succeeded: {errors[:1]}")
    s.metrics = {"logins_s": done / m.wall, "cpu_ms_per_login": m.server_cpu * 1e3 / done,
                 "client_cores": m.client_cores}
    ms, what = hash_check_ms(server.name, ctx.fx)
    if ms is not None:
        s.metrics["hash_ms"] = ms
        s.metrics["overhead_ms"] = s.metrics["cpu_ms_per_login"] - ms
        s.notes.append(f"password hash: {what}")
    else:
        s.missing["hash_ms"] = s.missing["overhead_ms"] = what
    # The subtraction above carries the hash's noise (two checks at once share the caches:
    # +-10% of 30 ms is 3 ms). ftpwarden's DB has a second user whose scrypt costs
    # microseconds: its logins measure the server's own work per login directly.
    if server.name.startswith("ftpwarden") and ctx.fx.userdb is not None:
        done2, m2, errors2, _ = _login_loop(server, ctx, CHEAP_USER)
        if done2:
            s.metrics["beyond_check_ms"] = m2.server_cpu * 1e3 / done2
        else:
            s.missing["beyond_check_ms"] = f"no login succeeded: {errors2[:1]}"
    elif server.name == "pyftpdlib":  # its check is a dict compare: the whole login is beyond it
        s.metrics["beyond_check_ms"] = s.metrics["cpu_ms_per_login"]
    elif server.name == "vsftpd" and ctx.fx.system_user:
        # benchcheap's shadow hash is SHA-512 at 1000 rounds: pam_unix's check is well under
        # a millisecond, measured here and taken off (what is left: vsftpd's own work, PAM's setup)
        done2, m2, errors2, _ = _login_loop(server, ctx, CHEAP_USER)
        cheap_ms, cheap_what = _crypt_check_ms(ctx.fx.shadow_hash(CHEAP_USER))
        if done2 and cheap_ms is not None:
            s.metrics["beyond_check_ms"] = m2.server_cpu * 1e3 / done2 - cheap_ms
            s.notes.append(f"cheap-hash user: {cheap_what}, {cheap_ms:.2f} ms per check (taken off)")
        else:
            s.missing["beyond_check_ms"] = f"no login succeeded: {errors2[:1]}" if not done2 else cheap_what
    else:
        s.missing["beyond_check_ms"] = "its password check cannot be made cheap"
    return s


def _crypt_check_ms(stored: str | None) -> tuple[float | None, str]:
    """CPU ms of one crypt(3) check of `stored` (median of 7), and what it was."""
    if not stored or "$" not in stored:
        return None, "no shadow hash"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    times = []
    for _ in range(7):
        t = time.thread_time()
        crypt.crypt(PASSWORD, stored)
        times.append(time.thread_time() - t)
    times.sort()
    return times[3] * 1e3, "crypt(3) $" + stored.split("$")[1] + "$ " + stored.split("$")[2]


# -- many clients ----------------------------------------------------------------------------------
MIN_AVAILABLE = 2 << 30  # idle workloads stop opening sessions when the machine has less free (bytes)
BATCH = 64  # sessions opened between two looks at the free memory


def mem_available() -> int:
    """MemAvailable of /proc/meminfo, in bytes (a large number if unreadable)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def _open_sessions(server: Server, ctx: Ctx, n: int, parallel: int = 16,
                   user_of: Callable[[int], str] = lambda _i: USER, first: int = 0,
                   guard: list[str] | None = None) -> tuple[list[Control], list[str]]:
    """Log `n` sessions in, `parallel` at a time; return the ones that made it and the errors.
    Session i logs in as user_of(first + i). With `guard` (a list), opening stops early when
    the machine's free memory falls under MIN_AVAILABLE, and the reason is appended to it."""
    errors: list[str] = []

    def one(i: int) -> Control | None:
        try:
            return ctx.control(server, timeout=60, user=user_of(first + i))
        except (OSError, FtpError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            return None

    sessions: list[Control] = []
    deadline = time.monotonic() + LOOP_LIMIT
    with ThreadPoolExecutor(parallel) as pool:
        for lo in range(0, n, BATCH if guard is not None else max(n, 1)):
            if guard is not None:
                free = mem_available()
                if free < MIN_AVAILABLE:
                    guard.append(f"stopped at {first + lo} sessions: {free / 2**30:.1f} GiB free "
                                 f"(< {MIN_AVAILABLE / 2**30:.0f} GiB)")
                    break
            left = max(1.0, deadline - time.monotonic())
            batch = pool.map(one, range(lo, min(n, lo + (BATCH if guard is not None else n))), timeout=left)
            sessions += [c for c in batch if c is not None]
    return sessions, errors


def _close_all(sessions: list[Control]) -> None:
    for c in sessions:
        c.close()


def concurrent(server: Server, ctx: Ctx) -> Sample:
    sizes = ctx.fx.sizes
    n = sizes.concurrent
    base_procs = server.nprocs()
    sessions, errors = _open_sessions(server, ctx, n)
    got = [0] * len(sessions)
    ends = [0.0] * len(sessions)
    fails: list[str] = []
    failed: set[int] = set()
    start = threading.Barrier(len(sessions) + 1, timeout=120)
    t0 = [0.0]

    def worker(i: int) -> None:
        c, buf = sessions[i], bytearray(1 << 20)
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        deadline = t0[0] + sizes.concurrent_seconds
        try:
            while time.perf_counter() < deadline:
                got[i] += c.retr("c10m.bin", buf)
                ends[i] = time.perf_counter()
        except (OSError, FtpError) as e:
            fails.append(f"{type(e).__name__}: {e}")
            failed.add(i)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(sessions))]
    for t in threads:
        t.start()
    try:
        with Meter(server) as m:
            t0[0] = time.perf_counter()
            start.wait()
            for t in threads:
                t.join(sizes.concurrent_seconds + 120)
    finally:
        _close_all(sessions)
    _wait_procs(server, base_procs, 10)
    total = sum(got)
    if not total:
        raise FtpError(f"no download completed: {(errors + fails)[:1]}")
    wall = max(ends) - t0[0]
    # A client that failed is measured over the whole window; one that never logged in got 0.
    rates = [g / MIB / (wall if i in failed or not g else e - t0[0])
             for i, (g, e) in enumerate(zip(got, ends, strict=True))]
    s = Sample({"agg_mib_s": total / MIB / wall, "slowest_mib_s": min(rates) if len(sessions) == n else 0.0,
                "cpu_s_per_gib": m.server_cpu / (total / GIB), "client_cores": m.client_cores,
                "clients_ok": len(sessions) - len(fails)}, {"clients_ok": n})
    if errors or fails:
        s.notes.append(f"{n - len(sessions)} logins and {len(fails)} clients failed: {(errors + fails)[0]}")
    s.notes.append(f"{total / CONC_SIZE:.0f} downloads of 10 MiB in {wall:.1f}s")
    return s


def _anonymous(_i: int) -> str:
    return "anonymous"


def _local_user(i: int) -> str:
    return LOCAL_USERS[i % len(LOCAL_USERS)]


def _benchuser(_i: int) -> str:
    return USER


def _idle(server: Server, ctx: Ctx, n: int, user_of: Callable[[int], str], who: str) -> Sample:
    """Run on a freshly started server (Workload.fresh): the baseline is that server after a
    warm-up of 16 parallel logins (the parallelism used below) and the end of their sessions,
    so that memory kept from earlier workloads or from the password hashing itself is not
    counted per session.

    Memory is read at two counts, `low` (500 by default) and `n`: the slope between them is
    the marginal cost of one more session; what the line gives at 0 sessions, above the
    warmed-up baseline, is the fixed cost (processes, buffers, arenas, caches that come with
    the first sessions). Dividing by the count alone would spread that fixed cost over the
    sessions. Sessions stop being opened when the machine's free memory falls under
    MIN_AVAILABLE: the sample then says how many were reached."""
    low = max(1, min(500, n // 2))
    _no_sessions(server)  # the start-up check's session too
    warm, _ = _open_sessions(server, ctx, 16, user_of=user_of)
    _close_all(warm)
    _no_sessions(server)
    time.sleep(0.3)
    base = server.memory()
    guard: list[str] = []
    sessions, errors = _open_sessions(server, ctx, low, user_of=user_of, guard=guard)
    try:
        time.sleep(1.0)
        mem_low, n_low = server.memory(), len(sessions)
        if not guard:
            more, errors_more = _open_sessions(server, ctx, n - low, user_of=user_of, first=low, guard=guard)
            sessions += more
            errors += errors_more
        time.sleep(1.0)
        mem = server.memory()
        alive = 0
        for c in sessions:
            try:
                if c.cmd("NOOP")[0] == 200:
                    alive += 1
            except (OSError, FtpError):
                pass
    finally:
        _close_all(sessions)
    _no_sessions(server, 20)
    s = Sample({"accepted": alive, "tree_pss_mib": mem["pss_kib"] / 1024}, {"accepted": n})
    if alive:
        s.metrics["pss_kib"] = (mem["pss_kib"] - base["pss_kib"]) / alive
        s.metrics["uss_kib"] = (mem["uss_kib"] - base["uss_kib"]) / alive
        s.metrics["procs"] = (mem["procs"] - base["procs"]) / alive
    if alive == len(sessions) and len(sessions) > n_low:
        slope = (mem["pss_kib"] - mem_low["pss_kib"]) / (len(sessions) - n_low)
        s.metrics["marginal_pss_kib"] = slope
        s.metrics["fixed_pss_mib"] = (mem_low["pss_kib"] - n_low * slope - base["pss_kib"]) / 1024
    else:
        s.missing["marginal_pss_kib"] = s.missing["fixed_pss_mib"] = (
            "sessions failed: no clean slope" if alive != len(sessions) else "too few sessions for a slope")
    s.notes += guard
    if errors:
        s.notes.append(f"{len(errors)} sessions refused: {errors[0]}")
    s.notes.append(f"{alive} sessions of {who}: PSS {mem['pss_kib'] / 1024:.0f} MiB, "
                   f"USS {mem['uss_kib'] / 1024:.0f} MiB, {mem['procs']} procs; {n_low} sessions: "
                   f"PSS {mem_low['pss_kib'] / 1024:.0f} MiB (fresh, warmed up: {base['pss_kib'] / 1024:.0f} MiB, "
                   f"{base['procs']} procs)")
    return s


def idle_sessions(server: Server, ctx: Ctx) -> Sample:
    """N idle anonymous sessions (a server variant with anonymous logins on)."""
    return _idle(server, ctx, ctx.fx.sizes.idle_sessions, _anonymous, "anonymous")


def idle_local(server: Server, ctx: Ctx) -> Sample:
    """N idle sessions spread over the 10 system users ftpwb_0..9 (isolated mode, vsftpd)."""
    return _idle(server, ctx, ctx.fx.sizes.idle_local, _local_user, f"{len(LOCAL_USERS)} local users")


def idle_tls(server: Server, ctx: Ctx) -> Sample:
    """N idle explicit-FTPS sessions (AUTH TLS, login, PBSZ, PROT P) of benchuser."""
    return _idle(server, ctx, ctx.fx.sizes.idle_tls, _benchuser, f"{USER} over TLS")


# -- unauthenticated clients' cost --------------------------------------------------------------
def failed_logins(server: Server, ctx: Ctx) -> Sample:
    """N clients connect, then all send USER + a wrong PASS at once; the root processes'
    RSS is sampled throughout (a fresh server per sample: its ban table starts empty).
    The clients keep their connections open until every 530 has come and the memory
    kept after the checks has been read."""
    import socket

    n = ctx.fx.sizes.failed_logins
    base_procs = server.nprocs()
    base = server.memory()
    conns: list[socket.socket] = []
    errors: list[str] = []
    try:
        deadline = time.monotonic() + LOOP_LIMIT
        for _ in range(n):  # one by one: the banner must come before the next connect
            s = socket.create_connection((HOST, server.port), timeout=60)
            conns.append(s)
            if not _read_reply(s).startswith(b"220"):
                raise FtpError("no 220 banner")
            if time.monotonic() > deadline:
                raise FtpError(f"only {len(conns)} of {n} connected in {LOOP_LIMIT:.0f}s")
        time.sleep(0.5)
        connected, connected_uss = server.root_rss_kib(), server.root_rss_kib(uss=True)
        waiting = server.memory()  # every process of the tree: the pre-login cost per connection
        peak = [connected]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], server.root_rss_kib())
                done.wait(0.05)

        answers: list[float] = []
        go = threading.Barrier(n + 1, timeout=120)

        def client(s: socket.socket) -> None:
            try:
                go.wait()
                t = time.perf_counter()
                s.sendall(f"USER {USER}\r\n".encode())
                if _read_reply(s).startswith(b"331"):
                    s.sendall(f"PASS wrong-{PASSWORD}\r\n".encode())
                    reply = _read_reply(s)
                    if reply.startswith(b"530"):
                        answers.append(time.perf_counter() - t)
                        return
                    raise FtpError(f"PASS answered {reply[:60]!r}")
                raise FtpError("USER not answered 331")
            except (OSError, FtpError, threading.BrokenBarrierError) as e:
                if len(errors) < 3:
                    errors.append(f"{type(e).__name__}: {e}")

        sampler = threading.Thread(target=sample, daemon=True)
        threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in conns]
        sampler.start()
        for t in threads:
            t.start()
        go.wait()
        for t in threads:
            t.join(LOOP_LIMIT)
        done.set()
        sampler.join(10)
        time.sleep(0.5)
        after, after_uss = server.root_rss_kib(), server.root_rss_kib(uss=True)
    finally:
        for s in conns:
            s.close()
    _wait_procs(server, base_procs, 20)
    mib = 1024.0
    out = Sample({"answered": len(answers), "rss_connected_mib": connected / mib, "rss_peak_mib": peak[0] / mib,
                  "checks_mib": (peak[0] - connected) / mib, "rss_after_mib": after / mib,
                  "uss_connected_mib": connected_uss / mib, "uss_after_mib": after_uss / mib,
                  "prelogin_pss_kib": (waiting["pss_kib"] - base["pss_kib"]) / n,
                  "prelogin_procs": (waiting["procs"] - base["procs"]) / n}, {"answered": n})
    if answers:
        out.metrics["answer_max_s"] = max(answers)
    if errors:
        out.notes.append(f"{n - len(answers)} clients got no 530: {errors[0]}")
    return out


def _read_reply(s) -> bytes:
    """One reply (all its lines), read a byte at a time: nothing of the next is consumed."""
    text, line = b"", b""
    while len(text) < 65536:
        ch = s.recv(1)
        if not ch:
            raise FtpError("connection closed")
        line += ch
        if ch == b"\n":
            text += line
            if line[:3].isdigit() and line[3:4] == b" ":
                return text
            line = b""
    raise FtpError("reply too long")


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Server, Ctx], Sample]
    tls: bool = False
    max_repeat: int | None = None  # slow ones may be repeated less
    fresh: bool = False  # each sample on a freshly started server instance
    about: str = ""
    features: frozenset[str] = frozenset()  # what its servers must offer (servers.FEATURES)
    skip: frozenset[str] = frozenset()  # servers it does not run on (their cells show "-")

    def runs_on(self, server: str) -> bool:
        return server not in self.skip


# those variants: the idle rows and login_rate (what the process model and the sandboxes cost)
_NOT_PROCESS = frozenset({"ftpwarden-isolated-process", "ftpwarden-isolated-nosandbox"})


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("retr_big", retr_big, about="download the big file", skip=_NOT_PROCESS),
    Workload("stor_big", stor_big, about="upload the big file; size and sha256 checked on disk", skip=_NOT_PROCESS),
    Workload("retr_small", retr_small, about="N downloads of 8 KiB files over one session", skip=_NOT_PROCESS),
    Workload("list_big", list_big, about="LIST and MLSD of a directory of many empty files", skip=_NOT_PROCESS),
    Workload("login_rate", login_rate, about="connect+USER+PASS+QUIT, 16 clients at once"),
    Workload("concurrent", concurrent, about="N clients each downloading a 10 MiB file in a loop", skip=_NOT_PROCESS),
    Workload("idle_sessions", idle_sessions, fresh=True, features=frozenset({"anonymous"}),
             about="N logged-in idle anonymous sessions"),
    Workload("idle_local", idle_local, fresh=True, max_repeat=1, features=frozenset({"local"}),
             skip=frozenset({"ftpwarden-pooled", "pyftpdlib"}),
             about="N idle sessions of 10 system users (isolated mode, vsftpd)"),
    Workload("idle_tls", idle_tls, tls=True, fresh=True, max_repeat=1, about="N idle explicit-FTPS sessions"),
    Workload("failed_logins", failed_logins, fresh=True, about="N parallel failed logins: root processes' RSS",
             skip=_NOT_PROCESS),
    Workload("retr_big_tls", retr_big, tls=True, about="retr_big over TLS (AUTH TLS, PROT P)", skip=_NOT_PROCESS),
    Workload("stor_big_tls", stor_big, tls=True, about="stor_big over TLS", skip=_NOT_PROCESS),
]}
