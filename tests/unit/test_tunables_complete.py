"""Every vsftpd option is either honoured or refused on purpose with a reason (issue 12)."""

import pytest

from ftpwarden.policy.config import load_config
from ftpwarden.policy.tunables import TUNABLES, Kind, Tunable, format_tunables, format_value

REFUSED = [t for t in TUNABLES.values() if t.refused]


def test_no_vsftpd_option_is_left_unimplemented() -> None:
    missing = sorted(t.name for t in TUNABLES.values() if t.origin == "vsftpd" and t.status == "no")
    assert missing == []


def _other_value(t: Tunable) -> str:
    if t.kind is Kind.BOOL:
        return format_value(t, not t.default)
    return "12345" if t.kind is Kind.INT else "/nonexistent/refused"


@pytest.mark.parametrize("t", REFUSED, ids=[t.name for t in REFUSED])
def test_a_refused_option_says_why_in_one_line(t: Tunable) -> None:
    assert "\n" not in t.refused and len(t.refused) > 30
    _, warnings = load_config(None, [f"{t.name}={_other_value(t)}"])
    assert [w for w in warnings if f"option {t.name}=" in w and "is refused" in w and t.refused in w]
    assert "refused" in format_tunables([t.name]).splitlines()[3].split()[3]


def test_a_refused_option_at_its_default_is_silent() -> None:
    t = TUNABLES["ssl_sslv3"]
    _, warnings = load_config(None, [f"{t.name}={format_value(t, t.default)}"])
    assert not [w for w in warnings if "refused" in w]
