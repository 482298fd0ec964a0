"""SessionOptions: built once from Config in policy; its defaults are the tunables table's."""

from __future__ import annotations

import dataclasses

import pytest

from ftpwarden.policy.config import default_config
from ftpwarden.policy.options import session_options
from ftpwarden.policy.tunables import TUNABLES
from ftpwarden.proto.options import SessionOptions

FIELDS = [f.name for f in dataclasses.fields(SessionOptions)]


def test_every_option_is_a_tunable_and_has_no_default_of_its_own():
    for f in dataclasses.fields(SessionOptions):
        assert f.name in TUNABLES, f.name
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name


@pytest.mark.parametrize("name", FIELDS)
def test_defaults_are_the_tunables_table(name):
    value = getattr(session_options(default_config()), name)
    default = TUNABLES[name].default
    assert value == (None if default == "" else default), name


def test_values_come_from_the_config():
    o = session_options(default_config(idle_session_timeout=0, hide_ids=True, ftpd_banner="hi",
                                       file_open_mode=0o600, anon_max_rate=1000))
    assert (o.idle_session_timeout, o.hide_ids, o.ftpd_banner, o.file_open_mode, o.anon_max_rate) == \
        (0, True, "hi", 0o600, 1000)


def test_max_login_fails_zero_means_the_table_default():
    # kept from before the options were typed: 0 never lets a client guess forever
    assert session_options(default_config(max_login_fails=0)).max_login_fails == TUNABLES["max_login_fails"].default
    assert session_options(default_config(max_login_fails=7)).max_login_fails == 7


def test_options_are_frozen_and_built_once_per_config():
    cfg = default_config(hide_ids=True)
    o = session_options(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.hide_ids = False  # type: ignore[misc]
    assert session_options(default_config(hide_ids=True)) is o
