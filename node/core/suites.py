"""Which MLS ciphersuite a new group uses (DESIGN §2), decided from what the invitees offer.

A node offers a KeyPackage for every suite it speaks; a new group uses the post-quantum X-Wing
suite when every invitee offers it, and otherwise the interoperable 0x0001, which every MLS
client has. A group's suite never changes, so inviting into an existing group needs a
KeyPackage of that group's suite. No I/O here: callers hand in what the peers offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.core.errors import NodeError

# IANA code points (RFC 9420 §17.1; draft-ietf-mls-pq-ciphersuites). node/mls.py checks they
# equal the binding's.
X25519_AES128GCM = 0x0001  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
XWING = 0x004D  # MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519

# What this node offers, most preferred first: also the order of a fetchKeyPackage answer.
OFFERED: tuple[int, ...] = (XWING, X25519_AES128GCM)

_NAMES = {XWING: "X-Wing", X25519_AES128GCM: "0x0001"}


def suite_name(suite: int) -> str:
    """How the node names a suite to a person: "X-Wing" or its code point."""
    return _NAMES.get(suite, f"{suite:#06x}")


@dataclass(frozen=True)
class SuiteChoice:
    """The suite a new group uses, and the invitees that kept it from using X-Wing."""

    suite: int
    without_xwing: tuple[bytes, ...] = ()

    def describe(self, name_of: Mapping[bytes, str] | None = None) -> str:
        """E.g. "X-Wing" or "0x0001: bob offers no X-Wing" (names already terminal-safe)."""
        if not self.without_xwing:
            return suite_name(self.suite)
        names = [(name_of or {}).get(p, p.hex()[:16]) for p in self.without_xwing]
        verb = "offers" if len(names) == 1 else "offer"
        return f"{suite_name(self.suite)}: {', '.join(names)} {verb} no X-Wing"


class NoCommonSuiteError(NodeError):
    """An invitee offers no KeyPackage of a suite the group can use; nothing was changed."""

    def __init__(self, peer: bytes, wanted: Iterable[int], name: str | None = None) -> None:
        self.peer = peer
        self.wanted = tuple(wanted)
        suites = " or ".join(suite_name(s) for s in self.wanted)
        super().__init__(f"{name or peer.hex()[:16]} offers no KeyPackage for {suites}")


def choose(
    offers: Mapping[bytes, Iterable[int]], name_of: Mapping[bytes, str] | None = None
) -> SuiteChoice:
    """The suite of a new group whose invitees offer ``offers`` (peer → suites): X-Wing when
    every invitee offers it (also with no invitees), otherwise 0x0001. Raises
    :class:`NoCommonSuiteError` naming an invitee that does not fit (``name_of`` names them)."""
    names = name_of or {}
    offered = {peer: frozenset(suites) for peer, suites in offers.items()}
    for peer, suites in offered.items():
        if not suites & set(OFFERED):
            raise NoCommonSuiteError(peer, OFFERED, names.get(peer))
    without = tuple(peer for peer, suites in offered.items() if XWING not in suites)
    if not without:
        return SuiteChoice(XWING)
    for peer, suites in offered.items():
        if X25519_AES128GCM not in suites:
            # It offers X-Wing alone, and someone else lacks X-Wing: nothing fits both.
            raise NoCommonSuiteError(peer, (X25519_AES128GCM,), names.get(peer))
    return SuiteChoice(X25519_AES128GCM, without)
