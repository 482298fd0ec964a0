"""Issue 13, item 4 in isolated mode: two isolated-mode nodes (each its own listener,
broker and workers) serving ftpw_alice's home, storing one name at once and resuming
an interrupted upload on the other node: the checks of
tests/integration/test_shared_storage.py, run once per session_isolation setting."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..integration import test_shared_storage as S
from ..integration.conftest import start_server, stop_server
from .conftest import write_conf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolated mode needs root (CI runs as root)")
ALICE = ("ftpw_alice", "alice-pw-1")


@pytest.fixture
def nodes(tmp_path, accounts, session_isolation):
    """start(*options) -> two servers with these options on alice's home, and the home."""
    home = Path(accounts["alice"].pw_dir)
    before = set(home.iterdir())
    started = []

    def start(*options: str):
        conf = write_conf(tmp_path, "write_enable=YES", "delay_failed_login=0", "ban_threshold=0", *options)
        for _ in range(2):
            started.append(start_server(["--config", str(conf)], home, tmp_path))
        return started[-2], started[-1], home

    yield start
    for srv in started:
        stop_server(srv)
    for made in set(home.glob("t-*")) - before:  # each check's directory
        shutil.rmtree(made, ignore_errors=True)


@pytest.mark.parametrize("mode", ["atomic", "lock"])
def test_two_isolated_nodes_storing_one_name_leave_one_whole_file(nodes, mode, session_isolation):
    S.check_concurrent_stores(*nodes(*S.MODES[mode]), rounds_max=8, locks=mode == "lock", cred=ALICE,
                              label=f"isolated ({session_isolation}), {mode}, two nodes")


def test_an_interrupted_atomic_upload_is_resumed_on_the_other_isolated_node(nodes):
    S.check_resume_on_the_other_node(*nodes("atomic_uploads=YES"), cred=ALICE)
