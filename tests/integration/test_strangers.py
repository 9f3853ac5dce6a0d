"""Consent and limits for strangers (DESIGN §11): real nodes on loopback with real data
directories; strangers are real QUIC endpoints with keys of their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from node.app.invitations import Invitation
from node.app.limits import NodeLimits
from node.app.node import Node
from node.app.profile import open_node
from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.core.keyfile import FAST_KDF
from node.mls import MlsClient
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint
from tests.conftest import LOOPBACK, running_endpoint
from tests.node_support import wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


async def started(
    root: Path, name: str, runtimes: Runtimes, limits: NodeLimits | None = None, port: int = 0
) -> Node:
    node, _ = await open_node(root / name, name.encode(), runtimes(name), name=name, kdf=FAST_KDF)
    if limits is not None:
        # The limits a profile would pass; set before the node serves anyone.
        node = Node(
            node.identity,
            node.runtime,
            name=name,
            store=node.store,
            mls=node.mls,
            limits=limits,
        )
    await node.start(LOOPBACK, port)
    return node


@contextlib.asynccontextmanager
async def two(
    root: Path, runtimes: Runtimes, limits: NodeLimits | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    alice = await started(root, "alice", runtimes)
    bob = await started(root, "bob", runtimes, limits)
    try:
        yield alice, bob
    finally:
        await alice.stop()
        await bob.stop()


async def in_a_group(alice: Node, bob: Node) -> bytes:
    """alice and bob know each other, and bob joined alice's new group: its id."""
    await alice.remember_peer(bob.public_key, "bob", bob.address)
    await bob.remember_peer(alice.public_key, "alice", alice.address)
    group = await alice.create_group()
    await alice.invite(group, [bob.public_key])
    await wait_until(lambda: group in bob.groups, DEADLINE, "bob joined")
    return group


async def call(endpoint: Endpoint, node: Node, request: wire.Request) -> wire.Response:
    conn = await endpoint.dial(node.address, node.public_key, 5.0)
    return await conn.call(request, 5.0)


def forged(node: Node, kind: wire.EnvelopeKind, group_id: bytes, payload: bytes) -> wire.Envelope:
    return wire.Envelope(
        id=node.runtime.random_bytes(wire.ENVELOPE_ID_SIZE),
        recipient=node.identity.mailbox,
        kind=kind,
        payload=payload,
        group_id=group_id,
        created_at_ms=node.clock_ms(),
    )


def seen_rows(node: Node) -> int:
    return node.store.seen_count()


async def stranger_invites(alice: Node, bob: Node) -> tuple[bytes, list[Invitation]]:
    """alice knows bob; bob never chose alice. She invites him and writes at once."""
    told: list[Invitation] = []
    bob.on_invitation = told.append
    await alice.remember_peer(bob.public_key, "bob", bob.address)
    group = await alice.create_group()
    await alice.invite(group, [bob.public_key])
    await wait_until(lambda: bool(told), DEADLINE, "bob was told of the invitation")
    await alice.send_text(group, "before bob said yes")
    return group, told


