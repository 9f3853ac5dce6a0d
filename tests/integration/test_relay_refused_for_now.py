"""Envelopes a node refuses only for now (a bound is full) stay at the relay and are
collected later: the node's relay cursor moves past them, but they are fetched again from the
start of the mailbox once the node had time to make room."""

from __future__ import annotations

import contextlib
from pathlib import Path

from node.app.limits import NodeLimits
from node.app.node import Node
from node.core.identity import Identity
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, RelayProcess
from tests.node_support import relay_info

MESSAGES = 5
DEADLINE = 30.0


async def test_messages_refused_while_a_share_was_full_arrive_later(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", passphrase="relay passphrase")
    relay.start()
    runtimes = [RealRuntime("qpc-alice"), RealRuntime("qpc-bob")]
    info = relay_info(relay)
    # bob keeps at most two envelopes of one share waiting: the Welcome and one message.
    tight = NodeLimits(max_deferred_per_sender=2, relay_rescan_delay_s=0.5)
    alice = Node(Identity.generate(), runtimes[0], name="alice", relay=info)
    bob = Node(Identity.generate(), runtimes[1], name="bob", relay=info, limits=tight)
    try:
        await alice.start(LOOPBACK, 0)
        await alice.relay_synced.wait()
        # They know each other's key, never an address: everything goes by the relay.
        await alice.remember_peer(bob.public_key, "bob", None)
        await bob.remember_peer(alice.public_key, "alice", None)
        group = await alice.create_group()
        key_package = await bob.run(bob.mls.key_package)
        assert not (await alice.membership.add(group, [key_package])).failed
        for n in range(MESSAGES):
            await alice.send_text(group, f"message {n}")
        # bob comes online: one fetch brings the Welcome and every message, before he is in
        # the group; all of them wait in one share, which takes two.
        await bob.start(LOOPBACK, 0)
        with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
            await bob.wait_for_messages(MESSAGES, DEADLINE)
        assert [m.text for m in bob.inbox] == [f"message {n}" for n in range(MESSAGES)]
        assert bob.counters()["deferred_share_full"] > 0  # the bound did refuse some
    finally:
        await alice.stop()
        await bob.stop()
        for runtime in runtimes:
            runtime.close()
        relay.stop()
