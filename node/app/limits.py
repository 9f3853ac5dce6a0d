"""What a node lets other identities make it spend, and how often it said no.

A node talks to anyone who completes a handshake, and a handshake proves only a key. Every
resource such a stranger can make the node spend (CPU for KeyPackages and Welcomes, MLS state,
rows in ``node.db``) has a bound here, enforced before the work is done (DESIGN §11,
docs/threat-model.md "Consent and limits"). Each refusal is counted by kind
(:class:`Counters`); ``quicnprotochat doctor`` shows the counts a node last saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

__all__ = ["REFUSALS", "Counters", "NodeLimits"]

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class NodeLimits:
    """Every limit of a node. Rates are per second, bursts in calls or envelopes.

    *Known* callers are contacts (chosen by the user, or members of a group this node is in)
    and the inviter and members of an invitation waiting for the user's answer; everyone
    else is a *stranger*.
    """

    # fetchKeyPackage, per caller: each call makes (or hands out) a KeyPackage.
    key_package_rate_known: float = 1.0
    key_package_burst_known: float = 10
    key_package_rate_stranger: float = 1 / 60
    key_package_burst_stranger: float = 3
    # deliver, in envelopes per caller. A stranger may send invitation Welcomes only.
    deliver_rate_known: float = 100.0
    deliver_burst_known: float = 1000
    deliver_rate_stranger: float = 1 / 60
    deliver_burst_stranger: float = 3
    # All strangers together (new keys cost nothing: per-caller buckets alone do not bound a
    # flood from many identities).
    key_package_rate_strangers: float = 0.5
    key_package_burst_strangers: float = 20
    deliver_rate_strangers: float = 0.5
    deliver_burst_strangers: float = 20
    # Callers with a token bucket at once (least recently used forgotten first).
    max_callers: int = 10_000
    # Invitation requests from strangers waiting for the user.
    max_invitations: int = 20
    max_invitations_per_inviter: int = 1
    invitation_ttl_ms: int = 14 * DAY_MS
    # Envelope ids are kept as long as a copy may still arrive: until created_at_ms plus
    # this window (the relay keeps envelopes 7 days; a sender's outbox drops what is older
    # than the window). An older envelope, or one dated further ahead than the skew, is
    # refused.
    envelope_window_ms: int = 14 * DAY_MS
    max_clock_skew_ms: int = 10 * 60 * 1000
    max_seen: int = 200_000
    # Received envelopes that wait for their group, epoch or proposal; one share per direct
    # caller, per group for the relay path (sealed sender hides who sent them).
    max_deferred: int = 1000
    max_deferred_per_sender: int = 200
    # Sent envelopes waiting for their recipient. Commits, Welcomes and proposals are always
    # queued (a group must not fork over a full queue); application messages are refused.
    max_outbox: int = 20_000
    max_outbox_per_recipient: int = 5_000
    # Peers merely seen (a handshake, no contact) whose address is kept, in memory only.
    max_peers_seen: int = 1000
    # Seconds before envelopes a full bound refused are fetched from the relay again (they
    # stay in its mailbox meanwhile; the long poll goes on past them).
    relay_rescan_delay_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"limit {f.name} must be positive, not {value}")


# Every kind of refusal a node counts; Node.counters() reports each, zeros included.
REFUSALS = (
    "key_package_rate_limited",
    "deliver_rate_limited",
    "deliver_stranger_not_welcome",
    "envelope_expired",
    "envelope_from_future",
    "seen_full",
    "deferred_share_full",
    "deferred_dropped",
    "invitation_per_inviter",
    "invitations_full",
    "invitation_expired",
    "invitation_refused",
    "welcome_unusable",
    "outbox_full",
    "outbox_expired",
    "sealed_unopened",
    "sealed_bad_signature",
    "sealed_replayed",
    "failure_notice_not_from_relay",
    "failure_notice_malformed",
)


class Counters:
    """Refusals by kind since the node started, and those not yet saved to the store."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._unsaved: Counter[str] = Counter()

    def bump(self, kind: str, n: int = 1) -> None:
        if kind not in REFUSALS:
            raise ValueError(f"unknown refusal kind {kind!r}")
        self._counts[kind] += n
        self._unsaved[kind] += n

    @property
    def dirty(self) -> bool:
        return bool(self._unsaved)

    def snapshot(self) -> dict[str, int]:
        return {kind: self._counts[kind] for kind in REFUSALS}

    def take_unsaved(self) -> dict[str, int]:
        """The counts not saved yet (the store adds them to its totals)."""
        taken = dict(self._unsaved)
        self._unsaved.clear()
        return taken

    def unsave(self, taken: dict[str, int]) -> None:
        """Saving ``taken`` failed: keep it for the next attempt."""
        self._unsaved.update(taken)
