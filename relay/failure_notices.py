"""Delivery-failure notices: how a relay tells a sender that envelopes it delivered expired
unfetched.

A caller that sets ``failureNotice`` on a plain ``deliver`` has its mailbox kept beside each
envelope (sealed envelopes never: their caller is a one-time key). When such an envelope
expires, in the periodic purge or to make room in a full mailbox, its (id, recipient) is
recorded as owed in the ``undelivered`` table, in the transaction that deletes it. The next
purge turns what is owed to each sender into ``deliveryFailed`` envelopes in the sender's own
mailbox, at most :data:`~node.core.wire.MAX_UNDELIVERED` entries each, charged to its quota like
any envelope; one the quota refuses is dropped and counted, so a notice can never fill a store
that a sender's deliveries did not already fill. A notice records no sender of its own, so it
never causes another.

Both stores build notices here. A notice's id derives from its sender and the sequence number
of the first row it names, which is never reused: no randomness is needed, and no two notices
share an id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from node.core import wire

__all__ = ["NOTICE_ID_CONTEXT", "Owed", "notices_for"]

NOTICE_ID_CONTEXT = b"qpc/1 delivery failure notice\x00"

# (seq in the undelivered table, envelope id, recipient mailbox), oldest first
Owed = tuple[int, bytes, bytes]


def notices_for(
    sender: bytes, owed: Sequence[Owed], now_ms: int
) -> list[tuple[wire.Envelope, int]]:
    """The ``deliveryFailed`` envelopes that tell ``sender`` (a mailbox) of ``owed``, each with
    how many expired envelopes it names."""
    out: list[tuple[wire.Envelope, int]] = []
    for start in range(0, len(owed), wire.MAX_UNDELIVERED):
        chunk = owed[start : start + wire.MAX_UNDELIVERED]
        digest = hashlib.sha256(NOTICE_ID_CONTEXT + sender + chunk[0][0].to_bytes(8, "big"))
        failure = wire.DeliveryFailure(
            wire.FailureReason.EXPIRED,
            tuple(wire.Undelivered(envelope_id, recipient) for _, envelope_id, recipient in chunk),
        )
        notice = (
            wire.Envelope(
                id=digest.digest()[: wire.ENVELOPE_ID_SIZE],
                recipient=sender,
                kind=wire.EnvelopeKind.DELIVERY_FAILED,
                payload=wire.encode_delivery_failure(failure),
                group_id=b"",
                created_at_ms=now_ms,
            ),
            len(chunk),
        )
        out.append(notice)
    return out
