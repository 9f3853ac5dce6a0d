"""A sender that asked is told when a relay drops what it delivered unfetched: the store's
notices on both backends, the relay's refusal of notices it did not make, and a node whose
message shows ``failed`` with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import relay.store
import relay.store_pg
from node.app.events import DeliveryChanged, Joined
from node.app.messages import DeliveryState
from node.app.messenger import Messenger
from node.app.node import RELAY_EXPIRED_REASON, Node
from node.app.router import RelayInfo
from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from relay.failure_notices import Telling, entries_fitting, notices_for
from relay.server import Relay
from relay.store import StoreQuotas
from relay.store_api import MailboxBackend
from tests.conftest import LOOPBACK, running_endpoint
from tests.integration.test_messenger import DEADLINE, key, next_event
from tests.integration.test_relay_limits import client, relay_key, running_relay
from tests.integration.test_relay_pg_store import make_mailboxes
from tests.runtime_support import Runtimes

SALT = b"salt" * 4
MAILBOX = b"\x05" * 32
SENDER = b"\x07" * 32
TTL_MS = 60_000
BACKENDS = pytest.mark.parametrize("kind", ["sqlite", "postgresql"])


def envelope(mailbox: bytes = MAILBOX, size: int = 100) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), mailbox, wire.EnvelopeKind.APPLICATION, b"x" * size, b"g", 1
    )


@contextlib.asynccontextmanager
async def backend(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest, **quotas: int
) -> AsyncIterator[MailboxBackend]:
    store = await make_mailboxes(kind, (tmp_path, runtimes), request, StoreQuotas(**quotas))
    try:
        yield store
    finally:
        await store.close()


async def notices_in(store: MailboxBackend, mailbox: bytes) -> list[wire.DeliveryFailure]:
    batch = await store.fetch(mailbox, 0, 100, 1 << 20)
    assert all(e.kind is wire.EnvelopeKind.DELIVERY_FAILED for e in batch.envelopes)
    return [wire.decode_delivery_failure(e.payload) for e in batch.envelopes]


@BACKENDS
async def test_only_a_sender_that_asked_is_told_and_only_once(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest
) -> None:
    async with backend(kind, tmp_path, runtimes, request) as store:
        asked, unasked, fresh = envelope(), envelope(), envelope()
        await store.put([asked], 1000, sender=SENDER)
        await store.put([unasked], 1000)  # sealed, or a sender that did not ask
        await store.put([fresh], 5000, sender=SENDER)
        purged = await store.purge_expired(not_before_ms=2000, telling=Telling(6000, SALT))
        assert (purged.expired, purged.notices, purged.untold) == (2, 1, 0)
        assert purged.told == (SENDER,)
        told = await notices_in(store, SENDER)
        assert told == [
            wire.DeliveryFailure(wire.FailureReason.EXPIRED, (wire.Undelivered(asked.id, MAILBOX),))
        ]
        [notice] = (await store.fetch(SENDER, 0, 10, 1 << 20)).envelopes
        assert notice.created_at_ms == 6000
        # Told once: a later purge owes nothing more.
        again = await store.purge_expired(not_before_ms=2000, telling=Telling(7000, SALT))
        assert (again.expired, again.notices) == (0, 0)
        assert len(await notices_in(store, SENDER)) == 1
        # A notice expires like any envelope, and is never itself the subject of one.
        late = await store.purge_expired(not_before_ms=10_000, telling=Telling(11_000, SALT))
        # The first notice went without a notice of its own; ``fresh`` is told.
        assert (late.expired, late.notices) == (2, 1)
        assert await store.count(SENDER) == 1  # the notice of ``fresh``
        assert (await notices_in(store, SENDER))[0].envelopes == (
            wire.Undelivered(fresh.id, MAILBOX),
        )


@BACKENDS
async def test_what_a_full_mailbox_purges_to_make_room_is_told_at_the_next_purge(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest
) -> None:
    async with backend(kind, tmp_path, runtimes, request, max_per_mailbox=1) as store:
        old = envelope()
        await store.put([old], 1000, sender=SENDER)
        new = envelope()
        await store.put([new], 3000, not_before_ms=2000)  # ``old`` goes to make room
        assert await store.count(MAILBOX) == 1
        assert await store.count(SENDER) == 0
        purged = await store.purge_expired(not_before_ms=2000, telling=Telling(3100, SALT))
        assert (purged.expired, purged.notices) == (0, 1)
        assert [n.envelopes for n in await notices_in(store, SENDER)] == [
            (wire.Undelivered(old.id, MAILBOX),)
        ]


@BACKENDS
async def test_a_notice_its_senders_full_mailbox_cannot_take_is_counted_and_not_kept_owing(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest
) -> None:
    async with backend(kind, tmp_path, runtimes, request, max_per_mailbox=1) as store:
        await store.put([envelope(SENDER)], 5000)  # the sender's own mailbox is full
        await store.put([envelope()], 1000, sender=SENDER)
        purged = await store.purge_expired(not_before_ms=2000, telling=Telling(6000, SALT))
        assert (purged.expired, purged.notices, purged.untold) == (1, 0, 1)
        assert await store.count(SENDER) == 1
        # Nothing stays owed to grow the store: the next purge has nothing to tell.
        again = await store.purge_expired(not_before_ms=2000, telling=Telling(7000, SALT))
        assert (again.notices, again.untold) == (0, 0)


@BACKENDS
async def test_many_expired_envelopes_are_told_in_batches_and_notices_a_fetch_carries(
    kind: str,
    tmp_path: Path,
    runtimes: Runtimes,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay.store, "OWED_BATCH", 100)
    monkeypatch.setattr(relay.store_pg, "OWED_BATCH", 100)
    async with backend(kind, tmp_path, runtimes, request) as store:
        sent = [envelope(size=1) for _ in range(1030)]
        for start in range(0, len(sent), 128):
            await store.put(sent[start : start + 128], 1000, sender=SENDER)
        budget = 20_000  # a relay whose largest fetchable envelope is this
        telling = Telling(3000, SALT, entries_fitting(budget))
        purged = await store.purge_expired(not_before_ms=2000, telling=telling)
        assert purged.expired == len(sent) and purged.untold == 0
        batch = await store.fetch(SENDER, 0, 100, 1 << 20)
        assert all(len(wire.encode_envelope(e)) <= budget for e in batch.envelopes)
        told = [wire.decode_delivery_failure(e.payload) for e in batch.envelopes]
        assert purged.notices == len(told) > len(sent) // 100  # every batch of debts told
        assert [u.id for n in told for u in n.envelopes] == [e.id for e in sent]


@BACKENDS
async def test_an_envelope_holding_a_notices_id_first_costs_that_notice_not_the_purge(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest
) -> None:
    async with backend(kind, tmp_path, runtimes, request) as store:
        lost, other = envelope(), envelope(b"\x09" * 32)
        await store.put([lost], 1000, sender=SENDER)
        await store.put([other], 1000)
        # Whoever knew the purge's salt could only pre-empt a notice, never stop the purge:
        # the salt is fresh random bytes each purge; here it is fixed to find the id.
        telling = Telling(3000, SALT)
        [(notice, _)] = notices_for(SENDER, [(1, lost.id, MAILBOX)], telling)
        squatter = wire.Envelope(notice.id, SENDER, wire.EnvelopeKind.APPLICATION, b"mine", b"g", 1)
        await store.put([squatter], 5000)
        purged = await store.purge_expired(not_before_ms=2000, telling=telling)
        assert (purged.expired, purged.notices, purged.untold) == (2, 0, 1)
        assert await store.count(MAILBOX) == 0  # expiry went through
        assert [e.payload for e in (await store.fetch(SENDER, 0, 10, 1 << 20)).envelopes] == [
            b"mine"
        ]


async def test_the_relay_refuses_a_notice_it_did_not_make_and_keeps_no_sender_unasked(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    now = [1_000_000]
    alice, bob = Identity.generate(), Identity.generate()
    async with running_relay(
        tmp_path, runtimes.clocked(lambda: now[0]), envelope_ttl_s=TTL_MS / 1000
    ) as relay:
        async with client(relay, alice) as caller:
            forged = wire.Envelope(
                os.urandom(16),
                bob.mailbox,
                wire.EnvelopeKind.DELIVERY_FAILED,
                wire.encode_delivery_failure(wire.DeliveryFailure(wire.FailureReason.EXPIRED, ())),
                b"",
                1,
            )
            answer = await caller.call(wire.Deliver((forged,), failure_notice=True))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.UNAUTHORIZED
            asked, unasked = envelope(bob.mailbox), envelope(bob.mailbox)
            for env, ask in ((asked, True), (unasked, False)):
                answer = await caller.call(wire.Deliver((env,), failure_notice=ask))
                assert answer == wire.DeliverResult((env.id,))
        now[0] += TTL_MS + 1000
        purged = await relay.service.purge_expired()
        assert (purged.expired, purged.notices) == (2, 1)
        async with client(relay, alice) as owner:
            fetched = await owner.call(wire.Fetch(alice.mailbox, 0, 10))
            assert isinstance(fetched, wire.FetchResult)
            [notice] = fetched.envelopes
            failure = wire.decode_delivery_failure(notice.payload)
            assert failure.envelopes == (wire.Undelivered(asked.id, bob.mailbox),)
        assert relay.metrics()["refused_notice_kind"] == 1
        assert relay.metrics()["failure_notices"] == 1


def mailbox_files(data: Path) -> bytes:
    """Everything the embedded mailbox store holds on disk, its WAL included."""
    return b"".join(f.read_bytes() for f in data.glob("mailboxes.sqlite3*"))


async def test_a_relay_told_to_keep_no_senders_keeps_none_and_tells_nobody(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    now = [1_000_000]
    alice, bob = Identity.generate(), Identity.generate()
    async with running_relay(
        tmp_path,
        runtimes.clocked(lambda: now[0]),
        envelope_ttl_s=TTL_MS / 1000,
        failure_notices=False,
    ) as relay:
        async with client(relay, alice) as caller:
            env = envelope(bob.mailbox)
            answer = await caller.call(wire.Deliver((env,), failure_notice=True))
            assert answer == wire.DeliverResult((env.id,))
        stored = mailbox_files(tmp_path)
        assert env.id in stored  # the scan reads where the envelope is
        assert alice.mailbox not in stored
        now[0] += TTL_MS + 1000
        purged = await relay.service.purge_expired()
        assert (purged.expired, purged.notices, purged.untold) == (1, 0, 0)


async def held_for(relay: Relay, mailbox: bytes) -> int:
    return await relay.service.store.count(mailbox)


async def test_a_message_the_relay_drops_unfetched_shows_failed_and_a_forged_notice_does_not(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    now = [1_000_000]
    async with running_relay(
        tmp_path, runtimes.clocked(lambda: now[0]), envelope_ttl_s=TTL_MS / 1000
    ) as relay:
        assert relay._endpoint is not None
        info = RelayInfo(relay._endpoint.local_address, relay_key(relay))
        alice_node = Node(Identity.generate(), runtimes("qpc-alice"), name="alice", relay=info)
        bob_node = Node(Identity.generate(), runtimes("qpc-bob"), name="bob", relay=info)
        alice, bob = Messenger(alice_node), Messenger(bob_node)
        try:
            for app in (alice, bob):
                await app.open()
                await app.node.start(LOOPBACK, 0)
                await app.node.relay_synced.wait()
            await alice_node.remember_peer(bob_node.public_key, "bob", bob_node.address)
            await bob_node.remember_peer(alice_node.public_key, "alice", alice_node.address)
            bob_events = bob.subscribe()
            dm = await alice.direct(key(bob))
            await next_event(bob_events, lambda e: isinstance(e, Joined), "bob joins")
            bob_node.go_offline()  # and never comes back to collect his mailbox
            lost = await alice.send(dm.id, "bob never reads this")
            assert [d.state for d in lost.deliveries] == [DeliveryState.RELAY]
            [tracked] = await alice_node.run(lambda: alice_node.store.deliveries_of([lost.id]))

            # A notice from anyone but the relay, a contact's included, changes nothing.
            forged = wire.Envelope(
                os.urandom(16),
                alice_node.identity.mailbox,
                wire.EnvelopeKind.DELIVERY_FAILED,
                wire.encode_delivery_failure(
                    wire.DeliveryFailure(
                        wire.FailureReason.EXPIRED,
                        (wire.Undelivered(tracked.envelope_id, bob_node.identity.mailbox),),
                    )
                ),
                b"",
                now[0],
            )
            async with running_endpoint(bob_node.identity, None) as endpoint:
                conn = await endpoint.dial(alice_node.address, alice_node.public_key)
                answer = await conn.call(wire.Deliver((forged,)))
            assert answer == wire.DeliverResult(())  # refused for good: not kept
            assert alice_node.counters()["failure_notice_not_from_relay"] == 1
            [still] = (m for m in await alice.history(dm.id) if m.id == lost.id)
            assert [d.state for d in still.deliveries] == [DeliveryState.RELAY]

            alice_events = alice.subscribe()
            now[0] += TTL_MS + 1000  # on the relay's clock, bob's mailbox expires
            purged = await relay.service.purge_expired()
            assert purged.notices == 1
            changed = await next_event(
                alice_events, lambda e: isinstance(e, DeliveryChanged), "the relay's notice"
            )
            assert isinstance(changed, DeliveryChanged)
            assert (changed.message_id, changed.recipient) == (lost.id, key(bob))
            assert changed.state is DeliveryState.FAILED
            assert changed.reason == RELAY_EXPIRED_REASON
            [shown] = (m for m in await alice.history(dm.id) if m.id == lost.id)
            assert [(d.state, d.reason) for d in shown.deliveries] == [
                (DeliveryState.FAILED, RELAY_EXPIRED_REASON)
            ]
            # Taken, then acknowledged: the relay holds nothing more for alice.
            async with asyncio.timeout(DEADLINE):
                while await held_for(relay, alice_node.identity.mailbox):
                    await asyncio.sleep(0.02)
        finally:
            for app in (alice, bob):
                await app.close()
                await app.node.stop()
