"""Results -> summaries, ratios, a text table, Markdown and JSON. Pure functions only.

The results dict (what run.py builds and results.json holds):

    {"meta": {...}, "servers": [column order], "subjects": [...], "peers": [...],
     "server_info": {name: {"version": str, ...}},
     "ceiling": {name: [{"mib_s": x, "client_cores": y} | {"error": str}, ...]},
     "workloads": {workload: {server: {"status": "ok" | "n/a", "reason": str | None,
                                       "samples": [{"metrics": {...}, "expected": {...},
                                                    "missing": {metric: why}, "notes": [...]}],
                                       "summary": {metric: {"median", "min", "max", "n"}}}}}}

A ratio is subject median / peer median, for every metric with a direction;
whether more is better is shown by the arrow in the metric column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "CEILINGS", "TARGETS", "target_rows", "percentile", "summarize", "fmt_num", "fmt_cell", "ratio",
           "fmt_ratio", "build_table", "render_text", "render_markdown", "to_json", "summarize_results"]

_IDLE = [("accepted", "sessions accepted", "ok", None),
         ("tree_pss_mib", "tree PSS, all sessions", "MiB", "lower"),
         ("marginal_pss_kib", "marginal PSS per session (slope min(500,N/2)->N)", "KiB", "lower"),
         ("fixed_pss_mib", "fixed PSS (line at 0 sessions - warm base)", "MiB", "lower"),
         ("pss_kib", "PSS per session (incl. fixed)", "KiB", "lower"),
         ("uss_kib", "USS per session", "KiB", "lower"),
         ("procs", "processes per session", "procs", "lower")]

# workload -> [(metric key, label, unit, better: "higher" | "lower" | None)]; unit "ok" = a count of successes
METRICS: dict[str, list[tuple[str, str, str, str | None]]] = {
    "retr_big": [("mib_s", "download rate", "MiB/s", "higher"),
                 ("cpu_s_per_gib", "server CPU", "s/GiB", "lower"),
                 ("client_cores", "client CPU", "cores", None)],
    "stor_big": [("mib_s", "upload rate", "MiB/s", "higher"),
                 ("cpu_s_per_gib", "server CPU", "s/GiB", "lower"),
                 ("client_cores", "client CPU", "cores", None),
                 ("verified", "on disk: size+sha256", "ok", None)],
    "retr_small": [("files_s", "files", "files/s", "higher"),
                   ("p99_ms", "p99 latency", "ms", "lower"),
                   ("cpu_ms_per_file", "server CPU", "ms/file", "lower"),
                   ("client_cores", "client CPU", "cores", None)],
    "list_big": [("list_ms", "LIST", "ms/listing", "lower"),
                 ("mlsd_ms", "MLSD", "ms/listing", "lower"),
                 ("list_cpu_ms", "server CPU, LIST", "ms/listing", "lower"),
                 ("mlsd_cpu_ms", "server CPU, MLSD", "ms/listing", "lower")],
    "login_rate": [("logins_s", "logins", "logins/s", "higher"),
                   ("cpu_ms_per_login", "server CPU", "ms/login", "lower"),
                   ("hash_ms", "password check alone", "ms", "lower"),
                   ("overhead_ms", "CPU/login - check", "ms/login", "lower"),
                   ("beyond_check_ms", "CPU/login beyond the check (cheap-hash user)", "ms/login", "lower"),
                   ("client_cores", "client CPU", "cores", None)],
    "concurrent": [("agg_mib_s", "aggregate rate", "MiB/s", "higher"),
                   ("slowest_mib_s", "slowest client", "MiB/s", "higher"),
                   ("cpu_s_per_gib", "server CPU", "s/GiB", "lower"),
                   ("client_cores", "client CPU", "cores", None),
                   ("clients_ok", "clients completed", "ok", None)],
    "idle_sessions": _IDLE,
    "idle_local": _IDLE,
    "idle_tls": _IDLE,
    "failed_logins": [("answered", "failed logins answered 530", "ok", None),
                      ("rss_connected_mib", "root RSS, all connected", "MiB", "lower"),
                      ("rss_peak_mib", "root RSS peak, during the PASSes", "MiB", "lower"),
                      ("checks_mib", "root RSS added by the checks", "MiB", "lower"),
                      ("rss_after_mib", "root RSS after the 530s", "MiB", "lower"),
                      ("uss_connected_mib", "root USS, all connected", "MiB", "lower"),
                      ("uss_after_mib", "root USS after the 530s", "MiB", "lower"),
                      ("answer_max_s", "slowest 530", "s", "lower"),
                      ("prelogin_pss_kib", "PSS per connection before login", "KiB", "lower"),
                      ("prelogin_procs", "processes per connection before login", "procs", "lower")],
    "retr_big_tls": [("mib_s", "download rate", "MiB/s", "higher"),
                     ("cpu_s_per_gib", "server CPU", "s/GiB", "lower"),
                     ("client_cores", "client CPU", "cores", None)],
    "stor_big_tls": [("mib_s", "upload rate", "MiB/s", "higher"),
                     ("cpu_s_per_gib", "server CPU", "s/GiB", "lower"),
                     ("client_cores", "client CPU", "cores", None),
                     ("verified", "on disk: size+sha256", "ok", None)],
}

CEILINGS: list[tuple[str, str]] = [
    ("loopback", "loopback: sendfile -> recv (2 helper processes)"),
    ("client_download", "client download (its RETR read loop)"),
    ("client_upload", "client upload (its STOR sendfile)"),
    ("client_tls_download", "client TLS download"),
    ("client_tls_upload", "client TLS upload"),
]

CEILING_HEADERS = ["ceiling (same run)", "MiB/s", "client CPU (cores)", "MiB/s per client core"]
_ARROW = {"higher": "↑", "lower": "↓", None: ""}


# -- numbers -----------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); p in 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: Iterable[float]) -> dict[str, float] | None:
    xs = [float(v) for v in values]
    if not xs:
        return None
    return {"median": percentile(xs, 50), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_num(x: float) -> str:
    """Three significant digits, no exponent for the sizes we meet (0.0001 .. 10^7)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    digits = min(6, 2 - math.floor(math.log10(a)))
    return f"{x:.{digits}f}"


