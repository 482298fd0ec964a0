"""quota_state_dir at start: made when missing; a directory that cannot be made stops the
server only when the config sets a quota (a user without rights on /var/lib must still
be able to start a server with none)."""

from __future__ import annotations

import pytest

from ftpwarden.ops import quota
from ftpwarden.policy.config import default_config


def test_the_directory_is_made_when_missing(tmp_path):
    where = tmp_path / "a" / "b"
    store = quota.open_store(default_config(quota_state_dir=str(where)))
    assert where.is_dir() and isinstance(store, quota.QuotaStore)


def test_an_unusable_directory_is_fine_without_a_quota(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = default_config(quota_state_dir=str(blocker / "quota"))  # cannot be made: a file is in the way
    assert isinstance(quota.open_store(cfg), quota.QuotaStore)


@pytest.mark.parametrize("limit", [{"quota_bytes": 1000}, {"quota_files": 5}])
def test_an_unusable_directory_stops_a_server_with_a_quota(tmp_path, limit):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="quota_state_dir"):
        quota.open_store(default_config(quota_state_dir=str(blocker / "quota"), **limit))
