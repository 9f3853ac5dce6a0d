"""The peer-record DHT over real UDP sockets on 127.0.0.1.

Covers: a network of real nodes resolving records; forged, replayed-older and expired records
refused at the store RPC and ignored at read; a stock (unvalidating) kademlia node trying to
poison a key, or replaying an older record to every node, far from the key too; only a node's
own record answered without a crawl; dead peers bounded by the RPC timeout and the caller's
deadline; hostile datagrams dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kademlia.network import Server as StockServer

from discovery.dht import DhtConfig, DhtNode, dht_key
from discovery.records import (
    SIGNATURE_CONTEXT,
    OwnRecord,
    Rejection,
    _decode_signed,
    _encode_signed,
)
from node.core.identity import Identity
from tests.discovery_support import ENVELOPE_KEY, NOW, Clock
from tests.runtime_support import ClockedRuntime

LOOPBACK = "127.0.0.1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Every error the event loop would only have logged ("Task exception was never retrieved"
    and friends); the test fails if there is any."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)
    assert errors == []


@contextlib.asynccontextmanager
async def network(
    size: int, clock: Clock, config: DhtConfig | None = None
) -> AsyncIterator[list[DhtNode]]:
    nodes = [DhtNode(ClockedRuntime(clock), config=config) for _ in range(size)]
    try:
        for node in nodes:
            await node.start(LOOPBACK, 0)
        for node in nodes[1:]:
            assert await node.bootstrap([nodes[0].address], deadline=5.0) == 1
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def own_record(identity: Identity, port: int = 4433, ttl_ms: int = 600_000) -> OwnRecord:
    return OwnRecord(identity, ENVELOPE_KEY, addresses=[(LOOPBACK, port)], ttl_ms=ttl_ms)


def forge(victim: Identity, port: int = 6666) -> bytes:
    """A record naming the victim, signed by someone else."""
    record_bytes, _ = _decode_signed(own_record(victim, port).sign(NOW))
    mallory = Identity.generate()
    return _encode_signed(record_bytes, mallory.private_key.sign(SIGNATURE_CONTEXT + record_bytes))


def non_holders(nodes: list[DhtNode]) -> list[DhtNode]:
    return [n for n in nodes if n.stats().stored_records == 0]


async def test_a_network_of_real_nodes_resolves_records(
    clock: Clock, loop_errors: list[dict[str, Any]]
) -> None:
    # k = 8 over 24 nodes: records live on a third of the nodes, so lookups really walk the DHT.
    # (At k = 4 about one lookup in 400 ends at four nodes that lack the record: with buckets
    # that small, routing tables differ enough that the publisher's k nearest are not the
    # asker's. Real deployments use k = 20; benchmarks/discovery_bench.py measures success.)
    config = DhtConfig(ksize=8, alpha=2)
    async with network(24, clock, config) as nodes:
        people = [Identity.generate() for _ in range(6)]
        for i, person in enumerate(people):
            stored = await nodes[i * 3].publish(own_record(person, 5000 + i).sign(clock.ms))
            assert 1 <= stored <= config.ksize
        walked = 0
        for i, person in enumerate(people):
            for asker in nodes[::5]:
                result = await asker.lookup_detailed(person.public_key, deadline=3.0)
                assert result.record is not None, f"{asker.address} did not find person {i}"
                assert result.record.record.dial_addresses == ((LOOPBACK, 5000 + i),)
                walked += result.hops > 0
        assert walked > 0
        assert await nodes[5].lookup(Identity.generate().public_key, deadline=3.0) is None


async def test_republish_replaces_the_record_everywhere(clock: Clock) -> None:
    async with network(12, clock, DhtConfig(ksize=6)) as nodes:
        alice = Identity.generate()
        own = own_record(alice, 4000)
        await nodes[0].republish(own)
        own.update(addresses=[(LOOPBACK, 4001)])
        clock.ms += 10
        assert await nodes[0].republish(own) >= 1
        for asker in nodes[1:]:
            found = await asker.lookup(alice.public_key, deadline=3.0)
            assert found is not None and found.dial_addresses == ((LOOPBACK, 4001),)


async def test_keep_published_publishes_when_due(clock: Clock) -> None:
    async with network(6, clock, DhtConfig(ksize=3)) as nodes:
        alice = Identity.generate()
        nodes[0].keep_published(own_record(alice), check_interval=0.05)
        async with asyncio.timeout(5):
            while await nodes[5].lookup(alice.public_key, deadline=1.0) is None:
                await asyncio.sleep(0.05)


async def test_store_rpc_refuses_bad_records(clock: Clock) -> None:
    async with network(3, clock) as nodes:
        target = nodes[1]
        alice = Identity.generate()
        key = dht_key(alice.public_key)
        own = own_record(alice, ttl_ms=60_000)
        old = own.sign(clock.ms)
        new = own.sign(clock.ms)
        # A plain kademlia node as the sender: it sends whatever it is told to.
        sender = StockServer()
        await sender.listen(0, interface=LOOPBACK)
        try:

            async def store(k: bytes, value: object) -> object:
                ok, answer = await sender.protocol.store(target.address, sender.node.id, k, value)
                assert ok, "the node must answer, even to refuse"
                return answer

            assert await store(key, new) is True
            assert await store(key, old) is False  # replayed older sequence
            assert await store(key, forge(alice)) is False
            assert await store(dht_key(Identity.generate().public_key), new) is False
            assert await store(key, b"garbage") is False
            assert await store(key, {"not": "bytes"}) is False
            clock.ms += 60_000
            assert await store(key, own.sign(clock.ms - 60_000)) is False  # already expired
        finally:
            sender.stop()
        refused = target.stats().refused_at_store
        assert refused[Rejection.STALE] == 1
        assert refused[Rejection.BAD_SIGNATURE] == 1
        assert refused[Rejection.WRONG_IDENTITY] == 1
        assert refused[Rejection.MALFORMED] == 2
        assert refused[Rejection.EXPIRED] == 1


@contextlib.asynccontextmanager
async def poisoner(key: bytes, values: object, bootstrap: tuple[str, int]) -> AsyncIterator[Any]:
    """A stock kademlia node as close to the target key as a node can be — its id differs in the
    last bit (kademlia never returns a node whose id *is* the key being looked up) — holding
    whatever the attacker likes under that key."""
    stock = StockServer(ksize=20, node_id=key[:-1] + bytes([key[-1] ^ 1]))
    await stock.listen(0, interface=LOOPBACK)
    try:
        await stock.bootstrap([bootstrap])
        stock.storage[key] = values
        # It also pushes the value at its neighbours; they must refuse it.
        assert await stock.set_digest(key, values) is not None
        yield stock
    finally:
        stock.stop()


async def test_a_stock_node_cannot_make_a_lookup_return_a_forgery(
    clock: Clock, loop_errors: list[dict[str, Any]]
) -> None:
    async with network(20, clock, DhtConfig(ksize=8)) as nodes:
        alice = Identity.generate()
        key = dht_key(alice.public_key)
        async with poisoner(key, forge(alice), nodes[0].address):
            askers = non_holders(nodes)
            for asker in askers[:5]:
                assert await asker.lookup(alice.public_key, deadline=3.0) is None
            assert sum(n.stats().rejected_at_read.get(Rejection.BAD_SIGNATURE, 0) for n in nodes)
            assert all(n.stats().stored_records == 0 for n in nodes)  # nobody kept the forgery
            # Once alice publishes, lookups find her real record despite the poisoner.
            await nodes[7].publish(own_record(alice, 4433).sign(clock.ms))
            for asker in non_holders(nodes)[:5]:
                found = await asker.lookup(alice.public_key, deadline=3.0)
                assert found is not None and found.dial_addresses == ((LOOPBACK, 4433),)


async def test_a_stock_node_cannot_make_a_lookup_return_garbage(clock: Clock) -> None:
    async with network(12, clock, DhtConfig(ksize=6)) as nodes:
        alice = Identity.generate()
        key = dht_key(alice.public_key)
        async with poisoner(key, b"\x00" * 500, nodes[0].address):
            assert await nodes[5].lookup(alice.public_key, deadline=3.0) is None
            await nodes[3].publish(own_record(alice).sign(clock.ms))
            found = await non_holders(nodes)[0].lookup(alice.public_key, deadline=3.0)
            assert found is not None


async def test_a_replayed_older_record_loses_to_the_newer_one(clock: Clock) -> None:
    async with network(16, clock, DhtConfig(ksize=6)) as nodes:
        alice = Identity.generate()
        own = own_record(alice, 1111)
        older = own.sign(clock.ms)
        own.update(addresses=[(LOOPBACK, 2222)])
        newer = own.sign(clock.ms + 1)
        await nodes[2].publish(newer)
        async with poisoner(dht_key(alice.public_key), older, nodes[0].address):
            for asker in non_holders(nodes)[:6]:
                found = await asker.lookup(alice.public_key, deadline=3.0)
                assert found is not None and found.dial_addresses == ((LOOPBACK, 2222),)


async def test_an_old_record_replayed_far_from_the_key_loses_to_the_newer_one(
    clock: Clock, loop_errors: list[dict[str, Any]]
) -> None:
    # k = 6 over 20 nodes: most nodes are far from the key. An attacker speaking only the stock
    # protocol replays alice's older (validly signed) record to every node, before and after
    # alice publishes a newer one; every lookup must still return the newer one.
    async with network(20, clock, DhtConfig(ksize=6)) as nodes:
        alice = Identity.generate()
        key = dht_key(alice.public_key)
        own = own_record(alice, 1111)
        older = own.sign(clock.ms)
        own.update(addresses=[(LOOPBACK, 2222)])
        attacker = StockServer()
        await attacker.listen(0, interface=LOOPBACK)
        try:
            await attacker.bootstrap([nodes[0].address])

            async def replay() -> None:
                answers = await asyncio.gather(
                    *(
                        attacker.protocol.store(n.address, attacker.node.id, key, older)
                        for n in nodes
                    )
                )
                assert all(ok for ok, _ in answers), "every node answers the store"

            await replay()
            assert all(n.stats().stored_records == 1 for n in nodes)
            # Nodes that know k nodes nearer the key keep it only as a short-lived cache (about
            # half of them here: the others' routing tables do not show them they are far).
            assert sum(n.stats().cached_records for n in nodes) >= 5
            clock.ms += 10
            assert await nodes[3].republish(own) >= 1
            await replay()
            newer = own.current
            assert newer is not None
            stale = []
            for asker in nodes:
                result = await asker.lookup_detailed(alice.public_key, deadline=3.0)
                assert result.record is not None, f"{asker.address} found nothing"
                if result.record.record.sequence != newer.record.sequence:
                    stale.append(asker.address)
                assert result.hops <= 5  # ⌈log2 20⌉
            assert stale == [], f"{len(stale)} of {len(nodes)} lookups returned the older record"
        finally:
            attacker.stop()


async def test_only_a_nodes_own_record_is_answered_without_asking(clock: Clock) -> None:
    async with network(8, clock, DhtConfig(ksize=3)) as nodes:
        alice, bob = Identity.generate(), Identity.generate()
        await nodes[0].republish(own_record(alice))  # nodes[0] is alice's node
        await nodes[0].publish(own_record(bob).sign(clock.ms))  # a copy of someone else's
        mine = await nodes[0].lookup_detailed(alice.public_key, deadline=3.0)
        assert mine.record is not None and (mine.hops, mine.queried) == (0, 0)
        theirs = await nodes[0].lookup_detailed(bob.public_key, deadline=3.0)
        assert theirs.record is not None and theirs.hops > 0 and theirs.queried > 0


async def test_expired_records_are_not_returned(clock: Clock) -> None:
    async with network(10, clock, DhtConfig(ksize=3)) as nodes:
        alice = Identity.generate()
        await nodes[1].publish(own_record(alice, ttl_ms=60_000).sign(clock.ms))
        asker = non_holders(nodes)[0]
        assert await asker.lookup(alice.public_key, deadline=3.0) is not None
        clock.ms += 60_000
        for node in nodes:
            assert await node.lookup(alice.public_key, deadline=3.0) is None
        assert all(node.stats().stored_records == 0 for node in nodes)


async def test_a_stock_node_serving_an_expired_record_changes_nothing(clock: Clock) -> None:
    # k = 20 over 10 nodes: everyone knows the poisoner, so every lookup asks it.
    async with network(10, clock) as nodes:
        bob = Identity.generate()
        stale = own_record(bob, ttl_ms=60_000).sign(clock.ms - 60_000)
        async with poisoner(dht_key(bob.public_key), stale, nodes[0].address):
            result = await nodes[4].lookup_detailed(bob.public_key, deadline=3.0)
            assert result.record is None and result.rejected == {Rejection.EXPIRED: 1}


@pytest.fixture
def silent_peer() -> Iterator[tuple[str, int]]:
    """A UDP port that swallows everything: a crashed host rather than a closed port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    try:
        yield sock.getsockname()
    finally:
        sock.close()


