"""Delivery-failure notices: how a relay tells a sender that envelopes it delivered expired
unfetched (ADR 0009).

A caller that sets ``failureNotice`` on a plain ``deliver`` has its mailbox kept beside each
envelope (sealed envelopes never: their caller is a one-time key). When such an envelope
expires, in the periodic purge or to make room in a full mailbox, its (id, recipient) is
recorded as owed in the ``undelivered`` table, in the transaction that deletes it. The purge
then turns what is owed to each sender into ``deliveryFailed`` envelopes in the sender's own
mailbox, each naming at most :attr:`Telling.per_notice` envelopes, charged to its quota like any
envelope; one the quota refuses is dropped and counted, so a notice can never fill a store that
a sender's deliveries did not already fill. A notice records no sender of its own, so it never
causes another. Debts are read :data:`OWED_BATCH` at a time, each batch in a transaction of its
own, so a purge that finds many holds neither much memory nor the store's lock for long.

A notice's id is SHA-256 of a fresh random salt (one per purge, from the runtime), the sender
and the sequence number of the first debt it names: nobody can guess it and store an envelope
of that id first, and a notice whose id is taken anyway is counted as untold, never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node.core import wire

__all__ = ["NOTICE_ID_CONTEXT", "OWED_BATCH", "Owed", "Telling", "entries_fitting", "notices_for"]

NOTICE_ID_CONTEXT = b"qpc/1 delivery failure notice\x00"
# Debts handled in one transaction.
OWED_BATCH = 4096
# Encoded bytes a notice costs beyond its entries, and each entry (two Data and a list slot),
# generously: what decides how many entries fit in the largest envelope a fetch carries.
_NOTICE_OVERHEAD = 512
_ENTRY_BYTES = 96

# (seq in the undelivered table, envelope id, recipient mailbox), oldest first
Owed = tuple[int, bytes, bytes]


@dataclass(frozen=True)
class Telling:
    """How one purge makes its notices."""

    now_ms: int
    salt: bytes  # fresh random bytes for this purge's notice ids
    per_notice: int = wire.MAX_UNDELIVERED


def entries_fitting(max_envelope_bytes: int) -> int:
    """How many entries a notice may name and still be fetched (1 at least)."""
    room = (max_envelope_bytes - _NOTICE_OVERHEAD) // _ENTRY_BYTES
    return max(1, min(wire.MAX_UNDELIVERED, room))


def notices_for(
    sender: bytes, owed: Sequence[Owed], telling: Telling
) -> Iterator[tuple[wire.Envelope, int]]:
    """The ``deliveryFailed`` envelopes that tell ``sender`` (a mailbox) of ``owed``, each with
    how many expired envelopes it names; made one at a time, so a caller that stops early
    encodes no more."""
    step = telling.per_notice
    for start in range(0, len(owed), step):
        chunk = owed[start : start + step]
        seed = NOTICE_ID_CONTEXT + telling.salt + sender + chunk[0][0].to_bytes(8, "big")
        failure = wire.DeliveryFailure(
            wire.FailureReason.EXPIRED,
            tuple(wire.Undelivered(envelope_id, recipient) for _, envelope_id, recipient in chunk),
        )
        notice = wire.Envelope(
            id=hashlib.sha256(seed).digest()[: wire.ENVELOPE_ID_SIZE],
            recipient=sender,
            kind=wire.EnvelopeKind.DELIVERY_FAILED,
            payload=wire.encode_delivery_failure(failure),
            group_id=b"",
            created_at_ms=telling.now_ms,
        )
        yield notice, len(chunk)