def fmt_cell(summary: dict[str, float] | None) -> str:
    """'median (min–max)', or just the median when all samples agree or there is one."""
    if not summary:
        return "n/a"
    med, lo, hi = fmt_num(summary["median"]), fmt_num(summary["min"]), fmt_num(summary["max"])
    if summary["n"] == 1 or lo == hi:
        return med
    return f"{med} ({lo}–{hi})"


def ratio(subject: float | None, peer: float | None) -> float | None:
    if subject is None or peer is None or peer == 0:
        return None
    return subject / peer


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    return f"{r:.2f}×" if 0.1 <= abs(r) < 100 else f"{fmt_num(r)}×"


def _ok_cell(samples: list[dict], key: str) -> str:
    got = [s for s in samples if key in s.get("metrics", {})]
    if not got:
        return "n/a"
    ok = sum(int(s["metrics"][key]) for s in got)
    want = sum(int(s.get("expected", {}).get(key, 1)) for s in got)
    return f"{ok}/{want}"


# -- results -> summaries ----------------------------------------------------------------
def summarize_results(results: dict[str, Any]) -> dict[str, Any]:
    """Fill in every "summary" from its "samples" (in place; returns `results`)."""
    for per_server in results.get("workloads", {}).values():
        for entry in per_server.values():
            keys: dict[str, list[float]] = {}
            for s in entry.get("samples", []):
                for k, v in s.get("metrics", {}).items():
                    keys.setdefault(k, []).append(v)
            entry["summary"] = {k: summarize(v) for k, v in keys.items()}
    return results


# -- the table ---------------------------------------------------------------------------
def _short(name: str) -> str:
    return name.replace("ftpwarden-", "fw-")


def build_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, footnotes) of the main table."""
    servers: list[str] = results["servers"]
    subjects = [s for s in results.get("subjects", []) if s in servers]
    peers = [p for p in results.get("peers", []) if p in servers and p not in subjects]
    pairs = [(s, p) for s in subjects for p in peers]
    headers = ["workload", "metric", "unit"] + servers + [f"{_short(s)}/{_short(p)}" for s, p in pairs]
    notes: list[str] = []

    def mark(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"n/a[{notes.index(text) + 1}]"

    rows = []
    for wname, per_server in results.get("workloads", {}).items():
        for key, label, unit, better in METRICS.get(wname, []):
            cells, medians = [], {}
            for srv in servers:
                entry = per_server.get(srv)
                if entry is None:
                    cells.append("-")
                    continue
                if entry.get("status") != "ok":
                    cells.append(mark(f"{srv}: {entry.get('reason') or 'not available'}"))
                    continue
                if unit == "ok":
                    cells.append(_ok_cell(entry.get("samples", []), key))
                    continue
                summary = entry.get("summary", {}).get(key)
                if summary is None:
                    why = next((s["missing"][key] for s in entry.get("samples", [])
                                if key in s.get("missing", {})), "not measured")
                    cells.append(mark(f"{srv}, {wname}, {label}: {why}"))
                    continue
                medians[srv] = summary["median"]
                cells.append(fmt_cell(summary))
            rcells = [fmt_ratio(ratio(medians.get(s), medians.get(p))) if better else ""
                      for s, p in pairs]
            rows.append([wname, f"{label} {_ARROW[better]}".strip(), unit] + cells + rcells)
    # A ratio column with no number at all (its subject never ran) only adds width.
    first = 3 + len(servers)
    keep = [i for i in range(len(headers))
            if i < first or any(r[i] not in ("", "n/a") for r in rows) or not rows]
    headers = [headers[i] for i in keep]
    rows = [[r[i] for i in keep] for r in rows]
    return headers, rows, [f"[{i + 1}] {n}" for i, n in enumerate(notes)]


# -- issue 11's targets -------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One row of the targets table: `metric` of `workload` on `subject` against vsftpd's."""

    figure: str  # {n} becomes the workload's session count
    workload: str
    metric: str
    subject: str
    limit: float
    unit: str
    higher: bool = False  # a floor (>=) instead of a ceiling (<=)
    vs_vsftpd: bool = False  # the figure is subject / vsftpd, the limit a ratio
    also: str | None = None  # a second metric shown beside it (its label: ALSO_LABELS)


