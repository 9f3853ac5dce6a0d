"""The committer protocol between real nodes over loopback QUIC (DESIGN §6, ADR 0003).

Alice creates each group and is its committer; bob and carol are members who propose.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from node.app.node import Node
from node.app.router import Path
from node.core import wire
from node.core.errors import LocalProtocolError, ProposalRejectedError
from node.core.identity import Identity, mailbox_of
from node.mls import ContentType, MlsClient, read_header
from tests.conftest import LOOPBACK, RelayProcess
from tests.node_support import nodes, relay_info, wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


def epochs(group_id: bytes, *members: Node) -> set[int]:
    return {m.groups[group_id].epoch for m in members if group_id in m.groups}


def members_of(group_id: bytes, node: Node) -> set[bytes]:
    return set(node.groups[group_id].members())


async def all_talk(group_id: bytes, *members: Node) -> None:
    """Every member says something; every other member shows it, within the deadline."""
    before = {m.name: len(m.inbox) for m in members}
    for m in members:
        report = await m.send_text(group_id, f"hello from {m.name}")
        assert report.failed == {}, report.failed
    for m in members:
        messages = await m.wait_for_messages(before[m.name] + len(members) - 1, DEADLINE)
        heard = {msg.text for msg in messages[before[m.name] :]}
        assert heard == {f"hello from {o.name}" for o in members if o is not m}


async def test_a_member_invites_through_the_committer() -> None:
    async with nodes(None, "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        assert not bob.membership.is_committer(group)

        report = await bob.invite(group, [carol.public_key])

        # Bob's part ends when the proposal is handed over: it went to alice alone.
        assert report.paths == {alice.public_key: Path.DIRECT}
        await wait_until(
            lambda: group in carol.groups and epochs(group, alice, bob, carol) == {2},
            DEADLINE,
            "alice committed bob's proposal and carol joined",
        )
        everyone = {alice.public_key, bob.public_key, carol.public_key}
        assert members_of(group, alice) == members_of(group, bob) == members_of(group, carol)
        assert members_of(group, carol) == everyone
        assert {n.groups[group].pending_proposals for n in (alice, bob, carol)} == {0}
        assert carol.groups[group].committer == alice.public_key
        await all_talk(group, alice, bob, carol)
        assert alice.rejections == []


async def test_a_members_key_update_is_committed_and_messages_still_flow() -> None:
    async with nodes(None, "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key, carol.public_key])
        await wait_until(lambda: group in carol.groups, DEADLINE, "carol joined")

        report = await bob.update_keys(group)

        # An Update is committed by reference, so every member gets the proposal.
        assert set(report.paths) == {alice.public_key, carol.public_key}
        await wait_until(
            lambda: epochs(group, alice, bob, carol) == {2},
            DEADLINE,
            "alice committed bob's update and everyone moved to epoch 2",
        )
        assert {n.groups[group].pending_proposals for n in (alice, bob, carol)} == {0}
        await all_talk(group, alice, bob, carol)

        # The committer refreshes its own keys with a commit of its own.
        await alice.update_keys(group)
        await wait_until(lambda: epochs(group, alice, bob, carol) == {3}, DEADLINE, "epoch 3")
        await all_talk(group, alice, bob, carol)


@contextlib.asynccontextmanager
async def bob_cannot_reach_carol() -> AsyncIterator[tuple[Node, Node, Node]]:
    """Alice knows both; bob and carol know only alice, and there is no relay."""
    runtimes = Runtimes()
    alice, bob, carol = (
        Node(Identity.generate(), runtimes(n), name=n) for n in ("alice", "bob", "carol")
    )
    try:
        for node in (alice, bob, carol):
            await node.start(LOOPBACK, 0)
        for a, b in ((alice, bob), (alice, carol)):
            await a.remember_peer(b.public_key, b.name, b.address)
            await b.remember_peer(a.public_key, a.name, a.address)
        yield alice, bob, carol
    finally:
        for node in (alice, bob, carol):
            await node.stop()
        runtimes.close()


async def test_a_commit_that_overtakes_its_update_proposal_waits_for_it() -> None:
    async with bob_cannot_reach_carol() as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key, carol.public_key])
        await wait_until(lambda: group in carol.groups, DEADLINE, "carol joined")

        report = await bob.update_keys(group)
        assert carol.public_key in report.failed  # kept in bob's outbox
        await wait_until(lambda: alice.groups[group].epoch == 2, DEADLINE, "alice committed")
        await wait_until(lambda: bob.groups[group].epoch == 2, DEADLINE, "bob has the commit")
        # Alice's commit and a message of the new epoch reached carol first: she keeps both.
        await alice.send_text(group, "first words of epoch 2")
        assert carol.groups[group].epoch == 1
        assert carol.inbox == []

        # Bob learns where carol is (as when she calls him); his outbox delivers the proposal.
        await bob.remember_peer(carol.public_key, "carol", carol.address)
        bob.router.peer_alive(carol.public_key)
        flushed = await bob.outbox.flush()
        assert flushed.paths == {carol.public_key: Path.DIRECT}
        assert carol.groups[group].epoch == 2
        assert [m.text for m in carol.inbox] == ["first words of epoch 2"]
        await bob.send_text(group, "fresh keys")
        messages = await carol.wait_for_messages(2, DEADLINE)
        assert messages[-1].text == "fresh keys"


async def test_an_absent_committer_delays_the_invite_until_it_is_back(
    relay_process: RelayProcess,
) -> None:
    async with nodes(relay_info(relay_process), "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        host, port = alice.address
        alice.go_offline()

        report = await bob.invite(group, [carol.public_key])

        # The proposal waits at the relay; nobody else can commit it.
        assert report.paths == {alice.public_key: Path.RELAY}
        assert await bob.outbox.pending() == 0
        assert group not in carol.groups
        assert bob.groups[group].epoch == 1
        assert bob.groups[group].pending_proposals == 1
        # Messages do not wait for the committer.
        await bob.send_text(group, "alice, are you there?")

        await alice.start(host, port)  # collects the relay mailbox, then commits

        await wait_until(
            lambda: group in carol.groups and epochs(group, alice, bob, carol) == {2},
            DEADLINE,
            "alice, back, committed the invite and carol joined",
        )
        assert "alice, are you there?" in [m.text for m in alice.inbox]
        await all_talk(group, alice, bob, carol)


async def test_a_proposal_overtaken_by_another_commit_is_proposed_again(
    relay_process: RelayProcess,
) -> None:
    async with nodes(relay_info(relay_process), "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        host, port = alice.address
        alice.go_offline()
        await bob.invite(group, [carol.public_key])  # a proposal for epoch 1, at the relay
        await alice.update_keys(group)  # meanwhile alice commits something else: epoch 2
        assert alice.groups[group].epoch == 2

        # Back, alice refuses bob's proposal as stale; bob, on getting epoch 2, proposes again.
        await alice.start(host, port)
        await wait_until(
            lambda: group in carol.groups and epochs(group, alice, bob, carol) == {3},
            DEADLINE,
            "bob proposed carol again and alice committed it",
        )
        assert any("stale" in str(r.error) for r in alice.rejections)
        await all_talk(group, alice, bob, carol)


async def test_forged_and_garbage_proposals_are_refused_and_the_group_carries_on() -> None:
    async with nodes(None, "alice", "bob", "carol", "eve") as (alice, bob, carol, eve):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])

        def to_alice(payload: bytes, group_id: bytes = group) -> tuple[bytes, wire.Envelope]:
            return eve._envelope(alice.public_key, wire.EnvelopeKind.PROPOSAL, payload, group_id)

        # A well-formed MLS proposal from a non-member: eve's own group under the same id.
        outsider = MlsClient(Identity.generate(), eve.runtime).create_group(group)
        forged = outsider.propose_update()
        header = read_header(forged)
        assert header is not None and header.content_type is ContentType.PROPOSAL
        # Bob's application message passed off as a proposal.
        disguised = bob.groups[group].encrypt(b"not a proposal")
        bad = [to_alice(b"\x00\x01garbage"), to_alice(forged), to_alice(disguised)]
        report = await eve.outbox.send(bad)
        assert report.paths == {alice.public_key: Path.DIRECT}  # accepted, then refused

        assert [r.envelope_id for r in alice.rejections] == [env.id for _, env in bad]
        assert all(type(r.error) is ProposalRejectedError for r in alice.rejections)
        assert alice.groups[group].epoch == 1
        assert alice.groups[group].pending_proposals == 0
        assert alice.inbox == []  # the disguised message was not shown

        # A proposal for a group alice does not hold is kept (a Welcome may be on its way).
        await eve.outbox.send([to_alice(forged, group_id=b"no such group")])
        assert len(alice.rejections) == 3

        # The group is as good as before: bob's invite goes through alice.
        await bob.invite(group, [carol.public_key])
        await wait_until(
            lambda: group in carol.groups and epochs(group, alice, bob, carol) == {2},
            DEADLINE,
            "carol joined after the forgeries",
        )
        await all_talk(group, alice, bob, carol)


async def test_a_member_proposes_a_removal_and_the_committer_commits_it() -> None:
    async with nodes(None, "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key, carol.public_key])
        await wait_until(lambda: group in carol.groups, DEADLINE, "carol joined")

        report = await bob.remove(group, [carol.public_key])

        assert report.paths == {alice.public_key: Path.DIRECT}
        await wait_until(
            lambda: not carol.groups[group].is_active and epochs(group, alice, bob) == {2},
            DEADLINE,
            "alice committed the removal and carol learned it",
        )
        assert members_of(group, alice) == members_of(group, bob)
        assert members_of(group, bob) == {alice.public_key, bob.public_key}
        with pytest.raises(LocalProtocolError, match="no longer a member"):
            await carol.update_keys(group)
        await all_talk(group, alice, bob)


async def test_membership_calls_need_a_group_the_node_is_in() -> None:
    async with nodes(None, "alice", "bob") as (alice, bob):
        with pytest.raises(LocalProtocolError, match="no such group"):
            await alice.invite(b"unknown group id", [bob.public_key])
        with pytest.raises(LocalProtocolError, match="no such group"):
            await alice.update_keys(b"unknown group id")
        assert mailbox_of(alice.public_key) == alice.identity.mailbox
