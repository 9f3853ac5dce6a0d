"""Nodes over real loopback QUIC with a real relay process: direct first, relay when the peer
is gone, and the mailbox is collected when the node comes back."""

from __future__ import annotations

import asyncio

import pytest

from node.app.router import Path
from node.core import wire
from node.core.errors import LocalProtocolError, PeerUnreachableError
from node.transport.connection import Caller
from tests.conftest import RelayProcess
from tests.node_support import nodes, relay_info


async def test_a_group_forms_and_talks_directly_without_any_relay() -> None:
    async with nodes(None, "alice", "bob") as (alice, bob):
        group = await alice.create_group()
        report = await alice.invite(group, [bob.public_key])
        assert report.paths == {bob.public_key: Path.DIRECT}
        assert group in bob.groups
        await alice.send_text(group, "hello bob")
        reply = await bob.send_text(group, "hello alice")
        assert reply.paths == {alice.public_key: Path.DIRECT}
        assert [(m.sender_name, m.text, m.path) for m in bob.inbox] == [
            ("alice", "hello bob", Path.DIRECT)
        ]
        assert [(m.sender_name, m.text) for m in alice.inbox] == [("bob", "hello alice")]
        with pytest.raises(LocalProtocolError, match="at most 256 KiB"):
            await alice.send_text(group, "x" * (300 * 1024))
        assert len(bob.inbox) == 1


async def test_an_absent_peer_gets_its_messages_through_the_relay(
    relay_process: RelayProcess,
) -> None:
    async with nodes(relay_info(relay_process), "alice", "bob") as (alice, bob):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        host, port = bob.address
        bob.go_offline()
        report = await alice.send_text(group, "while you were out")
        assert report.paths == {bob.public_key: Path.RELAY}
        assert bob.inbox == []
        await bob.start(host, port)  # fetches the relay mailbox, in the background
        await asyncio.wait_for(bob.relay_synced.wait(), 15)
        assert [(m.text, m.path) for m in bob.inbox] == [("while you were out", Path.RELAY)]
        # The mailbox was acknowledged: a second sync brings nothing new.
        assert await bob.sync_relay() == 0
        # And bob, back, answers directly; alice's router forgets its backoff for him.
        back = await bob.send_text(group, "back now")
        assert back.paths == {alice.public_key: Path.DIRECT}
        again = await alice.send_text(group, "welcome back")
        assert again.paths == {bob.public_key: Path.DIRECT}


async def test_the_same_envelope_twice_reaches_the_user_once() -> None:
    async with nodes(None, "alice", "bob") as (alice, bob):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        await alice.send_text(group, "once")
        assert len(bob.inbox) == 1
        # Replay the delivery as a confused peer or a relay re-fetch would.
        envelope_id = bob.inbox[0].envelope_id
        kind, made = wire.EnvelopeKind.APPLICATION, alice.clock_ms()
        dup = wire.Envelope(envelope_id, bob.identity.mailbox, kind, b"ignored", group, made)
        accepted = await bob.handle(Caller(alice.public_key, alice.address), wire.Deliver((dup,)))
        assert accepted == wire.DeliverResult((envelope_id,))
        assert len(bob.inbox) == 1


async def test_without_relay_the_outbox_keeps_a_message_until_the_peer_is_back() -> None:
    async with nodes(None, "alice", "bob") as (alice, bob):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        host, port = bob.address
        bob.go_offline()
        report = await alice.send_text(group, "anyone?")
        assert "no relay is configured" in report.failed[bob.public_key]
        assert "kept for retry" in report.failed[bob.public_key]
        assert await alice.outbox.pending() == 1
        await bob.start(host, port)
        # Bob speaks first; reaching alice tells her he is back, and her outbox drains to him.
        await bob.send_text(group, "back online")
        messages = await bob.wait_for_messages(1, deadline=15)
        assert [m.text for m in messages] == ["anyone?"]
        # Alice removes it from her outbox once bob's acceptance reaches her.
        async with asyncio.timeout(10):
            while await alice.outbox.pending():
                await asyncio.sleep(0.02)


async def test_an_online_node_receives_relayed_messages_without_restarting(
    relay_process: RelayProcess,
) -> None:
    async with nodes(relay_info(relay_process), "alice", "bob") as (alice, bob):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        # Alice's idea of bob's address goes stale (say bob's NAT rebinding changed it).
        await alice.remember_peer(bob.public_key, "bob", ("127.0.0.1", 9))
        report = await alice.send_text(group, "via the relay, while you are online")
        assert report.paths == {bob.public_key: Path.RELAY}
        # Bob's standing long poll at the relay brings it in.
        messages = await bob.wait_for_messages(1, deadline=15)
        assert [(m.text, m.path) for m in messages] == [
            ("via the relay, while you are online", Path.RELAY)
        ]


async def test_a_peer_with_another_identity_at_the_address_falls_back_to_the_relay(
    relay_process: RelayProcess,
) -> None:
    async with nodes(relay_info(relay_process), "alice", "bob", "mallory") as (alice, bob, mallory):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        # Bob's old address now belongs to mallory.
        await alice.remember_peer(bob.public_key, "bob", mallory.address)
        report = await alice.send_text(group, "not for mallory")
        assert report.paths == {bob.public_key: Path.RELAY}
        messages = await bob.wait_for_messages(1, deadline=15)
        assert [m.text for m in messages] == ["not for mallory"]
        assert mallory.inbox == []


async def test_mail_for_an_absent_peer_waits_at_the_relay_that_peer_reads(
    relay_process: RelayProcess,
) -> None:
    # alice has no relay of her own; she knows (from bob's invite link or peer record) which
    # relay bob reads, and that is where his mail must wait.
    async with nodes(None, "alice") as (alice,), nodes(relay_info(relay_process), "bob") as (bob,):
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        host, port = bob.address
        bob.go_offline()
        with pytest.raises(PeerUnreachableError, match="no relay is configured"):
            await alice.router.send(
                bob.public_key,
                wire.Envelope(
                    b"\x01" * 16, b"\x02" * 32, wire.EnvelopeKind.APPLICATION, b"x", group, 0
                ),
            )
        alice.router.peer_relays[bob.public_key] = relay_info(relay_process)
        report = await alice.send_text(group, "kept at your relay")
        assert report.paths == {bob.public_key: Path.RELAY}
        await bob.start(host, port)
        await asyncio.wait_for(bob.relay_synced.wait(), 15)
        assert [(m.text, m.path) for m in bob.inbox] == [("kept at your relay", Path.RELAY)]
