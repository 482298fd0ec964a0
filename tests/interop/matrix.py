"""The plan of the matrix (which cases exist: a pure function of the clients'
abilities, so pytest can collect them before anything runs) and its runner.

A case checks one thing and judges it byte-exact with sha256:
  download        RETR of a 1 MiB file; download-64MiB once per client per mode
  list/nlst/mlsd  the client's directory listing shows every name of a known directory
  upload-SIZE     STOR of 0 B, 1 B, 10 kB, 1 MiB; 64 MiB once per client per mode
  upload-10kB-xN  N separate small uploads over TLS (the known defect was intermittent)
  resume-*        a transfer interrupted after 300 KiB (the partial file is where the
                  interruption leaves it) is finished by the client's own resume
  stock-tls       (ftplib) the stock FTP_TLS, which does not reuse the TLS session, gets 522
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .clients import CLIENTS, Client, Outcome
from .servers import Endpoint, Owner

__all__ = ["MODES", "CaseResult", "Fixtures", "plan", "run_lanes", "DOWN_SIZE", "SIZES", "BIG", "REPEATS",
           "DEADLINE"]

MODES = ("pooled", "isolated")
DOWN_SIZE = 1 << 20
SIZES = {"0B": 0, "1B": 1, "10kB": 10_000, "1MiB": 1 << 20}
BIG = 64 << 20
REPEATS = {"explicit": 20, "implicit": 20}  # small TLS uploads: per client and mode 2 x (20 + 0 B, 1 B, 10 kB)
PREFIX = 307_200  # where the interrupted transfers stopped
LIST_NAMES = ("alpha.txt", "beta.bin", "with space.txt", "gamma")
DEADLINE = 300.0  # seconds for the whole run (~35 s when all is well); later cases fail as not run


def _big_transport(client: Client) -> str:
    """The one transport of the 64 MiB transfers: explicit FTPS where the client has it."""
    return "explicit" if "explicit" in client.transports else "plain"


def plan(client: Client) -> list[tuple[str, str]]:
    """(transport, case) for one client in one mode."""
    out: list[tuple[str, str]] = []
    for t in client.transports:
        out.append((t, "download"))
        if t == _big_transport(client):
            out.append((t, "download-64MiB"))
        out += [(t, kind) for kind in client.listings]
        if client.can_upload:
            out += [(t, f"upload-{label}") for label in SIZES]
            if t in REPEATS:
                out.append((t, f"upload-10kB-x{REPEATS[t]}"))
            if t == _big_transport(client):
                out.append((t, "upload-64MiB"))
        if client.can_resume_download:
            out.append((t, "resume-download"))
        if client.can_resume_upload:
            out.append((t, "resume-upload"))
        if client.name == "ftplib" and t == "explicit":
            out.append((t, "stock-tls"))
    return [(t, case) for t, case in out if case not in client.defects]


@dataclass
class CaseResult:
    mode: str
    client: str
    transport: str
    case: str
    ok: bool
    detail: str = ""
    tried: int = 0          # uploads tried (upload cases)
    exact: int = 0          # of those, byte-exact on the server and reported as success
    silent_loss: int = 0    # reported as success by the client, but not what was sent
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.mode}-{self.client}-{self.transport}-{self.case}"

    def as_dict(self) -> dict:
        return asdict(self)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tail(text: str, n: int = 700) -> str:
    """The start (failure replies go first) and the end of a client's output."""
    text = text.strip()
    return text if len(text) <= n else f"{text[:n // 3]} [...] {text[-2 * n // 3:]}"


class Fixtures:
    """The files of one mode: sources on the client side, a tree per client and transport on the server."""

    def __init__(self, base: Path, root: Path, owner: Owner):
        self.base, self.root, self.owner = base, root, owner
        src = base / "sources"
        src.mkdir()
        self.sources = {label: src / f"{label}.bin" for label in [*SIZES, "64MiB", "down"]}
        for label, size in [*SIZES.items(), ("64MiB", BIG), ("down", DOWN_SIZE)]:
            self.sources[label].write_bytes(os.urandom(size))
        self.small = [src / f"small-{i:02d}.bin" for i in range(max(REPEATS.values()))]
        for i, p in enumerate(self.small):
            p.write_bytes(os.urandom(10_000 + i))
        self.hashes = {p: sha(p) for p in [*self.sources.values(), *self.small]}

    def server_dir(self, client: str, transport: str) -> Path:
        """/<client>/<transport>/ in the user's root, with down.bin and list/; made once, owned by the user."""
        d = self.root / client / transport
        if not d.exists():
            d.mkdir(parents=True)
            shutil.copyfile(self.sources["down"], d / "down.bin")
            os.link(self.sources["64MiB"], d / "big.bin")  # read-only for the user: a link will do
            (d / "list" / "gamma").mkdir(parents=True)
            for name in LIST_NAMES[:-1]:
                (d / "list" / name).write_bytes(name.encode())
            for p in [d.parent, d, *d.rglob("*")]:
                self.owner.give(p)
        return d

    def local_dir(self, r: CaseResult) -> Path:
        d = self.base / "local" / r.client / r.transport / r.case
        d.mkdir(parents=True)
        return d