async def test_a_dead_bootstrap_peer_costs_one_rpc_timeout(
    clock: Clock, silent_peer: tuple[str, int]
) -> None:
    config = DhtConfig(rpc_timeout=0.5)
    async with network(3, clock, config) as nodes:
        joiner = DhtNode(ClockedRuntime(clock), config=config)
        await joiner.start(LOOPBACK, 0)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await joiner.bootstrap([silent_peer, nodes[0].address], deadline=10.0) == 1
            assert loop.time() - started < 0.5 + 0.4
            assert len(joiner.neighbors()) == 3
            # Only dead peers: the deadline holds even when it is shorter than the timeout.
            started = loop.time()
            assert await joiner.bootstrap([silent_peer], deadline=0.2) == 0
            assert loop.time() - started < 0.2 + 0.2
        finally:
            await joiner.stop()


async def test_dead_nodes_do_not_stall_a_lookup_past_its_deadline(clock: Clock) -> None:
    config = DhtConfig(ksize=4, rpc_timeout=1.0)
    async with network(16, clock, config) as nodes:
        alice = Identity.generate()
        await nodes[0].publish(own_record(alice).sign(clock.ms))
        holders = [n for n in nodes if n.stats().stored_records]
        for node in holders:
            await node.stop()  # every holder crashes: the lookup can only wander and time out
        asker = non_holders([n for n in nodes if n.running])[0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await asker.lookup_detailed(alice.public_key, deadline=1.5)
        assert result.record is None
        assert loop.time() - started < 1.5 + 0.3


async def test_hostile_datagrams_are_dropped(
    clock: Clock, loop_errors: list[dict[str, Any]]
) -> None:
    async with network(2, clock) as nodes:
        target = nodes[1]
        import umsgpack

        msg_id = b"m" * 20
        junk = [
            b"",
            b"\x00" * 10,
            b"\x00" + msg_id + b"\xc1\xc1",  # not msgpack
            b"\x00" + msg_id + umsgpack.packb("not a list"),
            b"\x00" + msg_id + umsgpack.packb(["store", [b"short id", b"k", b"v"]]),
            b"\x00" + msg_id + umsgpack.packb(["find_node", [1, 2]]),
            b"\x00" + msg_id + umsgpack.packb(["ping", []]),
            b"\x00" + msg_id + umsgpack.packb(["no_such_method", []]),
            b"\x01" + msg_id + umsgpack.packb("an unasked-for reply"),
        ]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for datagram in junk:
                sock.sendto(datagram, target.address)
        finally:
            sock.close()
        async with asyncio.timeout(5):
            while target.stats().malformed_datagrams < 5:
                await asyncio.sleep(0.01)
        # Still alive and answering.
        alice = Identity.generate()
        assert await nodes[0].publish(own_record(alice).sign(clock.ms)) == 1


async def test_publishing_with_nobody_to_store_on_is_zero_not_an_error(clock: Clock) -> None:
    # Stock kademlia raises ValueError (max() of nothing) when every neighbour is gone.
    async with network(2, clock, DhtConfig(rpc_timeout=0.2)) as nodes:
        alice = Identity.generate()
        await nodes[1].stop()
        assert await nodes[0].publish(own_record(alice).sign(clock.ms), deadline=3.0) == 0
        # The record is still served by the node itself.
        assert await nodes[0].lookup(alice.public_key, deadline=1.0) is not None
    lonely = DhtNode(ClockedRuntime(clock))
    await lonely.start(LOOPBACK, 0)
    try:
        bob = Identity.generate()
        assert await lonely.publish(own_record(bob).sign(clock.ms)) == 0
        assert await lonely.lookup(Identity.generate().public_key, deadline=1.0) is None
        with pytest.raises(ValueError, match="expired"):
            await lonely.publish(own_record(bob).sign(clock.ms - 700_000))
    finally:
        await lonely.stop()


async def test_refresh_re_replicates_held_records(clock: Clock) -> None:
    async with network(8, clock, DhtConfig(ksize=3)) as nodes:
        alice = Identity.generate()
        await nodes[0].publish(own_record(alice).sign(clock.ms))
        holders = [n for n in nodes[1:] if n.stats().stored_records]
        # When the publisher is among the 3 nearest, the 4th nearest it stored on keeps a cache.
        holder = next(n for n in holders if n.stats().cached_records == 0)
        assert await holder.refresh(older_than=3600) == 0  # nothing held that long yet
        assert await holder.refresh(older_than=0) == 1
        for cache in (n for n in holders if n.stats().cached_records):
            assert await cache.refresh(older_than=0) == 0  # a cache copy is not re-replicated
        assert all(n.stats().malformed_datagrams == 0 for n in nodes)
