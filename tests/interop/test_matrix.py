"""The client interop matrix: every case is one test; the run itself happens once (conftest.py).

See matrix.py for what each case checks, clients.py for how each client is driven.
"""

from __future__ import annotations

import os

import pytest

from .clients import CLIENTS
from .matrix import DEADLINE, MODES, plan

pytestmark = pytest.mark.timeout(DEADLINE + 240)  # the first test waits for the whole run
_not_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")

CASES = [pytest.param(mode, name, transport, case, id=f"{mode}-{name}-{transport}-{case}",
                      marks=[_not_root] if mode == "isolated" else [])
         for mode in MODES for name, client in CLIENTS.items() for transport, case in plan(client)]


@pytest.mark.parametrize("mode,client,transport,case", CASES)
def test_client(interop, mode: str, client: str, transport: str, case: str) -> None:
    r = interop[f"{mode}-{client}-{transport}-{case}"]
    assert r.ok, r.detail