def _check_upload(fx: Fixtures, r: CaseResult, out: Outcome, source: Path, on_server: Path) -> None:
    r.tried += 1
    exact = on_server.is_file() and sha(on_server) == fx.hashes[source]
    if out.ok and exact:
        r.exact += 1
        return
    size = on_server.stat().st_size if on_server.exists() else None
    got = "missing" if size is None else f"{size} bytes" + ("" if exact else " (not the bytes sent)")
    if out.ok:
        r.silent_loss += 1
        r.detail += f"{on_server.name}: SILENT LOSS: client reported success, server has {got} of " \
                    f"{source.stat().st_size}\n"
    else:
        r.detail += f"{on_server.name}: client failed, server has {got}: {_tail(out.output, 400)}\n"


def _check_download(fx: Fixtures, r: CaseResult, out: Outcome, local: Path, source: Path) -> None:
    exact = local.is_file() and sha(local) == fx.hashes[source]
    r.ok = out.ok and exact
    if not r.ok:
        got = f"{local.stat().st_size} bytes" if local.exists() else "no file"
        r.detail = (f"client {'reported success' if out.ok else 'failed'}; local file: {got}"
                    f"{'' if exact else ', not byte-exact'}\n{_tail(out.output)}")


def run_case(client: Client, ep: Endpoint, case: str, fx: Fixtures, r: CaseResult) -> None:
    sdir = fx.server_dir(client.name, ep.transport)
    rdir = f"/{client.name}/{ep.transport}"
    local = fx.local_dir(r)
    if case == "download":
        out = client.download(ep, f"{rdir}/down.bin", local / "down.bin")
        _check_download(fx, r, out, local / "down.bin", fx.sources["down"])
    elif case == "download-64MiB":
        out = client.download(ep, f"{rdir}/big.bin", local / "big.bin", big=True)
        _check_download(fx, r, out, local / "big.bin", fx.sources["64MiB"])
    elif case in ("list", "nlst", "mlsd"):
        out = client.listing(ep, case, f"{rdir}/list")
        missing = [n for n in LIST_NAMES if n not in out.output]
        r.ok = out.ok and not missing
        if not r.ok:
            r.detail = f"{'missing ' + ', '.join(missing) if missing else 'client failed'}:\n{_tail(out.output)}"
    elif case.startswith("upload-"):
        label, _, times = case[len("upload-"):].partition("-x")
        jobs = ([(fx.small[i], f"rep-{i:02d}.bin") for i in range(int(times))] if times
                else [(fx.sources[label], f"up-{label}.bin")])
        for source, name in jobs:
            os.link(source, local / name)  # some clients name the remote file after the local one
            out = client.upload(ep, local / name, f"{rdir}/{name}", big=label == "64MiB")
            _check_upload(fx, r, out, source, sdir / name)
        r.ok = r.exact == r.tried
    elif case == "resume-download":
        (local / "down.bin").write_bytes(fx.sources["down"].read_bytes()[:PREFIX])
        out = client.resume_download(ep, f"{rdir}/down.bin", local / "down.bin")
        _check_download(fx, r, out, local / "down.bin", fx.sources["down"])
    elif case == "resume-upload":
        (sdir / "resume-up.bin").write_bytes(fx.sources["1MiB"].read_bytes()[:PREFIX])
        fx.owner.give(sdir / "resume-up.bin")
        os.link(fx.sources["1MiB"], local / "resume-up.bin")
        out = client.resume_upload(ep, local / "resume-up.bin", f"{rdir}/resume-up.bin", PREFIX)
        _check_upload(fx, r, out, fx.sources["1MiB"], sdir / "resume-up.bin")
        r.ok = r.exact == 1
    elif case == "stock-tls":
        assert hasattr(client, "stock_tls")
        out = client.stock_tls(ep, f"{rdir}/down.bin")
        r.ok = out.ok
        r.detail = _tail(out.output)
    else:
        raise AssertionError(f"unknown case {case}")


def run_lane(client: Client, eps: dict[str, Endpoint], fx: Fixtures, deadline: float) -> list[CaseResult]:
    """One client's cases in one mode, one after the other."""
    results = []
    for transport, case in plan(client):
        ep = eps[transport]
        r = CaseResult(ep.mode, client.name, transport, case, ok=False)
        start = time.monotonic()
        if start > deadline:
            r.detail = f"not run: the matrix passed its {DEADLINE:.0f} s deadline"
        else:
            try:
                run_case(client, ep, case, fx, r)
            except Exception as e:  # a broken case is a failed case, with its reason
                r.ok, r.detail = False, f"{r.detail}{type(e).__name__}: {e}"
        r.seconds = round(time.monotonic() - start, 2)
        results.append(r)
        with open(fx.base / "progress.log", "a") as log:  # to watch a run: tail -f
            log.write(f"{r.key} {'ok' if r.ok else 'FAIL'} {r.seconds} s\n")
    return results


def run_lanes(lanes: list[tuple[str, str]], eps: dict[str, dict[str, Endpoint]], fx: dict[str, Fixtures],
              workers: int) -> list[CaseResult]:
    """Run (mode, client) lanes concurrently; each lane runs its cases in order."""
    deadline = time.monotonic() + DEADLINE
    lock = threading.Lock()
    results: list[CaseResult] = []

    def lane(mode: str, name: str) -> None:
        out = run_lane(CLIENTS[name], eps[mode], fx[mode], deadline)
        with lock:
            results.extend(out)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(lane, mode, name) for mode, name in lanes]:
            f.result()
    return results
