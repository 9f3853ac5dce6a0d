"""The resolver's order (LAN, cache, DHT), caching, deadlines and invalidation.

The LAN table is the real (pure) one; the DHT is a fake that hands out records, because these
tests are about the resolver, not the DHT.
"""

from __future__ import annotations

import asyncio

import pytest

from discovery.dht import LookupResult
from discovery.lan import LanTable, compact_fingerprint
from discovery.records import AcceptedRecord, OwnRecord, validate
from discovery.resolver import Resolver, Source
from node.core.identity import Identity
from tests.discovery_support import ENVELOPE_KEY, NOW, Clock
from tests.runtime_support import ClockedRuntime


class FakeDht:
    """Answers from a dict; can be made slow; counts lookups."""

    def __init__(self) -> None:
        self.records: dict[bytes, AcceptedRecord] = {}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    def publish(self, signed: bytes) -> None:
        verdict = validate(signed, NOW)
        assert isinstance(verdict, AcceptedRecord)
        self.records[verdict.record.identity_key] = verdict

    async def lookup_detailed(self, identity_key: bytes, deadline: float) -> LookupResult:
        self.calls += 1
        if self.gate is not None:
            try:
                async with asyncio.timeout(deadline):
                    await self.gate.wait()
            except TimeoutError:
                return LookupResult(None, hops=1, queried=1, timed_out=True)
        return LookupResult(self.records.get(identity_key), hops=1, queried=3)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


def bob_record(bob: Identity, clock: Clock, port: int = 4433, ttl_ms: int = 3_600_000) -> bytes:
    own = OwnRecord(bob, ENVELOPE_KEY, addresses=[("198.51.100.7", port)], ttl_ms=ttl_ms)
    return own.sign(clock.ms)


def lan_with(bob: Identity, host: str = "192.168.1.7", now_ms: int = NOW) -> LanTable:
    table = LanTable()
    table.observe(
        "bob",
        fingerprint=compact_fingerprint(bob.public_key),
        name="bob",
        addresses=[host],
        port=4433,
        version="1",
        now_ms=now_ms,
    )
    return table


