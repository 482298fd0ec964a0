"""ruff and mypy, configured in pyproject.toml, run as tests: a lint or type
error fails the suite (and so CI) with the tool's own report, while pytest's
closing line stays the last thing printed.  Alone: pytest tests/lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINTED = ("src", "tests", "bench", "scripts")  # ruff's; mypy's files are in [tool.mypy]


def _check(*argv: str, timeout: float) -> None:
    # The tools of this interpreter's environment: the versions pinned in the `test` extra.
    r = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(argv)} (exit status {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)


@pytest.mark.timeout(120)
def test_ruff_finds_nothing() -> None:
    _check("ruff", "check", "--no-fix", "--output-format", "concise", *LINTED, timeout=100)


@pytest.mark.timeout(600)
def test_mypy_finds_nothing() -> None:
    _check("mypy", timeout=580)
