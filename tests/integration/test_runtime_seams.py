"""What the one-Runtime design promises the simulator: wire order that never depends on a
set's order, and MLS (which writes and fsyncs its state file) never on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any

import pytest

from node.app.outbox import Outbox
from node.app.router import Path
from node.app.store import NodeStore
from node.core import wire
from node.core.identity import mailbox_of
from node.mls import MlsClient, MlsGroup
from tests.node_support import nodes, wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


class RecordingRouter:
    """Accepts everything directly and remembers the order it was asked to send in."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.relay = None

    async def send(self, recipient: bytes, envelope: wire.Envelope) -> Path:
        self.sent.append(recipient)
        return Path.DIRECT


async def test_the_outbox_offers_recipients_in_the_order_they_were_queued(
    runtimes: Runtimes,
) -> None:
    runtime = runtimes()
    store = NodeStore(FilePath(":memory:"), bytes(32))
    router = RecordingRouter()
    outbox = Outbox(store, runtime.run_blocking, router)  # type: ignore[arg-type]
    # Enough recipients that a set's order (by hash) would almost surely differ.
    recipients = [bytes([i]) * 32 for i in range(40, 0, -1)]
    items = [
        (
            r,
            wire.Envelope(
                bytes([n]) * 16, mailbox_of(r), wire.EnvelopeKind.APPLICATION, b"m", b"g", 0
            ),
        )
        for n, r in enumerate(recipients)
    ]
    report = await outbox.send(items)
    assert set(report.paths) == set(recipients)
    assert router.sent == recipients
    await runtime.run_blocking(store.close)


MUTATING = {
    MlsClient: [
        "key_package",
        "serve_key_packages",
        "last_resort_key_package",
        "create_group",
        "join",
        "load_group",
    ],
    MlsGroup: [
        "commit",
        "self_update",
        "propose_add",
        "propose_remove",
        "propose_update",
        "encrypt",
        "process",
    ],
}


async def test_mls_calls_never_run_on_the_event_loop_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.get_ident() == loop_thread))
            return method(*args, **kwargs)

        return call

    for cls, names in MUTATING.items():
        for name in names:
            monkeypatch.setattr(cls, name, watched(name, getattr(cls, name)))

    async with nodes(None, "alice", "bob", "carol") as (alice, bob, carol):
        group = await alice.create_group()
        await alice.invite(group, [bob.public_key])
        await wait_until(lambda: group in bob.groups, DEADLINE, "bob joined")
        await bob.invite(group, [carol.public_key])  # a member's proposal, then a commit
        await wait_until(lambda: group in carol.groups, DEADLINE, "carol joined")
        await bob.update_keys(group)
        await alice.send_text(group, "hello")
        await asyncio.wait_for(carol.wait_for_messages(1, DEADLINE), DEADLINE)
    seen = {name for name, _ in calls}
    assert seen >= {"create_group", "commit", "join", "serve_key_packages", "encrypt", "process"}
    assert seen >= {"propose_add", "propose_update"}
    on_loop = sorted({name for name, on in calls if on})
    assert on_loop == []