async def test_lan_first(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.publish(bob_record(bob, clock))
    resolver = Resolver(ClockedRuntime(clock), lan=lan_with(bob), dht=dht)
    found = await resolver.resolve(bob.public_key, deadline=1.0)
    assert found is not None and found.source is Source.LAN
    assert found.addresses == (("192.168.1.7", 4433),)
    assert found.lan_peers[0].service == "bob"
    assert dht.calls == 0


async def test_lan_entries_of_other_fingerprints_are_ignored(bob: Identity, clock: Clock) -> None:
    resolver = Resolver(ClockedRuntime(clock), lan=lan_with(Identity.generate()), dht=None)
    assert await resolver.resolve(bob.public_key, deadline=1.0) is None
    assert resolver.outcomes["miss"] == 1


async def test_refuted_lan_entries_are_ignored(bob: Identity, clock: Clock) -> None:
    table = lan_with(bob)
    table.refute(compact_fingerprint(bob.public_key))
    resolver = Resolver(ClockedRuntime(clock), lan=table)
    assert await resolver.resolve(bob.public_key, deadline=1.0) is None


async def test_dht_then_cache(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.publish(bob_record(bob, clock))
    resolver = Resolver(ClockedRuntime(clock), dht=dht)
    first = await resolver.resolve(bob.public_key, deadline=1.0)
    assert first is not None and first.source is Source.DHT
    assert first.addresses == (("198.51.100.7", 4433),)
    assert first.record is not None and first.record.envelope_key == ENVELOPE_KEY
    second = await resolver.resolve(bob.public_key, deadline=1.0)
    assert second is not None and second.source is Source.CACHE
    assert dht.calls == 1
    assert resolver.outcomes == {"dht": 1, "cache": 1}


async def test_cache_lives_until_the_record_expires(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.publish(bob_record(bob, clock, ttl_ms=60_000))
    resolver = Resolver(ClockedRuntime(clock), dht=dht)
    await resolver.resolve(bob.public_key, deadline=1.0)
    clock.ms += 59_999
    assert (await resolver.resolve(bob.public_key, deadline=1.0)).source is Source.CACHE  # type: ignore[union-attr]
    clock.ms += 1
    assert resolver.cached(bob.public_key) is None
    await resolver.resolve(bob.public_key, deadline=1.0)  # expired: asks the DHT again
    assert dht.calls == 2


async def test_lan_answer_carries_the_cached_record(bob: Identity, clock: Clock) -> None:
    resolver = Resolver(ClockedRuntime(clock), lan=lan_with(bob))
    assert resolver.learn(bob_record(bob, clock)).ok
    found = await resolver.resolve(bob.public_key, deadline=1.0)
    assert found is not None and found.source is Source.LAN
    assert found.record is not None and found.record.identity_key == bob.public_key


async def test_negative_caching(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    resolver = Resolver(ClockedRuntime(clock), dht=dht, negative_ttl_ms=10_000)
    assert await resolver.resolve(bob.public_key, deadline=1.0) is None
    assert await resolver.resolve(bob.public_key, deadline=1.0) is None
    assert dht.calls == 1 and resolver.outcomes == {"miss": 1, "negative": 1}
    clock.ms += 10_000
    dht.publish(bob_record(bob, clock))
    found = await resolver.resolve(bob.public_key, deadline=1.0)
    assert found is not None and found.source is Source.DHT


async def test_a_timeout_is_not_negatively_cached(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.gate = asyncio.Event()
    resolver = Resolver(ClockedRuntime(clock), dht=dht)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await resolver.resolve(bob.public_key, deadline=0.05) is None
    assert loop.time() - started < 1.0
    assert resolver.outcomes["timeout"] == 1
    dht.gate.set()
    dht.publish(bob_record(bob, clock))
    found = await resolver.resolve(bob.public_key, deadline=1.0)
    assert found is not None and found.source is Source.DHT


async def test_the_deadline_holds_even_if_the_dht_ignores_it(bob: Identity, clock: Clock) -> None:
    class DeafDht(FakeDht):
        async def lookup_detailed(self, identity_key: bytes, deadline: float) -> LookupResult:
            await asyncio.sleep(30)
            raise AssertionError("unreachable")

    resolver = Resolver(ClockedRuntime(clock), dht=DeafDht())
    async with asyncio.timeout(2):
        assert await resolver.resolve(bob.public_key, deadline=0.05) is None
    await resolver.close()


async def test_concurrent_resolves_share_one_lookup(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.gate = asyncio.Event()
    dht.publish(bob_record(bob, clock))
    resolver = Resolver(ClockedRuntime(clock), dht=dht)
    waiters = [asyncio.ensure_future(resolver.resolve(bob.public_key, 2.0)) for _ in range(5)]
    await asyncio.sleep(0)
    dht.gate.set()
    results = await asyncio.gather(*waiters)
    assert all(r is not None and r.source is Source.DHT for r in results)
    assert dht.calls == 1


async def test_a_failing_dht_is_a_miss_not_a_crash(bob: Identity, clock: Clock) -> None:
    class BrokenDht(FakeDht):
        async def lookup_detailed(self, identity_key: bytes, deadline: float) -> LookupResult:
            raise RuntimeError("the DHT node is not started")

    resolver = Resolver(ClockedRuntime(clock), dht=BrokenDht())
    assert await resolver.resolve(bob.public_key, deadline=1.0) is None


async def test_invalidate_after_a_failed_dht_address(bob: Identity, clock: Clock) -> None:
    dht = FakeDht()
    dht.publish(bob_record(bob, clock))
    resolver = Resolver(ClockedRuntime(clock), dht=dht)
    await resolver.resolve(bob.public_key, 1.0)
    resolver.invalidate(bob.public_key)
    assert resolver.cached(bob.public_key) is None
    dht.publish(bob_record(bob, clock, port=5555))  # bob moved
    found = await resolver.resolve(bob.public_key, 1.0)
    assert found is not None and found.source is Source.DHT
    assert found.addresses == (("198.51.100.7", 5555),)


async def test_invalidate_after_a_failed_lan_address_falls_back_to_the_dht(
    bob: Identity, clock: Clock
) -> None:
    dht = FakeDht()
    dht.publish(bob_record(bob, clock))
    table = lan_with(bob)
    resolver = Resolver(ClockedRuntime(clock), lan=table, dht=dht, lan_retry_after_ms=30_000)
    assert (await resolver.resolve(bob.public_key, 1.0)).source is Source.LAN  # type: ignore[union-attr]
    resolver.invalidate(bob.public_key)
    clock.ms += 1
    assert (await resolver.resolve(bob.public_key, 1.0)).source is Source.DHT  # type: ignore[union-attr]
    # A fresh announcement on the LAN is worth trying again at once.
    table.observe(
        "bob",
        fingerprint=compact_fingerprint(bob.public_key),
        name="bob",
        addresses=["192.168.1.8"],
        port=4433,
        version="1",
        now_ms=clock.ms + 1,
    )
    again = await resolver.resolve(bob.public_key, 1.0)
    assert again is not None and again.source is Source.LAN
    assert again.addresses == (("192.168.1.8", 4433),)


async def test_cache_is_bounded_and_keeps_the_newest(clock: Clock) -> None:
    resolver = Resolver(ClockedRuntime(clock), cache_size=2)
    people = [Identity.generate() for _ in range(3)]
    for person in people:
        assert resolver.learn(bob_record(person, clock)).ok
    assert [resolver.cached(p.public_key) is not None for p in people] == [False, True, True]
    person = people[2]
    newer = bob_record(person, clock, port=7000)
    older = OwnRecord(person, ENVELOPE_KEY, addresses=[("198.51.100.7", 1)]).sign(clock.ms - 5000)
    resolver.learn(newer)
    resolver.learn(older)
    cached = resolver.cached(person.public_key)
    assert cached is not None and cached.dial_addresses == (("198.51.100.7", 7000),)
    assert len(resolver.known()) == 2


async def test_learn_rejects_bad_records(bob: Identity, clock: Clock) -> None:
    resolver = Resolver(ClockedRuntime(clock))
    assert not resolver.learn(b"garbage").ok
    assert not resolver.learn(bob_record(bob, clock), expected_identity=bytes(32)).ok
    assert resolver.cached(bob.public_key) is None
