"""Imports point down only: cli -> priv -> net -> logs, policy -> proto (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "ftpwarden"
RANK = {"proto": 0, "policy": 1, "logs": 1, "net": 2, "priv": 3}
FORBIDDEN_IN_PROTO = {"socket", "asyncio", "logging", "subprocess", "ssl", "selectors", "threading"}
CLOCKS = ("time.time(", "time.monotonic(", "datetime.now(", "os.open(", "os.stat(", "open(")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import; level > 0 is relative."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out.extend((0, a.name) for a in node.names)
    return out


def _target(path: Path, level: int, module: str) -> str | None:
    """The ftpwarden layer an import points at, or None for outside the package."""
    if level == 0:
        parts = module.split(".")
        return parts[1] if parts[0] == "ftpwarden" and len(parts) > 1 else None
    base = path.parent.relative_to(PKG).parts
    base = base[: len(base) - (level - 1)] if level > 1 else base
    full = list(base) + (module.split(".") if module else [])
    return full[0] if full else None


def test_imports_point_down_only():
    bad = []
    for path in PKG.rglob("*.py"):
        layer = path.relative_to(PKG).parts[0]
        if layer not in RANK:
            continue  # cli.py, usercmd.py, __main__.py sit on top
        for level, module in _imports(path):
            target = _target(path, level, module)
            if target in RANK and RANK[target] > RANK[layer]:
                bad.append(f"{path.relative_to(PKG)} imports {target}")
    assert not bad, bad


def test_proto_does_no_io():
    bad = []
    for path in (PKG / "proto").rglob("*.py"):
        for level, module in _imports(path):
            if level == 0 and module.split(".")[0] in FORBIDDEN_IN_PROTO:
                bad.append(f"{path.name} imports {module}")
        text = path.read_text()
        bad += [f"{path.name} calls {c}" for c in CLOCKS if c in text]
    assert not bad, bad


def test_proto_is_typed_without_any_or_getattr():
    """proto reads typed SessionOptions and a Principal: no Any in a signature,
    no getattr() (options and accounts are attributes mypy checks)."""
    bad = []
    for path in (PKG / "proto").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
                notes = [a.annotation for a in args if a.annotation is not None]
                notes += [node.returns] if node.returns is not None else []
                if any("Any" in ast.unparse(n) for n in notes):
                    bad.append(f"{path.name}:{node.lineno} {node.name} names Any")
            elif isinstance(node, ast.AnnAssign) and "Any" in ast.unparse(node.annotation):
                bad.append(f"{path.name}:{node.lineno} annotation names Any")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                bad.append(f"{path.name}:{node.lineno} calls getattr")
    assert not bad, bad