async def test_a_strangers_welcome_waits_for_consent_and_accepting_shows_the_group(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with two(tmp_path, runtimes) as (alice, bob):
        group, told = await stranger_invites(alice, bob)
        [invitation] = bob.invitations()
        assert told == [invitation]
        assert (invitation.inviter, invitation.group_id) == (alice.public_key, group)
        assert invitation.members == (alice.public_key, bob.public_key)
        # Nothing of the group is shown, and bob is no member of it.
        assert bob.groups == {}
        assert bob.inbox == []
        assert not bob.is_contact(alice.public_key)
        assert len(await bob.run(bob.store.pending_incoming)) == 1  # alice's message waits

        # The request survives a restart, encrypted in node.db.
        host, port = bob.address
        await bob.stop()
        bob = await started(tmp_path, "bob", runtimes, port=port)
        try:
            await after_restart(alice, bob, group, invitation, (host, port))
        finally:
            await bob.stop()


async def after_restart(
    alice: Node, bob: Node, group: bytes, invitation: Invitation, address: tuple[str, int]
) -> None:
    assert bob.address == address
    assert bob.invitations() == [invitation]

    assert await bob.accept_invitation(invitation.id) == group
    messages = await bob.wait_for_messages(1, DEADLINE)
    assert [(m.sender, m.text) for m in messages] == [(alice.public_key, "before bob said yes")]
    assert bob.invitations() == []
    assert bob.contacts.is_chosen(alice.public_key)
    await alice.send_text(group, "welcome in")
    messages = await bob.wait_for_messages(2, DEADLINE)
    assert messages[-1].text == "welcome in"
    await bob.send_text(group, "glad to be here")
    assert [m.text for m in await alice.wait_for_messages(1, DEADLINE)] == ["glad to be here"]


async def test_refusing_an_invitation_drops_it_and_what_waited_with_it(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with two(tmp_path, runtimes) as (alice, bob):
        group, _ = await stranger_invites(alice, bob)
        [invitation] = bob.invitations()
        await bob.refuse_invitation(invitation.id)
        assert bob.invitations() == []
        assert await bob.run(bob.store.pending_incoming) == []
        assert await bob.run(bob.store.invitations) == []
        assert bob.groups == {}
        assert bob.counters()["invitation_refused"] == 1
        # alice is a stranger again: her next message is refused, not stored or shown.
        report = await alice.send_text(group, "are you there?")
        assert bob.public_key in report.failed
        assert bob.inbox == []
        assert bob.counters()["deliver_stranger_not_welcome"] == 1


async def test_a_stranger_flood_stays_within_bounds_while_a_contact_is_served(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with two(tmp_path, runtimes) as (alice, bob):
        group = await in_a_group(alice, bob)
        state = tmp_path / "bob" / "mls.state"
        state_before, seen_before = state.stat().st_size, seen_rows(bob)

        answers: list[wire.Response] = []
        began = bob.runtime.monotonic()
        async with running_endpoint(Identity.generate(), None) as mallory:
            for i in range(120):
                answers.append(await call(mallory, bob, wire.FetchKeyPackage(bob.public_key)))
                junk = [
                    forged(bob, wire.EnvelopeKind.APPLICATION, bytes([i % 256]) * 16, b"x" * 64)
                    for _ in range(16)
                ]
                answers.append(await call(mallory, bob, wire.Deliver(tuple(junk))))
                welcome = forged(bob, wire.EnvelopeKind.WELCOME, b"", b"not a welcome")
                answers.append(await call(mallory, bob, wire.Deliver((welcome,))))
                if i % 40 == 0:
                    await alice.send_text(group, f"still here {i}")
        # Many identities at once share one allowance for strangers.
        for _ in range(30):
            async with running_endpoint(Identity.generate(), None) as sybil:
                answers.append(await call(sybil, bob, wire.FetchKeyPackage(bob.public_key)))

        elapsed = bob.runtime.monotonic() - began
        key_packages = [a for a in answers if isinstance(a, wire.FetchKeyPackageResult)]
        errors = [a.code for a in answers if isinstance(a, wire.ErrorResult)]
        limits = bob.limits
        most = limits.key_package_burst_strangers + limits.key_package_rate_strangers * elapsed
        assert 3 <= len(key_packages) <= most
        assert errors.count(ErrorCode.UNAUTHORIZED) == 120  # no application data from strangers
        assert errors.count(ErrorCode.RATE_LIMITED) >= 2 * 117 - 10
        # Bounded state: a handful of KeyPackages (5,400 unbounded calls once made 27.8 MB),
        # a few ids, nothing waiting, no invitation, and no stranger saved as a contact.
        assert state.stat().st_size - state_before < most * 12_000
        assert seen_rows(bob) - seen_before <= 3 + 3  # alice's messages and mallory's welcomes
        assert await bob.run(bob.store.pending_incoming) == []
        assert bob.invitations() == []
        assert len(await bob.run(bob.store.contacts)) == 1
        counters = bob.counters()
        assert counters["deliver_stranger_not_welcome"] == 120
        assert counters["key_package_rate_limited"] >= 120 - 3
        assert counters["welcome_unusable"] <= 3
        # The contact was served all along.
        messages = await bob.wait_for_messages(3, DEADLINE)
        assert [m.text for m in messages] == ["still here 0", "still here 40", "still here 80"]


async def test_a_members_deferred_envelope_survives_a_flood_into_the_deferred_inbox(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    limits = replace(NodeLimits(), max_deferred=8, max_deferred_per_sender=4)
    async with two(tmp_path, runtimes, limits) as (alice, bob):
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        # alice's message of a new group overtakes its Welcome: bob keeps it for later.
        room = await alice.create_group()
        key_package = await bob.run(bob.mls.key_package)
        _, welcome_bytes = await alice.run(lambda: alice.groups[room].commit([key_package]))
        assert welcome_bytes is not None
        text = await alice.run(lambda: alice.groups[room].encrypt(b"kept for you"))
        as_alice = Caller(alice.public_key, alice.address)
        early = forged(bob, wire.EnvelopeKind.APPLICATION, room, text)
        assert await bob.handle(as_alice, wire.Deliver((early,))) == wire.DeliverResult((early.id,))

        # mallory invites bob (so her envelopes are taken, to wait for his answer) and floods.
        mallory_identity = Identity.generate()
        mallory_mls = MlsClient(mallory_identity, bob.runtime)
        async with running_endpoint(mallory_identity, None) as mallory:
            offered = await call(mallory, bob, wire.FetchKeyPackage(bob.public_key))
            assert isinstance(offered, wire.FetchKeyPackageResult)
            theirs = mallory_mls.create_group(b"mallory's room")
            _, invite = theirs.commit([offered.key_package])
            assert invite is not None
            sent = forged(bob, wire.EnvelopeKind.WELCOME, b"", invite)
            assert await call(mallory, bob, wire.Deliver((sent,))) == wire.DeliverResult((sent.id,))
            assert [i.inviter for i in bob.invitations()] == [mallory_identity.public_key]
            accepted = 0
            for i in range(40):
                junk = forged(bob, wire.EnvelopeKind.APPLICATION, bytes([i]) * 16, b"junk")
                answer = await call(mallory, bob, wire.Deliver((junk,)))
                assert isinstance(answer, wire.DeliverResult)
                accepted += len(answer.accepted)
        assert accepted == 4  # her share of the deferred inbox; the rest was never stored
        assert bob.counters()["deferred_share_full"] == 36
        pending = await bob.run(bob.store.pending_incoming)
        assert len(pending) <= limits.max_deferred
        assert early.id in {env.id for _, env, _ in pending}

        # The Welcome comes at last: alice's message is applied and shown.
        welcome = forged(bob, wire.EnvelopeKind.WELCOME, b"", welcome_bytes)
        assert await bob.handle(as_alice, wire.Deliver((welcome,))) == wire.DeliverResult(
            (welcome.id,)
        )
        messages = await bob.wait_for_messages(1, DEADLINE)
        assert [(m.sender, m.text) for m in messages] == [(alice.public_key, "kept for you")]


async def test_with_other_groups_envelopes_waiting_a_groups_own_order_still_holds(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with two(tmp_path, runtimes) as (alice, bob):
        room = await in_a_group(alice, bob)
        as_alice = Caller(alice.public_key, alice.address)

        async def deliver(env: wire.Envelope) -> None:
            assert await bob.handle(as_alice, wire.Deliver((env,))) == wire.DeliverResult((env.id,))

        # Envelopes of groups bob never joins wait in his inbox (made up, or not yet begun).
        others = [
            forged(bob, wire.EnvelopeKind.APPLICATION, bytes([i]) * 16, b"of another group")
            for i in range(5)
        ]
        for env in others:
            await deliver(env)
        # A message of the next epoch overtakes the commit that begins it.
        commit = await alice.run(alice.groups[room].self_update)
        first = await alice.run(lambda: alice.groups[room].encrypt(b"after the commit"))
        await deliver(forged(bob, wire.EnvelopeKind.APPLICATION, room, first))
        assert bob.inbox == []
        await deliver(forged(bob, wire.EnvelopeKind.COMMIT, room, commit))
        second = await alice.run(lambda: alice.groups[room].encrypt(b"and the next"))
        await deliver(forged(bob, wire.EnvelopeKind.APPLICATION, room, second))

        messages = await bob.wait_for_messages(2, DEADLINE)
        assert [m.text for m in messages] == ["after the commit", "and the next"]
        waiting = await bob.run(bob.store.pending_incoming)
        assert sorted(env.id for _, env, _ in waiting) == sorted(env.id for env in others)