TARGETS: list[Target] = [
    Target("PSS per idle plain session, {n} anonymous sessions", "idle_sessions", "pss_kib",
           "ftpwarden-isolated", 64, "KiB"),
    Target("PSS per idle plain session, {n} sessions of 10 local users", "idle_local", "pss_kib",
           "ftpwarden-isolated", 128, "KiB"),
    Target("PSS per idle session, session_isolation=process ({n} anonymous)", "idle_sessions", "pss_kib",
           "ftpwarden-isolated-process", 1536, "KiB"),
    Target("PSS per idle TLS session ({n} sessions)", "idle_tls", "pss_kib", "ftpwarden-isolated", 2048, "KiB"),
    Target("server CPU per login beyond the password check (cheap-hash user)", "login_rate", "beyond_check_ms",
           "ftpwarden-isolated", 5, "ms", also="overhead_ms"),
    Target("concurrent {n}-client aggregate rate", "concurrent", "agg_mib_s", "ftpwarden-isolated", 1.3,
           "× vsftpd", higher=True, vs_vsftpd=True),
]
TARGET_HEADERS = ["issue 11 figure", "vsftpd", "ftpwarden", "target", "met"]
ALSO_LABELS = {"overhead_ms": "CPU/login - check", "marginal_pss_kib": "marginal"}
_COUNTS = {"idle_sessions": "idle_sessions", "idle_local": "idle_local", "idle_tls": "idle_tls",
           "concurrent": "concurrent"}


def _median(results: dict[str, Any], workload: str, server: str, metric: str) -> float | None:
    entry = results.get("workloads", {}).get(workload, {}).get(server)
    if not entry or entry.get("status") != "ok":
        return None
    summary = (entry.get("summary") or {}).get(metric)
    return summary["median"] if summary else None


def _reached(results: dict[str, Any], workload: str, server: str) -> str:
    """' [k of n sessions]' when an idle workload did not reach its count (memory guard, refusals)."""
    entry = results.get("workloads", {}).get(workload, {}).get(server) or {}
    samples = [x for x in entry.get("samples", []) if "accepted" in x.get("metrics", {})]
    if not samples or not workload.startswith("idle"):
        return ""
    got = min(int(x["metrics"]["accepted"]) for x in samples)
    want = int(samples[0].get("expected", {}).get("accepted", got))
    return f" [{got} of {want} sessions]" if got < want else ""


def _target_cell(results: dict[str, Any], t: Target, server: str) -> tuple[str, float | None]:
    value = _median(results, t.workload, server, t.metric)
    also = "marginal_pss_kib" if t.workload.startswith("idle") else t.also
    second = _median(results, t.workload, server, also) if also else None
    extra = f" ({ALSO_LABELS.get(also or '', also)} {fmt_num(second)})" if second is not None else ""
    if value is None:
        return ("n/a" + extra).strip(), None
    unit = "MiB/s" if t.metric == "agg_mib_s" else t.unit
    return f"{fmt_num(value)} {unit}{extra}{_reached(results, t.workload, server)}", value


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """Issue 11's target table: each figure for vsftpd and ftpwarden from this run, the target, met or not.
    Idle figures are PSS per session including the fixed cost (the marginal slope in brackets)."""
    sizes = results.get("meta", {}).get("sizes", {})
    rows = []
    for t in TARGETS:
        if t.workload not in results.get("workloads", {}):
            continue
        figure = t.figure.format(n=sizes.get(_COUNTS.get(t.workload, ""), "N"))
        peer, peer_value = _target_cell(results, t, "vsftpd")
        mine, value = _target_cell(results, t, t.subject)
        if t.vs_vsftpd:
            value = ratio(value, peer_value)
            mine = f"{fmt_ratio(value)} ({mine})" if value is not None else f"n/a ({mine})"
            peer = f"1× ({peer})"
        if t.subject != "ftpwarden-isolated":
            mine += f" [{_short(t.subject)}]"
        target = f"{'≥' if t.higher else '≤'} {fmt_num(t.limit)} {t.unit}"
        met = "n/a" if value is None else ("yes" if (value >= t.limit if t.higher else value <= t.limit) else "NO")
        rows.append([figure, peer, mine, target, met])
    return rows


