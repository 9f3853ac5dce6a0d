"""Shared pieces of the node tests: running nodes that know each other, and waiting on state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from node.app.node import Node
from node.app.router import RelayInfo
from node.core.identity import Identity
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, RelayProcess


@contextlib.asynccontextmanager
async def nodes(relay: RelayInfo | None, *names: str) -> AsyncIterator[list[Node]]:
    """Started nodes on loopback, each knowing every other one's name and address, each on a
    real runtime of its own."""
    runtimes = [RealRuntime(f"qpc-{name}") for name in names]
    started = [
        Node(Identity.generate(), runtime, name=name, relay=relay)
        for name, runtime in zip(names, runtimes, strict=True)
    ]
    try:
        for node in started:
            await node.start(LOOPBACK, 0)
        if relay is not None:
            # Until a node has collected its relay mailbox it takes nothing directly (what it
            # is sent goes by the relay, in order): started means caught up.
            async with asyncio.timeout(30):
                for node in started:
                    await node.relay_synced.wait()
        for node in started:
            for other in started:
                if other is not node:
                    await node.remember_peer(other.public_key, other.name, other.address)
        yield started
    finally:
        for node in started:
            await node.stop()
        for runtime in runtimes:
            runtime.close()


def relay_info(relay: RelayProcess) -> RelayInfo:
    assert relay.address is not None and relay.identity is not None
    return RelayInfo(relay.address, relay.identity)


async def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll a node's state until ``condition`` holds; fail after ``deadline`` seconds.

    Group state changes inside the nodes' own tasks, with nothing to await from outside: a
    short poll under a deadline waits for the condition, never for luck."""
    try:
        async with asyncio.timeout(deadline):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None
