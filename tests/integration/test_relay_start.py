"""A node's relay at start: an unreachable relay does not delay start-up (it is used once it
answers); a relay that presents another identity key stops the node (a security event)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from node.app.node import Node, RelayIdentityError
from node.app.router import Path as DeliveryPath
from node.app.router import RelayInfo
from node.core.identity import Identity
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, RelayProcess
from tests.node_support import nodes, relay_info

START_DEADLINE = 2.0  # seconds; one handshake with a silent relay alone would take 5
DEADLINE = 30.0


async def test_an_unreachable_relay_does_not_delay_start_and_is_used_once_it_answers(
    tmp_path: Path,
) -> None:
    relay = RelayProcess(tmp_path / "relay", passphrase="relay passphrase")
    relay.start()
    try:
        info = relay_info(relay)
        async with nodes(info, "alice", "bob") as (alice, bob):
            group = await alice.create_group()
            await alice.invite(group, [bob.public_key])
            host, port = bob.address
            bob.go_offline()
            report = await alice.send_text(group, "kept at the relay")
            assert report.paths == {bob.public_key: DeliveryPath.RELAY}
            relay.stop()  # its mailbox store stays in its data directory
            started = time.monotonic()
            await bob.start(host, port)
            assert time.monotonic() - started < START_DEADLINE
            assert not bob.relay_synced.is_set() and bob.inbox == []
            # The same relay comes back on the same address: bob's retries find it.
            relay.start(info.address[1])
            messages = await bob.wait_for_messages(1, DEADLINE)
            assert [(m.text, m.path) for m in messages] == [
                ("kept at the relay", DeliveryPath.RELAY)
            ]
            await asyncio.wait_for(bob.relay_synced.wait(), DEADLINE)
    finally:
        relay.stop()


async def test_a_relay_with_another_identity_key_stops_the_node(
    relay_process: RelayProcess,
) -> None:
    assert relay_process.address is not None
    pinned = Identity.generate().public_key  # not the relay's key
    runtime = RealRuntime("qpc-pinned")
    node = Node(Identity.generate(), runtime, name="carol", relay=RelayInfo(
        relay_process.address, pinned
    ))  # fmt: skip
    try:
        started = time.monotonic()
        await node.start(LOOPBACK, 0)
        assert time.monotonic() - started < START_DEADLINE
        error = await asyncio.wait_for(node.wait_fatal(), DEADLINE)
        assert isinstance(error, RelayIdentityError)
        host, port = relay_process.address
        assert f"the relay at {host}:{port} did not present the identity key given" in str(error)
        assert not node.relay_synced.is_set()
    finally:
        await node.stop()
        runtime.close()
