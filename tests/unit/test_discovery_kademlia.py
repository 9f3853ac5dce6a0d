"""The kademlia subclasses without sockets: storage rules, the store-storm fix, the crawl.

The DHT over real loopback sockets is tests/integration/test_discovery_dht.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kademlia.node import Node
from kademlia.routing import RoutingTable as StockRoutingTable

from discovery.kademlia_ext import (
    DHT_KEY_CONTEXT,
    RecordCrawl,
    RecordProtocol,
    RecordStorage,
    RoutingTable,
    _sanitise_nodes,
    dht_key,
)
from discovery.records import (
    SIGNATURE_CONTEXT,
    OwnRecord,
    Rejection,
    _decode_signed,
    _encode_signed,
)
from node.core.identity import Identity
from tests.discovery_support import ENVELOPE_KEY, NOW, Clock


def signed_by(identity: Identity, at: int = NOW, port: int = 4433, ttl_ms: int = 600_000) -> bytes:
    return OwnRecord(identity, ENVELOPE_KEY, addresses=[("127.0.0.1", port)], ttl_ms=ttl_ms).sign(
        at
    )


def forge(victim: Identity, port: int = 6666) -> bytes:
    record_bytes, _ = _decode_signed(signed_by(victim, port=port))
    mallory = Identity.generate()
    return _encode_signed(record_bytes, mallory.private_key.sign(SIGNATURE_CONTEXT + record_bytes))


def test_dht_key_is_truncated_sha256_with_a_context() -> None:
    import hashlib

    key = bytes(range(32))
    assert dht_key(key) == hashlib.sha256(DHT_KEY_CONTEXT + key).digest()[:20]
    assert len(dht_key(key)) == 20


# --- storage --------------------------------------------------------------------------------


def test_storage_accepts_only_valid_newest_records_under_their_own_key() -> None:
    clock = Clock()
    storage = RecordStorage(clock, lambda: 0.0)
    alice = Identity.generate()
    key = dht_key(alice.public_key)
    old, new = signed_by(alice, NOW), signed_by(alice, NOW + 1)
    assert storage.offer(key, new) is None
    assert storage.offer(key, old) is Rejection.STALE
    assert storage.offer(key, forge(alice)) is Rejection.BAD_SIGNATURE
    assert storage.offer(dht_key(b"someone else" + bytes(20)), new) is Rejection.WRONG_IDENTITY
    assert storage.offer(key, b"garbage") is Rejection.MALFORMED
    assert storage.offer(key, 42) is Rejection.MALFORMED
    assert storage.get(key) == new
    assert list(storage) == [(key, new)]
    with pytest.raises(ValueError, match="stale"):
        storage[key] = old
    assert dict(storage.dropped) == {
        Rejection.STALE: 2,
        Rejection.BAD_SIGNATURE: 1,
        Rejection.WRONG_IDENTITY: 1,
        Rejection.MALFORMED: 2,
    }


def test_storage_forgets_expired_records_by_the_injected_clock() -> None:
    clock = Clock()
    storage = RecordStorage(clock, lambda: 0.0)
    alice = Identity.generate()
    key = dht_key(alice.public_key)
    storage[key] = signed_by(alice, ttl_ms=60_000)
    assert storage[key]
    clock.ms += 60_000
    assert storage.get(key) is None
    with pytest.raises(KeyError):
        storage[key]
    assert len(storage) == 0
    assert storage  # an empty store is still a store (kademlia writes `storage or default`)
    # An expired record arriving late is refused outright.
    assert storage.offer(key, signed_by(alice, ttl_ms=60_000)) is Rejection.EXPIRED


def test_storage_republish_age_uses_loop_time() -> None:
    now = [100.0]
    storage = RecordStorage(Clock(), lambda: now[0])
    alice = Identity.generate()
    storage[dht_key(alice.public_key)] = signed_by(alice)
    assert storage.iter_older_than(3600) == []
    now[0] += 3600
    assert [k for k, _ in storage.iter_older_than(3600)] == [dht_key(alice.public_key)]


def test_a_cache_copy_is_short_lived_and_never_handed_on() -> None:
    now = [100.0]
    storage = RecordStorage(Clock(), lambda: now[0])
    alice, bob = Identity.generate(), Identity.generate()
    far, home = dht_key(alice.public_key), dht_key(bob.public_key)
    assert storage.offer(far, signed_by(alice), cache_for=60) is None
    assert storage.offer(home, signed_by(bob)) is None
    assert storage.is_cached(far) and not storage.is_cached(home)
    assert len(storage) == 2
    assert [k for k, _ in storage.home_items()] == [home]
    now[0] += 3600
    assert [k for k, _ in storage.iter_older_than(0)] == [home]  # caches are not re-replicated
    assert storage.get(far) is None  # and are gone after cache_for seconds
    # A newer record offered as a cache replaces a home copy; offered again as home, it is one.
    newer = signed_by(bob, NOW + 1)
    assert storage.offer(home, newer, cache_for=60) is None
    assert storage.is_cached(home) and storage.get(home) == newer
    assert storage.offer(home, newer) is None
    assert not storage.is_cached(home)
    # An older record loses to the held one either way.
    assert storage.offer(home, signed_by(bob, NOW), cache_for=60) is Rejection.STALE


def test_a_full_store_drops_a_cache_copy_first() -> None:
    storage = RecordStorage(Clock(), lambda: 0.0, capacity=2)
    people = [Identity.generate() for _ in range(3)]
    keys = [dht_key(p.public_key) for p in people]
    # The home copy expires soonest: the book alone would evict it.
    assert storage.offer(keys[0], signed_by(people[0], ttl_ms=120_000)) is None
    assert storage.offer(keys[1], signed_by(people[1]), cache_for=60) is None
    assert storage.offer(keys[2], signed_by(people[2])) is None
    assert storage.get(keys[0]) is not None and storage.get(keys[2]) is not None
    assert storage.get(keys[1]) is None


def test_a_node_keeps_records_far_from_it_as_cache_copies() -> None:
    # k = 2: a node that knows two nodes nearer a key than itself is not where it belongs.
    me = Node(_id(0x00))
    storage = RecordStorage(Clock(), lambda: 0.0)
    protocol = RecordProtocol(
        me,
        storage,
        2,
        rpc_timeout=1.0,
        now=lambda: 0.0,
        random_bytes=bytes,
        spawn=asyncio.ensure_future,
        ip_version=4,
    )
    for first in (0x80, 0x90):
        protocol.router.add_contact(Node(_id(first), "127.0.0.1", 7000 + first))
    assert protocol.far_from(_id(0x81)) and protocol.far_from(_id(0xFF))
    assert not protocol.far_from(_id(0x01))  # nearer to us than to either contact
    people = [Identity.generate() for _ in range(60)]
    far = next(p for p in people if protocol.far_from(dht_key(p.public_key)))
    near = next(p for p in people if not protocol.far_from(dht_key(p.public_key)))
    assert protocol.keep_record(dht_key(far.public_key), signed_by(far)) is None
    assert protocol.keep_record(dht_key(near.public_key), signed_by(near)) is None
    assert storage.is_cached(dht_key(far.public_key))
    assert not storage.is_cached(dht_key(near.public_key))


# --- routing: the store storm ---------------------------------------------------------------


class PingRecorder:
    def __init__(self) -> None:
        self.pings = 0

    async def call_ping(self, node: Node) -> None:
        self.pings += 1


def _id(first_byte: int) -> bytes:
    return bytes([first_byte]) + bytes(19)


async def test_a_node_in_the_replacement_cache_is_not_new() -> None:
    # ksize 2; ids 0xF8.. and 0xFC.. fill the far bucket (shared prefix 5 bits, so it may not
    # split again); 0xFA.. lands in that bucket's replacement cache.
    me = Node(_id(0x00))
    stock = StockRoutingTable(PingRecorder(), 2, me)
    fixed = RoutingTable(PingRecorder(), 2, me, lambda: 0.0)
    parked = Node(_id(0xFA), "127.0.0.1", 3)
    for table in (stock, fixed):
        table.add_contact(Node(_id(0xF8), "127.0.0.1", 1))
        table.add_contact(Node(_id(0xFC), "127.0.0.1", 2))
        table.add_contact(parked)
        bucket = table.buckets[table.get_bucket_for(parked)]
        assert parked.id in bucket.replacement_nodes
    await asyncio.sleep(0)  # let the head pings run
    assert stock.is_new_node(parked)  # the stock bug: "new" on every message → store storm
    assert not fixed.is_new_node(parked)
    assert fixed.is_new_node(Node(_id(0xFB)))


def test_buckets_take_time_from_the_injected_source() -> None:
    now = [5000.0]
    table = RoutingTable(PingRecorder(), 20, Node(_id(0)), lambda: now[0])
    assert table.buckets[0].last_updated == 5000.0
    assert table.lonely_buckets() == []
    now[0] += 3601
    assert table.lonely_buckets() == table.buckets


# --- sanitising replies ---------------------------------------------------------------------


def test_node_lists_are_sanitised() -> None:
    good = [[_id(1), "127.0.0.1", 7000], (_id(2), "::1", 7001)]
    assert _sanitise_nodes(good, 20, 4) == [(_id(1), "127.0.0.1", 7000)]
    for bad in (
        "nodes",
        [[_id(1), "example.org", 7000]],  # a host name would mean a blocking DNS lookup
        [[_id(1), "127.0.0.1", 0]],
        [[b"short", "127.0.0.1", 7000]],
        [[_id(1), "127.0.0.1"]],
        [[_id(1), "127.0.0.1", 7000]] * 41,
    ):
        with pytest.raises(Exception, match=r"bad|IP"):
            _sanitise_nodes(bad, 20, 4)


# --- the crawl ------------------------------------------------------------------------------


class ScriptedProtocol:
    """Answers find_value from a script: peer id -> value or node list."""

    def __init__(self, answers: dict[bytes, Any]) -> None:
        self.answers = answers
        self.asked: list[bytes] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def call_find_value(self, peer: Node, target: Node) -> tuple[bool, Any]:
        self.asked.append(peer.id)
        answer = self.answers.get(peer.id)
        if answer is None:
            return (False, None)
        if isinstance(answer, list):
            return (True, answer)
        return (True, {"value": answer})

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task


def peers(n: int) -> list[Node]:
    return [Node(_id(i + 1), "127.0.0.1", 7000 + i) for i in range(n)]


def crawl_for(identity: Identity, protocol: ScriptedProtocol, nodes: list[Node]) -> RecordCrawl:
    return RecordCrawl(
        protocol,
        Node(dht_key(identity.public_key)),
        nodes,
        ksize=20,
        alpha=3,
        identity_key=identity.public_key,
        now_ms=NOW,
        known_sequence=None,
    )


async def test_crawl_returns_the_newest_valid_value_not_the_majority() -> None:
    alice = Identity.generate()
    nodes = peers(6)
    forged = forge(alice)
    older, newer = signed_by(alice, NOW), signed_by(alice, NOW + 5)
    protocol = ScriptedProtocol(
        {
            nodes[0].id: forged,
            nodes[1].id: forged,
            nodes[2].id: forged,  # the majority of the first round is forged
            nodes[3].id: older,
            nodes[4].id: newer,
            nodes[5].id: b"junk",
        }
    )
    crawl = crawl_for(alice, protocol, nodes)
    best = await crawl.find()
    assert best is not None and best.signed == newer
    assert crawl.rejected[Rejection.BAD_SIGNATURE] == 3
    assert crawl.rejected[Rejection.MALFORMED] == 1


async def test_crawl_names_the_nodes_behind_the_newest_record() -> None:
    alice = Identity.generate()
    nodes = peers(5)
    older, newer = signed_by(alice, NOW), signed_by(alice, NOW + 5)
    protocol = ScriptedProtocol(
        {
            nodes[0].id: older,
            nodes[1].id: newer,
            nodes[2].id: [],  # no record, no contacts
            nodes[3].id: forge(alice),
            # nodes[4] never answers
        }
    )
    crawl = crawl_for(alice, protocol, nodes)
    best = await crawl.find()
    assert best is not None and best.signed == newer
    assert sorted(n.id for n in crawl.behind(best)) == [nodes[0].id, nodes[2].id, nodes[3].id]


async def test_crawl_gives_nothing_when_only_forgeries_exist() -> None:
    alice = Identity.generate()
    nodes = peers(4)
    protocol = ScriptedProtocol({n.id: forge(alice) for n in nodes})
    crawl = crawl_for(alice, protocol, nodes)
    assert await crawl.find() is None
    assert sorted(protocol.asked) == sorted(n.id for n in nodes)


async def test_crawl_rejects_records_of_another_identity_under_the_key() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    nodes = peers(3)
    protocol = ScriptedProtocol({n.id: signed_by(mallory) for n in nodes})
    crawl = crawl_for(alice, protocol, nodes)
    assert await crawl.find() is None
    assert crawl.rejected == {Rejection.WRONG_IDENTITY: 3}


async def test_find_neighbors_sees_past_empty_buckets() -> None:
    # Contacts all near our own id: splitting leaves empty buckets on the far side of the space.
    me = Node(_id(0x00))
    stock = StockRoutingTable(PingRecorder(), 2, me)
    fixed = RoutingTable(PingRecorder(), 2, me, lambda: 0.0)
    contacts = [Node(_id(b), "127.0.0.1", 7000 + b) for b in (0x01, 0x02, 0x03)]
    for table in (stock, fixed):
        for contact in contacts:
            table.add_contact(contact)
    await asyncio.sleep(0)
    far = Node(_id(0xFF))
    assert stock.find_neighbors(far) == []  # the stock bucket walk gives up at an empty bucket
    found = fixed.find_neighbors(far)
    assert [n.id for n in found] == [_id(0x03), _id(0x02)]  # k = 2 nearest, nearest first
    assert [n.id for n in fixed.find_neighbors(far, exclude=contacts[2])] == [_id(0x02), _id(0x01)]


def test_the_dht_codec_writes_and_reads_the_bytes_stock_rpcudp_does() -> None:
    import umsgpack

    from discovery.kademlia_ext import _MsgpackCodec

    requests = [
        ["ping", [bytes(range(20))]],
        ["store", [b"\x01" * 20, b"\x02" * 20, bytes(range(256)) * 8]],
        ["find_value", [b"\x03" * 20, b"\x04" * 20]],
        [True, [[b"\x05" * 20, "10.0.0.1", 4434], [b"\x06" * 20, "::1", 65535]]],
        [True, {"value": b"record"}],
        [False, None],
    ]
    for message in requests:
        ours = _MsgpackCodec.packb(message)
        assert ours == umsgpack.packb(message)
        assert _MsgpackCodec.unpackb(ours) == umsgpack.unpackb(ours)
    with pytest.raises(Exception):  # noqa: B017 - any decode error; callers drop it
        _MsgpackCodec.unpackb(b"\xc1")
