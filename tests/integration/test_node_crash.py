"""A node that dies between applying an envelope to MLS and recording it in its own store.

``mls.state`` and ``node.db`` are two files written one after the other. The MLS state keeps
each envelope's outcome under the envelope's id, atomically with the envelope's effect, so the
restarted node applies the still-pending envelope again and gets the same outcome instead of
MLS refusing the replay (which would lose the message).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.app.node import Node
from node.app.profile import open_node
from node.core.keyfile import FAST_KDF
from node.core.wire import EnvelopeKind
from tests.conftest import LOOPBACK
from tests.node_support import wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


async def open_started(root: Path, name: str, runtimes: Runtimes, port: int = 0) -> Node:
    """Open ``name``'s data directory as a new process would: with a runtime of its own."""
    node, _ = await open_node(root / name, name.encode(), runtimes(name), name=name, kdf=FAST_KDF)
    await node.start(LOOPBACK, port)
    return node


async def pair_in_group(root: Path, runtimes: Runtimes) -> tuple[Node, Node, bytes]:
    """alice (creator and committer) and bob, each with a data directory, in one group."""
    alice = await open_started(root, "alice", runtimes)
    bob = await open_started(root, "bob", runtimes)
    try:
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        group_id = await alice.create_group()
        await alice.invite(group_id, [bob.public_key])
        await wait_until(lambda: group_id in bob.groups, DEADLINE, "bob joined")
    except BaseException:
        await alice.stop()
        await bob.stop()
        raise
    return alice, bob, group_id


@pytest.mark.parametrize("kind", [EnvelopeKind.APPLICATION, EnvelopeKind.COMMIT])
async def test_an_envelope_applied_just_before_a_crash_counts_after_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: EnvelopeKind, runtimes: Runtimes
) -> None:
    alice, bob, group_id = await pair_in_group(tmp_path, runtimes)
    try:
        crashed: list[EnvelopeKind] = []
        real_complete = bob.store.complete_incoming

        def die_after_mls(seq: int, message: object) -> None:
            # MLS has applied the envelope (its state file is written); the node dies before
            # its own store records that. Later calls (after the restart) go through.
            if not crashed:
                pending = [env.kind for _, env, _ in real_pending()]
                crashed.append(pending[0])
                raise RuntimeError("killed between mls.state and node.db")
            real_complete(seq, message)  # type: ignore[arg-type]

        real_pending = bob.store.pending_incoming
        monkeypatch.setattr(bob.store, "complete_incoming", die_after_mls)
        if kind is EnvelopeKind.APPLICATION:
            await alice.send_text(group_id, "sent just before bob's crash")
        else:
            await alice.update_keys(group_id)
        await wait_until(lambda: bool(crashed), DEADLINE, "bob applied the envelope and died")
        assert crashed == [kind]
        epoch_before = bob.groups[group_id].epoch
        host, port = bob.address
        bob.kill()

        bob = await open_started(tmp_path, "bob", runtimes, port)
        assert bob.address == (host, port)
        # bob's store kept nothing of it (the envelope was stored, applied and replaced in one
        # transaction that never committed), so bob never said "accepted" and alice still
        # holds it. The group goes on: bob's next message reads at alice, who then knows bob
        # is back and sends hers again.
        await bob.send_text(group_id, "back after the restart")
        messages = await alice.wait_for_messages(1, DEADLINE)
        assert [m.text for m in messages] == ["back after the restart"]
        if kind is EnvelopeKind.APPLICATION:
            # MLS would refuse the replay; its record of the outcome shows the message once.
            messages = await bob.wait_for_messages(1, DEADLINE)
            assert [(m.sender, m.text) for m in messages] == [
                (alice.public_key, "sent just before bob's crash")
            ]
        else:
            # The commit took effect in MLS before the crash and is not applied twice.
            await wait_until(lambda: not alice.store.outbox(), DEADLINE, "alice's outbox empty")
            assert not bob.store.pending_incoming()
            assert bob.groups[group_id].epoch == alice.groups[group_id].epoch == epoch_before
        assert len([m for m in bob.store.messages() if m.direction == "in"]) == (
            1 if kind is EnvelopeKind.APPLICATION else 0
        )
    finally:
        await alice.stop()
        await bob.stop()


async def test_a_commit_made_just_before_a_crash_reaches_the_members_after_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtimes: Runtimes
) -> None:
    alice, bob, group_id = await pair_in_group(tmp_path, runtimes)
    try:

        def die_before_queueing(items: object, commit: object = None) -> None:
            raise RuntimeError("killed between mls.state and node.db")

        # alice commits (a key update); the MLS state has the new epoch, the outbox never
        # learns of the commit.
        monkeypatch.setattr(alice.store, "outbox_put", die_before_queueing)
        with pytest.raises(RuntimeError, match="killed"):
            await alice.update_keys(group_id)
        assert alice.groups[group_id].epoch == bob.groups[group_id].epoch + 1
        host, port = alice.address
        alice.kill()

        alice = await open_started(tmp_path, "alice", runtimes, port)
        assert alice.address == (host, port)
        await wait_until(
            lambda: bob.groups[group_id].epoch == alice.groups[group_id].epoch,
            DEADLINE,
            "bob reached alice's epoch",
        )
        await alice.send_text(group_id, "in the new epoch")
        messages = await bob.wait_for_messages(1, DEADLINE)
        assert [m.text for m in messages] == ["in the new epoch"]
    finally:
        await alice.stop()
        await bob.stop()
