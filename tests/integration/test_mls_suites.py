"""Ciphersuites between real nodes on loopback: every node offers KeyPackages of both suites
from a bounded pool; a new group uses X-Wing when every invitee offers it and 0x0001 otherwise,
and an existing group keeps its suite."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from node.app.limits import NodeLimits
from node.app.node import Node
from node.core import suites, wire
from node.core.errors import NodeError
from node.core.identity import Identity
from node.mls import MlsClient, key_package_info
from node.transport.connection import Caller
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, running_endpoint
from tests.mls_support import wall_clock_ms
from tests.node_support import wait_until

DEADLINE = 20.0
CLASSIC_ONLY = (suites.X25519_AES128GCM,)


@contextlib.asynccontextmanager
async def started(
    specs: Sequence[tuple[str, Mapping[str, Any]]], limits: NodeLimits | None = None
) -> AsyncIterator[list[Node]]:
    """Nodes that know each other, each with an MlsClient built from its keyword arguments."""
    runtimes = [RealRuntime(f"qpc-{name}") for name, _ in specs]
    made = []
    for (name, mls_args), runtime in zip(specs, runtimes, strict=True):
        identity = Identity.generate()
        mls = MlsClient(identity, runtime, **mls_args)
        made.append(Node(identity, runtime, name=name, mls=mls, limits=limits))
    try:
        for node in made:
            await node.start(LOOPBACK, 0)
        for node in made:
            for other in made:
                if other is not node:
                    await node.remember_peer(other.public_key, other.name, other.address)
        yield made
    finally:
        for node in made:
            await node.stop()
        for runtime in runtimes:
            runtime.close()


async def test_a_new_group_uses_x_wing_when_every_invitee_offers_it() -> None:
    async with started([("alice", {}), ("bob", {}), ("carol", {})]) as (alice, bob, carol):
        made = await alice.create_group_with([bob.public_key, carol.public_key])
        assert made.choice == suites.SuiteChoice(suites.XWING)
        assert not made.report.failed
        gid = made.group_id
        await wait_until(lambda: gid in bob.groups and gid in carol.groups, DEADLINE, "joined")
        assert {n.groups[gid].ciphersuite for n in (alice, bob, carol)} == {suites.XWING}
        await bob.send_text(gid, "post-quantum hello")
        for node in (alice, carol):
            [got] = await node.wait_for_messages(1, DEADLINE)
            assert got.text == "post-quantum hello"


async def test_a_peer_without_x_wing_gets_a_0x0001_group_and_messages_flow_both_ways() -> None:
    specs = [("alice", {}), ("bob", {"ciphersuites": CLASSIC_ONLY}), ("carol", {})]
    async with started(specs) as (alice, bob, carol):
        made = await alice.create_group_with([bob.public_key, carol.public_key])
        assert made.choice == suites.SuiteChoice(suites.X25519_AES128GCM, (bob.public_key,))
        names = {bob.public_key: "bob"}
        assert made.choice.describe(names) == "0x0001: bob offers no X-Wing"
        gid = made.group_id
        await wait_until(lambda: gid in bob.groups and gid in carol.groups, DEADLINE, "joined")
        assert {n.groups[gid].ciphersuite for n in (alice, bob, carol)} == {0x0001}
        await bob.send_text(gid, "from bob")
        await alice.send_text(gid, "from alice")
        assert [m.text for m in await bob.wait_for_messages(1, DEADLINE)] == ["from alice"]
        for node in (alice, carol):
            await node.wait_for_messages(2 if node is carol else 1, DEADLINE)
        assert "from bob" in [m.text for m in alice.inbox]
        assert sorted(m.text for m in carol.inbox) == ["from alice", "from bob"]


async def test_an_existing_group_refuses_a_peer_without_its_suite() -> None:
    specs = [("alice", {}), ("bob", {"ciphersuites": CLASSIC_ONLY}), ("carol", {})]
    async with started(specs) as (alice, bob, carol):
        made = await alice.create_group_with([carol.public_key])
        gid = made.group_id
        await wait_until(lambda: gid in carol.groups, DEADLINE, "carol joined")
        epoch = alice.groups[gid].epoch
        with pytest.raises(
            suites.NoCommonSuiteError, match=r"^bob offers no KeyPackage for X-Wing$"
        ):
            await alice.invite(gid, [bob.public_key])
        # Refused before anything changed, even with a good invitee beside him.
        with pytest.raises(suites.NoCommonSuiteError):
            await carol.invite(gid, [alice.public_key, bob.public_key])
        assert alice.groups[gid].epoch == epoch
        assert alice.groups[gid].members() == [alice.public_key, carol.public_key]
        assert gid not in bob.groups


async def test_an_answer_naming_someone_else_is_refused_and_no_group_is_made() -> None:
    mallory, eve = Identity.generate(), Identity.generate()
    runtime = RealRuntime("qpc-keys")
    try:
        own = MlsClient(mallory, runtime).serve_key_packages()
        eves = MlsClient(eve, runtime).serve_key_packages()

        async def serve(_caller: Caller, _request: wire.Request) -> wire.Response:
            return wire.FetchKeyPackageResult(own[0], (eves[1],))

        async with (
            running_endpoint(mallory, serve) as endpoint,
            started([("alice", {})]) as (alice,),
        ):
            await alice.remember_peer(mallory.public_key, "mallory", endpoint.local_address)
            with pytest.raises(NodeError, match=r"^mallory sent someone else's KeyPackage$"):
                await alice.create_group_with([mallory.public_key])
            assert alice.groups == {}
    finally:
        runtime.close()


async def test_two_thousand_fetches_keep_the_served_nodes_state_bounded(tmp_path: Path) -> None:
    state = tmp_path / "mls.state"
    bob_args = {"state_file": state, "state_key": os.urandom(32), "key_package_pool": 8}
    # A contact's KeyPackage requests are rate-limited too; this test is about the pool.
    generous = NodeLimits(key_package_rate_known=1e6, key_package_burst_known=1e6)
    async with started([("alice", {}), ("bob", bob_args)], generous) as (alice, bob):

        async def fetch() -> tuple[bytes, ...]:
            answer = await alice.router.call_peer(
                bob.public_key, wire.FetchKeyPackage(bob.public_key)
            )
            assert isinstance(answer, wire.FetchKeyPackageResult)
            return answer.key_packages

        early = [await fetch() for _ in range(9)]
        full_size = state.stat().st_size
        for _ in range(2000 // 25):
            answers = await asyncio.gather(*(fetch() for _ in range(25)))
            assert set(answers) == {early[8]}  # the last-resort KeyPackages, once the pool is full
        assert state.stat().st_size == full_size
        assert [bob.mls.unused_key_packages(s) for s in suites.OFFERED] == [8, 8]
        now = wall_clock_ms()
        assert [key_package_info(kp, now_ms=now)[1] for kp in early[0]] == list(suites.OFFERED)

        # Whoever invites bob now still gets him in (with a last-resort KeyPackage) ...
        made = await alice.create_group_with([bob.public_key])
        await wait_until(lambda: made.group_id in bob.groups, DEADLINE, "bob joined")
        # ... and a Welcome to one of the single-use KeyPackages served early joins too.
        group = MlsClient(Identity.generate(), alice.runtime).create_group(b"early", 0x0001)
        _commit, welcome = group.commit([early[0][1]])
        assert welcome is not None
        mls = bob.mls
        joined = await bob.run(lambda: mls.join(welcome))
        assert joined.members()[-1] == bob.public_key
        assert [bob.mls.unused_key_packages(s) for s in suites.OFFERED] == [8, 7]
