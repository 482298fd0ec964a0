"""bench/report.py: the pure helpers behind the benchmark's table (no servers, no sockets)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "report.py"
_spec = importlib.util.spec_from_file_location("ftpwarden_bench_report", _PATH)
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report
_spec.loader.exec_module(report)


@pytest.mark.parametrize("values, p, want", [
    ([5.0], 50, 5.0),
    ([1, 2, 3, 4], 50, 2.5),
    ([3, 1, 2], 50, 2.0),
    (list(range(1, 101)), 99, 99.01),
    ([1, 2], 0, 1.0),
    ([1, 2], 100, 2.0),
])
def test_percentile_interpolates_like_numpy(values, p, want):
    assert report.percentile(values, p) == pytest.approx(want)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        report.percentile([], 50)


def test_summarize():
    assert report.summarize([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert report.summarize([]) is None


@pytest.mark.parametrize("x, want", [
    (0, "0"), (1234.4, "1234"), (99.94, "99.9"), (5.678, "5.68"), (0.1234, "0.123"),
    (0.000087, "0.000087"), (-2.5, "-2.50"),
])
def test_fmt_num_three_significant_digits(x, want):
    assert report.fmt_num(x) == want


def test_fmt_cell():
    assert report.fmt_cell(None) == "n/a"
    assert report.fmt_cell({"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}) == "2.00 (1.00–3.00)"
    assert report.fmt_cell({"median": 2.0, "min": 2.0, "max": 2.0, "n": 3}) == "2.00"
    assert report.fmt_cell({"median": 7.0, "min": 7.0, "max": 7.0, "n": 1}) == "7.00"


def test_ratio_and_format():
    assert report.ratio(50.0, 100.0) == 0.5
    assert report.ratio(None, 1.0) is None
    assert report.ratio(1.0, 0.0) is None
    assert report.fmt_ratio(None) == "n/a"
    assert report.fmt_ratio(1.234) == "1.23×"
    assert report.fmt_ratio(0.0047) == "0.00470×"
    assert report.fmt_ratio(296417.2) == "296417×"


def _results():
    def entry(samples, status="ok", reason=None):
        return {"status": status, "reason": reason, "samples": samples, "errors": []}

    return report.summarize_results({
        "meta": {"repeat": 2},
        "servers": ["ftpwarden-pooled", "pyftpdlib", "vsftpd"],
        "subjects": ["ftpwarden-pooled"],
        "peers": ["pyftpdlib", "vsftpd"],
        "server_info": {},
        "ceiling": {"loopback": [{"mib_s": 1000.0}, {"mib_s": 3000.0}],
                    "client_download": [{"mib_s": 900.0, "client_cores": 0.5}],
                    "client_tls_upload": [{"error": "RuntimeError: no"}]},
        "workloads": {
            "retr_big": {
                "ftpwarden-pooled": entry([{"metrics": {"mib_s": 100.0, "cpu_s_per_gib": 1.0}},
                                           {"metrics": {"mib_s": 300.0, "cpu_s_per_gib": 1.0}}]),
                "pyftpdlib": entry([{"metrics": {"mib_s": 400.0, "cpu_s_per_gib": 2.0}}]),
                "vsftpd": entry([], "n/a", "vsftpd needs root"),
            },
            "list_big": {
                "ftpwarden-pooled": entry([{"metrics": {"list_ms": 5.0, "mlsd_ms": 6.0}}]),
                "pyftpdlib": entry([{"metrics": {"list_ms": 10.0, "mlsd_ms": 12.0}}]),
                "vsftpd": entry([{"metrics": {"list_ms": 2.0}, "missing": {"mlsd_ms": "MLSD: 500 Unknown"}}]),
            },
            "stor_big": {
                "ftpwarden-pooled": entry([{"metrics": {"verified": 1}, "expected": {"verified": 1}},
                                           {"metrics": {"verified": 0}, "expected": {"verified": 1}}]),
            },
        },
    })


def _row(rows, workload, label):
    current = None
    for r in rows:
        current = r[0] or current
        if r[0] == workload and r[1].startswith(label):
            return r
    raise AssertionError(f"no row {workload} {label}")


def _note(cell, notes):
    assert cell.startswith("n/a[")
    number = cell[4:-1]
    return notes[int(number) - 1].removeprefix(f"[{number}] ")


def test_table_cells_ratios_and_footnotes():
    headers, rows, notes = report.build_table(_results())
    assert headers[:6] == ["workload", "metric", "unit", "ftpwarden-pooled", "pyftpdlib", "vsftpd"]
    assert headers[6:] == ["fw-pooled/pyftpdlib", "fw-pooled/vsftpd"]
    rate = _row(rows, "retr_big", "download rate")
    assert rate[1] == "download rate ↑"
    assert rate[3:] == ["200 (100–300)", "400", "n/a[1]", "0.50×", "n/a"]
    cpu = _row(rows, "retr_big", "server CPU")
    assert cpu[3:] == ["1.00", "2.00", "n/a[1]", "0.50×", "n/a"]
    client = _row(rows, "retr_big", "client CPU")
    assert client[-2:] == ["", ""]  # no direction, no ratio
    mlsd = _row(rows, "list_big", "MLSD")
    assert mlsd[3:5] + mlsd[6:] == ["6.00", "12.0", "0.50×", "n/a"]
    assert _note(mlsd[5], notes) == "vsftpd, list_big, MLSD: MLSD: 500 Unknown"
    assert _note(_row(rows, "list_big", "server CPU, LIST")[3], notes) == (
        "ftpwarden-pooled, list_big, server CPU, LIST: not measured")
    assert notes[0] == "[1] vsftpd: vsftpd needs root"
    verified = _row(rows, "stor_big", "on disk")
    assert verified[3:6] == ["1/2", "-", "-"]


def test_renderers_agree_and_json_round_trips():
    res = _results()
    text = report.render_all_text(res)
    md = report.render_markdown(res)
    for out in (text, md):
        assert "200 (100–300)" in out
        assert "vsftpd needs root" in out
        assert "2000 (1000–3000)" in out  # the loopback ceiling
        assert "RuntimeError: no" in out
    assert md.count("\n| retr_big |") == 3
    assert json.loads(report.to_json(res))["workloads"]["retr_big"]["pyftpdlib"]["summary"]["mib_s"]["n"] == 1


def test_text_table_is_aligned():
    out = report.render_text(["a", "bb", "c", "num"], [["x", "y", "z", "1"], ["x", "yy", "z", "100"]])
    lines = out.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1
    assert lines[2].endswith("  1") and lines[3].endswith("100")
    assert lines[3].startswith(" ")  # the repeated workload name is blanked


def test_ratio_columns_of_a_subject_that_never_ran_are_dropped():
    res = _results()
    res["servers"].insert(1, "ftpwarden-isolated")
    res["subjects"].append("ftpwarden-isolated")
    for per_server in res["workloads"].values():
        per_server["ftpwarden-isolated"] = {"status": "n/a", "reason": "not built yet", "samples": []}
    headers, rows, notes = report.build_table(res)
    assert "ftpwarden-isolated" in headers  # its column stays, with n/a and the reason
    assert not any(h.startswith("fw-isolated/") for h in headers)
    assert all(len(r) == len(headers) for r in rows)
    assert any(n.endswith("ftpwarden-isolated: not built yet") for n in notes)


def test_issue_11_targets_table():
    """Each target row: vsftpd's figure and ftpwarden's from the same run, the target, met or not;
    idle rows show the marginal slope and a count short of the one asked for."""
    def entry(*samples):
        return {"status": "ok", "reason": None, "samples": list(samples), "errors": []}

    def idle(pss, marginal, accepted=3000, want=3000):
        return {"metrics": {"pss_kib": pss, "marginal_pss_kib": marginal, "accepted": accepted},
                "expected": {"accepted": want}}

    res = report.summarize_results({
        "meta": {"sizes": {"idle_sessions": 3000, "idle_local": 1000, "idle_tls": 1000, "concurrent": 200}},
        "servers": ["ftpwarden-isolated", "ftpwarden-isolated-process", "vsftpd"],
        "workloads": {
            "idle_sessions": {"ftpwarden-isolated": entry(idle(50.0, 40.0)),
                              "ftpwarden-isolated-process": entry(idle(2000.0, 1990.0, 2500)),
                              "vsftpd": entry(idle(390.0, 380.0))},
            "login_rate": {"ftpwarden-isolated": entry({"metrics": {"beyond_check_ms": 4.0, "overhead_ms": 5.5}}),
                           "vsftpd": entry({"metrics": {"beyond_check_ms": 3.4, "overhead_ms": 19.6}})},
            "concurrent": {"ftpwarden-isolated": entry({"metrics": {"agg_mib_s": 1200.0}}),
                           "vsftpd": entry({"metrics": {"agg_mib_s": 1000.0}})},
        },
    })
    rows = {r[0]: r[1:] for r in report.target_rows(res)}
    assert len(rows) == 4  # no idle_local, no idle_tls in this run: no rows for them
    assert rows["PSS per idle plain session, 3000 anonymous sessions"] == [
        "390 KiB (marginal 380)", "50.0 KiB (marginal 40.0)", "≤ 64.0 KiB", "yes"]
    assert rows["PSS per idle session, session_isolation=process (3000 anonymous)"] == [
        "390 KiB (marginal 380)", "2000 KiB (marginal 1990) [2500 of 3000 sessions] [fw-isolated-process]",
        "≤ 1536 KiB", "NO"]
    assert rows["server CPU per login beyond the password check (cheap-hash user)"] == [
        "3.40 ms (CPU/login - check 19.6)", "4.00 ms (CPU/login - check 5.50)", "≤ 5.00 ms", "yes"]
    assert rows["concurrent 200-client aggregate rate"] == [
        "1× (1000 MiB/s)", "1.20× (1200 MiB/s)", "≥ 1.30 × vsftpd", "NO"]
    text = report.render_all_text(res)
    assert "issue 11 figure" in text and "≥ 1.30 × vsftpd" in text
    assert "## Issue 11 targets" in report.render_markdown(res)


def _bench_module(name):
    """A module of bench/ (they import each other by plain name: bench/ goes on sys.path)."""
    bench = str(_PATH.parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def test_idle_sessions_stop_opening_under_the_memory_guard(monkeypatch):
    """Sessions open 64 at a time; once free memory is under 2 GiB no more are opened,
    and the guard says at how many it stopped."""
    workloads = _bench_module("workloads")
    opened: list[str] = []

    class Ctx:
        def control(self, server, timeout=60.0, user="benchuser"):
            opened.append(user)
            return object()

    free = iter([8 << 30, 8 << 30, 1 << 30, 8 << 30])
    monkeypatch.setattr(workloads, "mem_available", lambda: next(free))
    guard: list[str] = []
    sessions, errors = workloads._open_sessions(None, Ctx(), 1000, user_of=lambda i: f"u{i % 3}", first=10,
                                                guard=guard)
    assert len(sessions) == 128 and errors == []
    assert sorted(set(opened)) == ["u0", "u1", "u2"]
    assert guard == ["stopped at 138 sessions: 1.0 GiB free (< 2 GiB)"]
    opened.clear()
    sessions, _ = workloads._open_sessions(None, Ctx(), 100)  # no guard: all at once, memory unread
    assert len(sessions) == 100 and set(opened) == {"benchuser"}
