"""The application layer over real nodes on loopback: conversations, own messages, delivery
state, names and events, as a front end sees them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from node.app.conversations import ConversationKind
from node.app.events import (
    ConversationChanged,
    DeliveryChanged,
    Event,
    InvitationReceived,
    Joined,
    MembersChanged,
    MessageAdded,
    PeerKeyChanged,
    Subscription,
)
from node.app.limits import DAY_MS
from node.app.messages import DeliveryState, Direction
from node.app.messenger import ConversationError, Messenger
from node.app.node import Node
from node.core.identity import Identity
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, RelayProcess
from tests.node_support import nodes, relay_info, wait_until
from tests.runtime_support import ClockedRuntime

DEADLINE = 15.0


@contextlib.asynccontextmanager
async def messengers(relay: RelayProcess | None, *names: str) -> AsyncIterator[list[Messenger]]:
    async with nodes(relay_info(relay) if relay else None, *names) as started:
        apps = [Messenger(node) for node in started]
        for app in apps:
            await app.open()
        try:
            yield apps
        finally:
            for app in apps:
                await app.close()


async def next_event(sub: Subscription, match: Callable[[Event], bool], what: str) -> Event:
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                event = await sub.get()
                assert event is not None, f"subscription closed while waiting for {what}"
                if match(event):
                    return event
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def key(app: Messenger) -> bytes:
    return app.node.public_key


async def test_a_dm_both_ways_with_joined_notice_and_delivery_state() -> None:
    async with messengers(None, "alice", "bob") as (alice, bob):
        bob_events, alice_events = bob.subscribe(), alice.subscribe()
        dm = await alice.direct(key(bob))
        assert dm.kind is ConversationKind.DIRECT and alice.title(dm) == "bob"

        joined = await next_event(bob_events, lambda e: isinstance(e, Joined), "bob joins")
        assert isinstance(joined, Joined)
        assert joined.inviter == key(alice) and joined.inviter_name == "alice"
        assert joined.conversation.kind is ConversationKind.DIRECT
        assert bob.title(joined.conversation) == "alice"

        sent = await alice.send(dm.id, "hello bob")
        assert sent.direction is Direction.OUT and sent.sender_name == "you"
        assert [(d.recipient, d.state) for d in sent.deliveries] == [
            (key(bob), DeliveryState.DIRECT)
        ]
        got = await next_event(
            bob_events, lambda e: isinstance(e, MessageAdded), "bob gets the message"
        )
        assert isinstance(got, MessageAdded)
        assert got.message.text == "hello bob" and got.message.sender_name == "alice"
        assert got.message.direction is Direction.IN and got.message.path == "direct"

        # Bob answers in the same conversation, found by its peer's name.
        back = bob.find("alice")
        assert back.id == joined.conversation.id
        await bob.send(back.id, "hi alice")
        reply = await next_event(
            alice_events,
            lambda e: isinstance(e, MessageAdded) and e.message.direction is Direction.IN,
            "alice gets the reply",
        )
        assert isinstance(reply, MessageAdded) and reply.message.text == "hi alice"

        # Both sides keep both lines, their own included, in order.
        texts = [(m.sender_name, m.text) for m in await alice.history(dm.id)]
        assert texts == [("you", "hello bob"), ("bob", "hi alice")]
        assert [m.text for m in await bob.history(back.id)] == ["hello bob", "hi alice"]

        # The same DM again is the same conversation, not a second group.
        assert (await alice.direct(key(bob))).id == dm.id
        assert len(alice.node.groups) == 1


async def test_a_named_group_of_three_reaches_the_invitees_by_name() -> None:
    async with messengers(None, "alice", "bob", "carol") as (alice, bob, carol):
        carol_events = carol.subscribe()
        group = await alice.create_group("book club", [key(bob), key(carol)])
        assert sorted(alice.members(group.id)) == sorted([key(alice), key(bob), key(carol)])

        def named(e: Event) -> bool:
            return isinstance(e, ConversationChanged) and e.conversation.name == "book club"

        await next_event(carol_events, named, "carol learns the group's name")
        conv = carol.find("book club")
        assert conv.kind is ConversationKind.GROUP
        await wait_until(lambda: len(carol.members(conv.id)) == 3, DEADLINE, "carol sees 3")

        await carol.send(conv.id, "I finished chapter one")
        for reader in (alice, bob):
            rconv = reader.find("book club")
            await wait_until_history(reader, rconv.id, "I finished chapter one")

        # The same name and the same people: the same group, not a second one.
        again = await alice.create_group("book club", [key(bob), key(carol)])
        assert again.id == group.id
        assert len(alice.node.groups) == 1


async def wait_until_history(app: Messenger, conv_id: str, text: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while text not in [m.text for m in await app.history(conv_id)]:
            await asyncio.sleep(0.02)


async def test_membership_changes_are_events() -> None:
    async with messengers(None, "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group("team", [key(bob)])
        events = alice.subscribe()
        await alice.invite(group.id, [key(carol)])
        added = await next_event(events, lambda e: isinstance(e, MembersChanged), "carol added")
        assert isinstance(added, MembersChanged) and added.added == (key(carol),)
        await alice.remove(group.id, key(bob))
        removed = await next_event(events, lambda e: isinstance(e, MembersChanged), "bob out")
        assert isinstance(removed, MembersChanged) and removed.removed == (key(bob),)
        with pytest.raises(ConversationError, match="not a member"):
            await alice.remove(group.id, key(bob))


async def test_the_notepad_keeps_lines_and_sends_nothing() -> None:
    async with messengers(None, "alice", "bob") as (alice, _bob):
        pad = alice.notepad()
        assert alice.conversations()[0].id == pad.id
        await alice.send(pad.id, "buy milk")
        assert [m.text for m in await alice.history(pad.id)] == ["buy milk"]
        assert await alice.node.outbox.pending() == 0
        assert alice.node.groups == {}
        with pytest.raises(ConversationError):
            await alice.leave(pad.id)


async def test_history_is_read_in_pages_and_unread_counts_follow_reading() -> None:
    async with messengers(None, "alice", "bob") as (alice, bob):
        dm = await alice.direct(key(bob))
        for n in range(7):
            await alice.send(dm.id, f"line {n}")
        await wait_until(
            lambda: len([c for c in bob.conversations() if c.group_id == dm.group_id]) == 1,
            DEADLINE,
            "bob has the conversation",
        )
        conv = bob.find("alice")
        await wait_until_history(bob, conv.id, "line 6")
        [with_counts] = [c for c in await bob.with_unread() if c.id == conv.id]
        assert with_counts.unread == 7

        newest = await bob.history(conv.id, limit=3)
        assert [m.text for m in newest] == ["line 4", "line 5", "line 6"]
        older = await bob.history(conv.id, limit=3, before_row=newest[0].row)
        assert [m.text for m in older] == ["line 1", "line 2", "line 3"]

        await bob.mark_read(conv.id)
        [after] = [c for c in await bob.with_unread() if c.id == conv.id]
        assert after.unread == 0


async def test_a_message_to_an_offline_peer_waits_at_the_relay(
    relay_process: RelayProcess,
) -> None:
    async with messengers(relay_process, "alice", "bob") as (alice, bob):
        dm = await alice.direct(key(bob))
        await wait_until(lambda: bool(bob.conversations()[1:]), DEADLINE, "bob joined")
        bob.node.go_offline()
        sent = await alice.send(dm.id, "while you were out")
        [delivery] = sent.deliveries
        assert delivery.state is DeliveryState.RELAY
        # Back online, bob collects it from his mailbox, as from alice.
        await bob.node.start()
        await wait_until_history(bob, bob.find("alice").id, "while you were out")
        [message] = [m for m in await bob.history(bob.find("alice").id)]
        assert (message.sender, message.path) == (key(alice), "relay")


async def test_without_a_relay_an_unreachable_peer_stays_queued_with_the_reason() -> None:
    async with messengers(None, "alice", "bob") as (alice, bob):
        dm = await alice.direct(key(bob))
        await wait_until(lambda: bool(bob.conversations()[1:]), DEADLINE, "bob joined")
        bob.node.go_offline()
        sent = await alice.send(dm.id, "anyone there?")
        [delivery] = sent.deliveries
        assert delivery.state is DeliveryState.QUEUED and delivery.reason
        [stored] = [m for m in await alice.history(dm.id) if m.id == sent.id]
        assert stored.deliveries[0].state is DeliveryState.QUEUED


async def test_a_message_not_delivered_within_the_window_is_failed_with_the_reason() -> None:
    days_ahead = [0]
    alice_runtime = ClockedRuntime(
        lambda: time.time_ns() // 1_000_000 + days_ahead[0] * DAY_MS, "qpc-alice"
    )
    bob_runtime = RealRuntime("qpc-bob")
    alice_node = Node(Identity.generate(), alice_runtime, name="alice")
    bob_node = Node(Identity.generate(), bob_runtime, name="bob")
    alice, bob = Messenger(alice_node), Messenger(bob_node)
    try:
        for app in (alice, bob):
            await app.open()
            await app.node.start(LOOPBACK, 0)
        await alice_node.remember_peer(bob_node.public_key, "bob", bob_node.address)
        await bob_node.remember_peer(alice_node.public_key, "alice", alice_node.address)
        dm = await alice.direct(key(bob))
        await wait_until(lambda: bool(bob.conversations()[1:]), DEADLINE, "bob joined")
        bob_node.go_offline()
        sent = await alice.send(dm.id, "lost in time")
        assert [d.state for d in sent.deliveries] == [DeliveryState.QUEUED]

        events = alice.subscribe()
        days_ahead[0] = 15  # past the 14-day window: bob would refuse it now
        await alice_node.outbox.flush()
        changed = await next_event(
            events, lambda e: isinstance(e, DeliveryChanged), "the delivery is given up"
        )
        assert isinstance(changed, DeliveryChanged)
        assert (changed.message_id, changed.recipient) == (sent.id, key(bob))
        assert changed.state is DeliveryState.FAILED and "14 days" in changed.reason
        [stored] = [m for m in await alice.history(dm.id) if m.id == sent.id]
        assert [(d.state, d.reason) for d in stored.deliveries] == [
            (DeliveryState.FAILED, changed.reason)
        ]
        assert await alice_node.outbox.pending() == 0
    finally:
        for app in (alice, bob):
            await app.close()
            await app.node.stop()
        alice_runtime.close()
        bob_runtime.close()


async def test_names_petnames_and_a_key_that_claims_a_known_name() -> None:
    async with messengers(None, "alice", "bob") as (alice, bob):
        events = alice.subscribe()
        impostor = Identity.generate().public_key
        await alice.add_contact(impostor, "bob")
        changed = await next_event(
            events, lambda e: isinstance(e, PeerKeyChanged), "the impostor is reported"
        )
        assert isinstance(changed, PeerKeyChanged)
        assert changed.known_key == key(bob) and changed.new_key == impostor
        # Both are shown, and never under the same name.
        names = {alice.contacts.name(key(bob)), alice.contacts.name(impostor)}
        assert len(names) == 2 and all(n.startswith("bob") for n in names)

        await alice.contacts.set_petname(key(bob), "Bobby")
        assert alice.contacts.name(key(bob)) == "Bobby"
        assert alice.contacts.name(impostor) == "bob"
        assert alice.contacts.find("bobby") == [key(bob)]
        await alice.contacts.mark_verified(key(bob))
        assert alice.contacts.view(key(bob)).verified


async def test_a_strangers_dm_waits_for_consent_and_shows_after_acceptance() -> None:
    runtimes = [RealRuntime("qpc-alice"), RealRuntime("qpc-bob")]
    alice_node = Node(Identity.generate(), runtimes[0], name="alice")
    bob_node = Node(Identity.generate(), runtimes[1], name="bob")
    alice, bob = Messenger(alice_node), Messenger(bob_node)
    try:
        for app in (alice, bob):
            await app.open()
            await app.node.start(LOOPBACK, 0)
        # Bob knows alice; to alice, bob is a stranger.
        await bob.add_contact(key(alice), "alice", alice_node.address)
        events = alice.subscribe()
        dm = await bob.direct(key(alice))
        await bob.send(dm.id, "it's bob")
        asked = await next_event(
            events, lambda e: isinstance(e, InvitationReceived), "alice is asked"
        )
        assert isinstance(asked, InvitationReceived) and asked.invitation.inviter == key(bob)
        assert [c.kind for c in alice.conversations()] == [ConversationKind.NOTEPAD]
        assert alice_node.groups == {}

        [pending] = alice.invitations()
        conv = await alice.accept_invitation(pending.id)
        assert conv.kind is ConversationKind.DIRECT and conv.peer == key(bob)
        await wait_until_history(alice, conv.id, "it's bob")
        assert alice.invitations() == []
        assert alice_node.is_contact(key(bob))
    finally:
        for app in (alice, bob):
            await app.close()
            await app.node.stop()
        for runtime in runtimes:
            runtime.close()
