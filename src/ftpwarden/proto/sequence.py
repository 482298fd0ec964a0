"""THE sequencing rules: which command must come before which (one place).

A rule names the verbs it guards, what the session state must show, and the
503 text when it does not.  Handlers ask `out_of_sequence(state, verb)` at the
point their reply precedence puts it (a disabled feature answers 502/550 first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .replies import Code, Reply

__all__ = ["SequenceState", "Rule", "RULES", "TAKES_REST", "KEEPS_RENAME", "out_of_sequence"]


class SequenceState(Protocol):
    """What the rules read of a session."""

    @property
    def logged_in(self) -> bool: ...
    @property
    def pending_user(self) -> str | None: ...
    @property
    def rename_from(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def pbsz(self) -> bool: ...
    @property
    def epsv_all(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Rule:
    verbs: frozenset[str]
    holds: Callable[[SequenceState], bool]
    refusal: str  # the 503 text when the rule does not hold


RULES: tuple[Rule, ...] = (
    # USER -> PASS
    Rule(frozenset({"PASS"}), lambda s: s.pending_user is not None, "Login with USER first."),
    # RNFR -> RNTO (any other command between them drops the RNFR: KEEPS_RENAME)
    Rule(frozenset({"RNTO"}), lambda s: s.rename_from is not None, "RNFR required first."),
    # AUTH once, and before USER (RFC 4217 4)
    Rule(frozenset({"AUTH"}), lambda s: not s.tls, "Already using TLS."),
    Rule(frozenset({"AUTH"}), lambda s: not s.logged_in and s.pending_user is None, "AUTH must come before USER."),
    # AUTH -> PBSZ -> PROT (RFC 4217 9)
    Rule(frozenset({"PBSZ"}), lambda s: s.tls, "PBSZ needs a TLS control connection (AUTH TLS first)."),
    Rule(frozenset({"PROT"}), lambda s: s.tls, "PROT needs a TLS control connection (AUTH TLS first)."),
    Rule(frozenset({"PROT"}), lambda s: s.pbsz, "PBSZ must come before PROT."),
    # EPSV ALL: no other data-channel command for the rest of the session (RFC 2428 4)
    Rule(frozenset({"PASV", "PORT", "EPRT"}), lambda s: not s.epsv_all, "EPSV ALL in effect; use EPSV."),
)

# REST -> transfer: only these take the marker (and so end it), whatever their
# outcome; every other command leaves it alone, as in vsftpd and pyftpdlib
# (clients send REST before or after PASV/PORT/TYPE).
TAKES_REST = frozenset({"RETR", "STOR", "APPE", "STOU"})

# RNFR -> RNTO: any other command in between forgets the RNFR.
KEEPS_RENAME = frozenset({"RNFR", "RNTO"})


def out_of_sequence(state: SequenceState, verb: str) -> Reply | None:
    """The 503 for `verb` in this state, or None when it may run."""
    for rule in RULES:
        if verb in rule.verbs and not rule.holds(state):
            return Reply(Code.BAD_SEQUENCE, rule.refusal)
    return None
