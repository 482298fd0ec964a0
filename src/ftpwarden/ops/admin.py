"""`ftpwarden who` and `ftpwarden kick`: the control socket's client (ops/control.py)."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from typing import Any

from .control import DEFAULT_PATH, control_path, request

__all__ = ["who_or_kick"]


def who_or_kick(args: argparse.Namespace) -> int:
    """0: done; 1: the server refused or (kick) no session matched; 2: no server to ask."""
    path = _socket_path(args.config)
    if path is None:
        print(f"ftpwarden: {args.config}: control_socket is not set, so the server has no control socket",
              file=sys.stderr)
        return 2
    if args.command == "who":
        req: dict[str, Any] = {"who": {}}
    else:
        chosen = [(f, v) for f, v in (("id", args.id), ("user", args.user), ("ip", args.ip)) if v]
        if len(chosen) != 1:
            print("ftpwarden: kick: give exactly one of ID, --user NAME, --ip ADDR", file=sys.stderr)
            return 2
        req = {"kick": dict(chosen)}
    try:
        reply = request(path, req)
    except PermissionError:
        print(f"ftpwarden: {path}: permission denied (root and admin_group only)", file=sys.stderr)
        return 2
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"ftpwarden: {path}: no server is listening there", file=sys.stderr)
        return 2
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.EPIPE or isinstance(e, ConnectionResetError):
            why = "the server closed the connection"
        print(f"ftpwarden: {path}: {why}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"ftpwarden: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply.get("sessions") if args.command == "who" else reply.get("kicked"), indent=1))
    elif args.command == "who":
        print(format_who(reply.get("sessions") or []))
    else:
        kicked = reply.get("kicked") or []
        if kicked:
            print(f"kicked {len(kicked)} session{'' if len(kicked) == 1 else 's'}: {' '.join(kicked)}")
        else:
            print("no session matched", file=sys.stderr)
    if args.command == "kick" and not reply.get("kicked"):
        return 1
    return 0


def _socket_path(config: str | None) -> str | None:
    if config is None:
        return DEFAULT_PATH
    from ..policy.config import load_config
    cfg, _ = load_config(config, [])
    return control_path(cfg)


def format_who(rows: list[dict[str, Any]]) -> str:
    """A table as ftpwho prints one: one line per session."""
    head = ("ID", "USER", "CLASS", "CLIENT", "SINCE", "IDLE", "COMMAND", "TRANSFER")
    lines = [head]
    for r in rows:
        since = r.get("since")
        lines.append((str(r.get("id", "")), str(r.get("user") or "-"), str(r.get("class") or "-"),
                      str(r.get("client", "")),
                      time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "-",
                      _duration(r.get("idle")), str(r.get("command") or "-"), _transfer(r.get("transfer"))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
           for line in lines]
    out.append(f"{len(rows)} session{'' if len(rows) == 1 else 's'}")
    return "\n".join(s.rstrip() for s in out)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _transfer(t: Any) -> str:
    if not isinstance(t, dict):
        return "-"
    arrow = "<" if t.get("direction") == "upload" else ">"
    size = f"/{_bytes(t['size'])}" if isinstance(t.get("size"), int) else ""
    return f"{arrow} {t.get('name', '')} {_bytes(t.get('bytes', 0))}{size} {_bytes(t.get('rate', 0))}/s"


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"
