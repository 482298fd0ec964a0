"""scripts/clients-table turns the matrix's JSON into docs/CLIENTS.md."""

from __future__ import annotations

import json
import subprocess
import sys

from ..integration.conftest import REPO


def _result(case: str, ok: bool, tried: int = 0, exact: int = 0, detail: str = "") -> dict:
    return {"mode": "pooled", "client": "curl", "transport": "explicit", "case": case, "ok": ok,
            "detail": detail, "tried": tried, "exact": exact, "silent_loss": 0, "seconds": 0.1}


def test_table_shows_each_case_and_each_failure(tmp_path):
    doc = {"generated": "now", "wall_seconds": 1.0, "cpus": 2,
           "clients": {"curl": {"version": "7.88.1", "tls_library": "OpenSSL", "transports": ["explicit"],
                                "options": {"explicit": "--ssl-reqd -k"}, "defects": {}, "upload": True,
                                "resume": ["download", "upload"]}},
           "results": [_result("download", True), _result("upload-1MiB", False, 1, 0, "got 426"),
                       _result("upload-10kB-x20", True, 20, 20)]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "clients-table"), str(tmp_path / "r.json"),
                        str(tmp_path / "CLIENTS.md")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "CLIENTS.md").read_text()
    assert "| curl | 7.88.1 | pooled | explicit | 1 MiB ✓ | — | 1 MiB ✗ · 20×10 kB 20/20 | — |" in md
    assert "| curl | pooled | 21 | 20 | 0 |" in md
    assert "- **pooled curl explicit upload-1MiB**: got 426" in md