def ceiling_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label in CEILINGS:
        samples = results.get("ceiling", {}).get(key)
        if not samples:
            continue
        good = [s for s in samples if "mib_s" in s]
        if not good:
            rows.append([label, "n/a: " + samples[0].get("error", "?"), "", ""])
            continue
        rate = fmt_cell(summarize(s["mib_s"] for s in good))
        cores = summarize(s["client_cores"] for s in good if "client_cores" in s)
        per_core = summarize(s["mib_s"] / s["client_cores"] for s in good if s.get("client_cores"))
        rows.append([label, rate, fmt_cell(cores) if cores else "", fmt_cell(per_core) if per_core else ""])
    return rows


def render_text(headers: list[str], rows: list[list[str]], numeric_from: int = 3) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    last = None
    for r in rows:
        first = r[0] if r[0] != last else ""
        last = r[0]
        out.append("  ".join(c.ljust(w) if i < numeric_from else c.rjust(w)
                             for i, (c, w) in enumerate(zip([first] + r[1:], widths, strict=False))).rstrip())
    return "\n".join(out)


def _md_table(headers: list[str], rows: list[list[str]], numeric_from: int) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---:" if i >= numeric_from else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _notes(results: dict[str, Any]) -> list[str]:
    out = []
    for wname, per_server in results.get("workloads", {}).items():
        for srv, entry in per_server.items():
            seen: list[str] = []
            for s in entry.get("samples", []):
                for n in s.get("notes", []):
                    if n not in seen:
                        seen.append(n)
            if seen:
                more = f" (+{len(seen) - 3} more)" if len(seen) > 3 else ""
                out.append(f"{wname} / {srv}: " + "; ".join(seen[:3]) + more)
    return out


def render_all_text(results: dict[str, Any]) -> str:
    headers, rows, footnotes = build_table(results)
    parts = [_header_lines(results), "",
             render_text(CEILING_HEADERS, ceiling_rows(results), 1), "",
             render_text(headers, rows)]
    targets = target_rows(results)
    if targets:
        parts += ["", render_text(TARGET_HEADERS, targets, 1)]
    if footnotes:
        parts += ["", *footnotes]
    notes = _notes(results)
    if notes:
        parts += ["", "notes:", *("  " + n for n in notes)]
    return "\n".join(parts)


def _header_lines(results: dict[str, Any]) -> str:
    m = results.get("meta", {})
    info = results.get("server_info", {})
    versions = ", ".join(f"{s} {info.get(s, {}).get('version', '?')}" for s in results.get("servers", []))
    return "\n".join([
        f"ftpwarden benchmark {m.get('started', '')}: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}",
        f"servers: {versions}",
        f"sizes: {m.get('sizes_text', '?')}; repeat {m.get('repeat', '?')}; "
        f"median (min–max) of the repeats; took {m.get('duration_s', 0):.0f}s",
        f"command: {m.get('command', '?')} (commit {m.get('commit') or '?'})",
    ])


def render_markdown(results: dict[str, Any]) -> str:
    headers, rows, footnotes = build_table(results)
    md = ["# ftpwarden benchmark results", "", "```", _header_lines(results), "```", "",
          "## Ceilings (same run)", "",
          _md_table(CEILING_HEADERS, ceiling_rows(results), 1), "",
          "## Servers", "",
          _md_table(headers, rows, 3), ""]
    targets = target_rows(results)
    if targets:
        md += ["## Issue 11 targets (ftpwarden-isolated unless named; idle: PSS per session incl. the fixed "
               "cost, marginal slope in brackets)", "", _md_table(TARGET_HEADERS, targets, 1), ""]
    if footnotes:
        md += [*(f"{f}  " for f in footnotes), ""]
    notes = _notes(results)
    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    md += ["Cells: median (min–max) over the repeats. Ratios: subject median / peer median; "
           "↑ = more is better, ↓ = less is better. See bench/README.md.", ""]
    return "\n".join(md)


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=1, sort_keys=False, default=str) + "\n"
