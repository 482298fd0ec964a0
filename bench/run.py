#!/usr/bin/env python3
"""Benchmark ftpwarden against pyftpdlib and vsftpd on loopback, in one run.

    python3 bench/run.py                      # everything, full sizes
    python3 bench/run.py --quick              # smoke run with small sizes (a few minutes)
    python3 bench/run.py --servers pyftpdlib,vsftpd --workloads retr_big,login_rate --repeat 5

Prints the table and writes results.json and results.md into --out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from ceiling import measure_ceilings
from client import FtpError
from fixture import REPO, Fixture, Sizes
from servers import (
    ALL_SERVERS,
    ISOLATED,
    ISOLATED_DEFAULT,
    VSFTPD,
    PortPlan,
    Server,
    Unavailable,
    server_version,
    start_server,
)
from workloads import WORKLOADS, Ctx, Sample

QUICK = dict(big=64 << 20, small_files=200, list_entries=1000, idle_sessions=50, idle_local=50, idle_tls=20,
             concurrent=20, failed_logins=50, login_seconds=1.0, concurrent_seconds=1.5)


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units and t[-1:] != "" else ""
    num = t[:-1] if unit else t
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 1G, 64M, 512K") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="ftpwarden,pyftpdlib,vsftpd",
                   help="comma list of ftpwarden (= pooled, plus isolated and isolated-process when root), "
                        "ftpwarden-pooled, ftpwarden-isolated, ftpwarden-isolated-process "
                        "(session_isolation=process), ftpwarden-isolated-nosandbox (isolate, isolate_network, "
                        "seccomp_sandbox off), pyftpdlib, vsftpd (default: %(default)s)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma list of " + ", ".join(WORKLOADS) + " (default: all)")
    p.add_argument("--repeat", type=int, help="samples per workload and server (default 3; --quick: 2, "
                                              "and 1 for the fresh-server workloads; idle_local, idle_tls: 1)")
    p.add_argument("--size-big", type=parse_size, help="size of the big file (default 1G, --quick 64M)")
    p.add_argument("--small-files", type=int, help="retr_small file count (default 2000)")
    p.add_argument("--list-entries", type=int, help="list_big directory size (default 10000)")
    p.add_argument("--idle-sessions", type=int, help="idle_sessions count: anonymous sessions (default 3000)")
    p.add_argument("--idle-local", type=int, help="idle_local count: sessions of 10 system users (default 1000)")
    p.add_argument("--idle-tls", type=int, help="idle_tls count: explicit-FTPS sessions (default 1000)")
    p.add_argument("--concurrent", type=int, help="concurrent clients (default 200)")
    p.add_argument("--failed-logins", type=int, help="failed_logins parallel clients (default 200)")
    p.add_argument("--login-seconds", type=float, help="login_rate duration per sample (default 5)")
    p.add_argument("--concurrent-seconds", type=float, help="concurrent duration per sample (default 8)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few minutes")
    p.add_argument("--subject", default="ftpwarden",
                   help="servers whose name starts with this are compared to the others (default: %(default)s)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="directory for results.json and results.md (default: bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, configs, server logs)")
    args = p.parse_args(argv)
    unknown = [w for w in args.workloads.split(",") if w and w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s): {', '.join(unknown)}")
    return args


def _servers(spec: str) -> list[str]:
    out: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name == "ftpwarden":
            names = ["ftpwarden-pooled"] + (list(ISOLATED_DEFAULT) if os.geteuid() == 0 else [])
        elif name in ALL_SERVERS:
            names = [name]
        else:
            raise SystemExit(f"run.py: unknown server {name!r} (one of ftpwarden, {', '.join(ALL_SERVERS)})")
        out += [n for n in names if n not in out]
    return out


def _sizes(args: argparse.Namespace) -> Sizes:
    base = Sizes(**QUICK) if args.quick else Sizes()
    for field in ("small_files", "list_entries", "idle_sessions", "idle_local", "idle_tls", "concurrent",
                  "failed_logins", "login_seconds", "concurrent_seconds"):
        if getattr(args, field) is not None:
            setattr(base, field, getattr(args, field))
    if args.size_big:
        base.big = args.size_big
    return base


def _sizes_text(s: Sizes) -> str:
    return (f"big {s.big / 2**20:.0f} MiB, {s.small_files} small files, {s.list_entries} list entries, "
            f"{s.login_clients} login clients x {s.login_seconds:g}s, {s.concurrent} concurrent x "
            f"{s.concurrent_seconds:g}s, {s.idle_sessions} idle anonymous / {s.idle_local} local-user / "
            f"{s.idle_tls} TLS sessions, {s.failed_logins} failed logins")


def _meta(args: argparse.Namespace, sizes: Sizes, repeat: int) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"started": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "root": os.geteuid() == 0, "commit": commit, "command": shlex.join(["python3"] + sys.argv),
            "repeat": repeat, "sizes": vars(sizes), "sizes_text": _sizes_text(sizes)}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = _sizes(args)
        self.repeat = args.repeat or (2 if args.quick else 3)
        self.names = _servers(args.servers)
        self.workloads = [WORKLOADS[w] for w in args.workloads.split(",") if w]
        root = os.geteuid() == 0
        want_user = "vsftpd" in self.names and root and os.path.exists(VSFTPD)
        want_local = root and any(w.name == "idle_local" for w in self.workloads) and any(
            n in ISOLATED or n == "vsftpd" for n in self.names)
        self.fx = Fixture(self.sizes, want_system_user=want_user, keep=args.keep, want_local_users=want_local)
        self.ports = PortPlan()
        self.running: dict[tuple[str, bool], Server | str] = {}
        self.t0 = time.monotonic()
        self.results: dict = {"meta": _meta(args, self.sizes, self.repeat), "servers": self.names,
                              "subjects": [n for n in self.names if n.startswith(args.subject)],
                              "peers": [n for n in self.names if not n.startswith(args.subject)],
                              "server_info": {}, "ceiling": {}, "workloads": {}}

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.0f}s] {text}", file=sys.stderr, flush=True)

    # -- servers -----------------------------------------------------------------------------
    def server(self, name: str, tls: bool) -> Server | str:
        key = (name, tls)
        if key not in self.running:
            try:
                srv = start_server(name, self.fx, self.ports, tls=tls)
                self.running[key] = srv
                self.results["server_info"].setdefault(name, {})["version"] = srv.version
                self.log(f"{srv.label}: up on port {srv.port}, passive {srv.pasv[0]}-{srv.pasv[1]}, "
                         f"pid {srv.proc.pid}")
            except Unavailable as e:
                self.running[key] = str(e)
                self.results["server_info"].setdefault(name, {})["version"] = server_version(name)
                self.log(f"{name}{' (TLS)' if tls else ''}: n/a ({e})")
            self.results["server_info"].setdefault(name, {})["tls" if tls else "plain"] = (
                "ok" if isinstance(self.running[key], Server) else self.running[key])
        got = self.running[key]
        if isinstance(got, Server) and not got.alive():
            self.running[key] = f"died during the run: {got.first_error()}"
            got.stop()
        return self.running[key]

    def stop_all(self) -> None:
        for key, srv in list(self.running.items()):
            if isinstance(srv, Server):
                srv.stop()
                self.running[key] = "stopped"

    # -- the run -------------------------------------------------------------------------------
    def ceilings(self) -> None:
        wants_tls = any(w.tls for w in self.workloads)
        for _ in range(self.repeat):
            got = measure_ceilings(self.fx.data / "big.bin", self.fx.cert, self.fx.key, wants_tls)
            for k, v in got.items():
                self.results["ceiling"].setdefault(k, []).append(v)
        lb = report.summarize(s["mib_s"] for s in self.results["ceiling"]["loopback"] if "mib_s" in s)
        self.log(f"ceiling: loopback {report.fmt_cell(lb)} MiB/s")

    def workload(self, w) -> None:
        reps = min(self.repeat, w.max_repeat or self.repeat)
        if self.args.quick and w.fresh:
            reps = 1  # a fresh server per sample is the slow part of a smoke run
        table = self.results["workloads"].setdefault(w.name, {})
        ctx = Ctx(self.fx)
        names = [n for n in self.names if w.runs_on(n)]
        for name in names:
            table[name] = {"status": "ok", "reason": None, "samples": [], "errors": []}
            self.server(name, w.tls)
        for rep in range(reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                entry = table[name]
                srv = self.server(name, w.tls)
                if not isinstance(srv, Server):
                    entry["status"], entry["reason"] = "n/a", srv
                    continue
                fresh = None
                try:
                    if w.fresh:  # a second instance, started for this sample only
                        fresh = srv = start_server(name, self.fx, self.ports, tls=w.tls, tag=f"-{w.name}{rep}",
                                                   features=w.features)
                    sample: Sample = w.fn(srv, ctx)
                except (OSError, FtpError, TimeoutError, ValueError, RuntimeError, Unavailable) as e:
                    why = f"{type(e).__name__}: {e}" if not isinstance(e, (FtpError, Unavailable)) else str(e)
                    entry["errors"].append(why)
                    self.log(f"{w.name} {srv.label} #{rep + 1}: failed: {why}")
                    continue
                finally:
                    if fresh is not None:
                        fresh.stop()
                        self.ports.release(fresh.pasv)
                entry["samples"].append(vars(sample))
                shown = next((f"{k}={report.fmt_num(v)}" for k, v in sample.metrics.items()),
                             "no value: " + "; ".join(sorted(set(sample.missing.values()))))
                self.log(f"{w.name} {srv.label} #{rep + 1}: {shown}")
        for entry in table.values():
            if entry["status"] == "ok" and not entry["samples"]:
                entry["status"], entry["reason"] = "n/a", (entry["errors"] or ["no sample"])[0]
            elif entry["errors"]:
                entry["samples"][-1]["notes"].append(
                    f"{len(entry['errors'])} sample(s) failed: {entry['errors'][0]}")

    def run(self) -> dict:
        self.log(f"temp dir {self.fx.tmp}; building the data")
        self.fx.build(log=lambda t: self.log(t.strip()))
        for name in self.names:
            self.server(name, False)
        self.ceilings()
        for w in self.workloads:
            self.workload(w)
        self.results["meta"]["duration_s"] = time.monotonic() - self.t0
        return report.summarize_results(self.results)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    run = Run(args)
    done = []

    def cleanup() -> None:
        if not done:
            done.append(True)
            run.stop_all()
            run.fx.cleanup()

    atexit.register(cleanup)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        results = run.run()
    finally:
        cleanup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(report.to_json(results))
    (out / "results.md").write_text(report.render_markdown(results))
    print(report.render_all_text(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
