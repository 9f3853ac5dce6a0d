"""A node back from an absence collects its relay mailbox before it takes group messages
directly (found by the kill-at-random test).

MLS keeps only a window of past message keys per sender (OUT_OF_ORDER_TOLERANCE = 32 in the
binding): once a message from a sender is decrypted, that sender's messages more than 32
generations older cannot be decrypted any more. A peer that queued messages at the relay while
this node was away and then reaches it directly would have its newer message applied first,
and the backlog at the relay dropped as "too old to decrypt", unless this node refuses the
direct delivery (the sender puts it at the relay, behind the backlog) until it caught up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from node.app.router import Path as DeliveryPath
from tests.conftest import RelayProcess
from tests.node_support import nodes, relay_info

BACKLOG = 40  # more than the binding's out-of-order tolerance (32)
DEADLINE = 30.0


async def test_a_backlog_at_the_relay_is_not_overtaken_by_a_direct_message(
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
            for n in range(BACKLOG):
                report = await alice.send_text(group, f"queued {n}")
                assert report.paths == {bob.public_key: DeliveryPath.RELAY}
            # Bob comes back while his relay cannot be reached: he cannot collect the backlog.
            relay.stop()  # its mailbox store stays in its data directory
            await bob.start(host, port)
            assert not bob.relay_synced.is_set()
            # Bob reaches alice directly, so alice tries him directly again.
            await bob.send_text(group, "back")
            await alice.wait_for_messages(1, DEADLINE)
            await alice.send_text(group, "after the backlog")
            relay.start(info.address[1])
            await alice.outbox.flush()
            want = [f"queued {n}" for n in range(BACKLOG)] + ["after the backlog"]
            with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
                await bob.wait_for_messages(len(want), DEADLINE)
            assert [m.text for m in bob.inbox] == want
    finally:
        relay.stop()
