"""Run the client interop matrix once per test session and hand each test its result.

The first test that needs a result starts the servers of the selected modes and
runs every selected (mode, client) lane concurrently; the results also go to
build/interop/clients.json (or $FTPWARDEN_INTEROP_JSON), from which
scripts/clients-table writes docs/CLIENTS.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import make_cert
from ..integration.conftest import REPO, stop_server
from .clients import CLIENTS, configure
from .matrix import BIG, MODES, CaseResult, Fixtures, run_lanes
from .servers import start_mode

LANE_WORKERS = 8  # concurrent client lanes: enough to hide waits, few enough for 2 cores
RESULTS = Path(os.environ.get("FTPWARDEN_INTEROP_JSON", REPO / "build" / "interop" / "clients.json"))


def _selected_lanes(items: list[pytest.Item]) -> list[tuple[str, str]]:
    lanes = []
    for item in items:
        spec = getattr(item, "callspec", None)
        # only the matrix's own cases: other suites have a "mode" parameter too
        if spec is None or "mode" not in spec.params or "client" not in spec.params:
            continue
        lane = (spec.params["mode"], spec.params["client"])
        if lane not in lanes and (lane[0] != "isolated" or os.geteuid() == 0):
            lanes.append(lane)
    return lanes


def _write_json(results: list[CaseResult], wall: float) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    clients = {name: {"version": c.version(), "tls_library": c.tls_library, "transports": list(c.transports),
                      "options": c.options, "defects": c.defects, "upload": c.can_upload,
                      "resume": [k for k, v in (("download", c.can_resume_download), ("upload", c.can_resume_upload))
                                 if v]}
               for name, c in CLIENTS.items()}
    doc = {"generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_seconds": round(wall, 1),
           "cpus": os.cpu_count(), "clients": clients,
           "results": [r.as_dict() for r in sorted(results, key=lambda r: r.key)]}
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


@pytest.fixture(scope="session")
def interop(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CaseResult]]:
    lanes = _selected_lanes(request.session.items)
    modes = [m for m in MODES if any(lane[0] == m for lane in lanes)]
    base = tmp_path_factory.mktemp("interop")
    os.chmod(base, 0o755)
    cert = make_cert(base)
    configure(home=base / "home")
    servers, eps, fixtures = [], {}, {}
    try:
        for mode in modes:
            (base / mode).mkdir()
            started, eps[mode], owner = start_mode(mode, base / mode, cert)
            servers += started
            fixtures[mode] = Fixtures(base / mode, eps[mode]["plain"].root, owner)
        start = time.monotonic()
        results = run_lanes(lanes, eps, fixtures, LANE_WORKERS)
        wall = time.monotonic() - start
    finally:
        for srv in servers:
            stop_server(srv)
        for p in base.rglob("*"):  # pytest keeps the last 3 runs: keep them small
            if p.is_file() and p.stat().st_size >= BIG:
                p.unlink()
    _write_json(results, wall)
    print(f"\ninterop matrix: {len(results)} cases in {wall:.0f} s -> {RESULTS}")
    yield {r.key: r for r in results}
