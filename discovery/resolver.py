"""Where is this identity now? The LAN table, then a cache, then the DHT.

:meth:`Resolver.resolve` answers with a :class:`Resolution`:
the addresses to dial, where they came from, and the signed record if one is known (it carries
the envelope key and relay hints). The order is cheapest first:

1. **lan** — mDNS entries whose fingerprint matches the identity (confirmed ones first). They
   are claims: the dial pins the identity key, so a wrong one fails the handshake, and the
   router reports it with ``MdnsService.refute``.
2. **cache** — records found before, kept until their own expiry, bounded (least recently
   used goes first).
3. **dht** — a lookup, bounded by the caller's deadline. Concurrent resolves of one identity
   share one lookup. A lookup that completes without a record is remembered for a short
   ``negative_ttl_ms`` so a missing peer does not cost a DHT walk per message; a lookup cut
   short by its deadline is not.

When a dial to a resolved address fails, the router calls :meth:`Resolver.invalidate`: the
cached record is dropped, and if the answer came from the LAN, LAN entries not re-announced
since are skipped for ``lan_retry_after_ms`` so the next resolve asks the DHT.

Time comes from the :class:`~node.core.runtime.Runtime`'s wall clock only, and lookups run as
its tasks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from discovery.lan import Address, LanPeer, compact_fingerprint
from discovery.records import AcceptedRecord, PeerRecord, RecordVerdict, validate
from node.core.runtime import Runtime

log = logging.getLogger(__name__)


class LanSource(Protocol):
    """What the resolver needs from mDNS (``MdnsService`` and ``LanTable`` both fit)."""

    def lookup(self, fingerprint: str) -> list[LanPeer]: ...


class LookupOutcome(Protocol):
    """What the resolver reads from a DHT lookup (``discovery.dht.LookupResult`` fits)."""

    @property
    def record(self) -> AcceptedRecord | None: ...

    @property
    def timed_out(self) -> bool: ...


class RecordSource(Protocol):
    """What the resolver needs from the DHT (``DhtNode`` fits)."""

    async def lookup_detailed(self, identity_key: bytes, deadline: float) -> LookupOutcome: ...


class Source(enum.Enum):
    LAN = "lan"
    CACHE = "cache"
    DHT = "dht"


@dataclass(frozen=True)
class Resolution:
    """Where to reach an identity, and how we know."""

    identity_key: bytes
    addresses: tuple[Address, ...]  # best first; may be empty for a relay-only peer
    source: Source
    record: PeerRecord | None  # the signed record behind the answer, if any is known
    lan_peers: tuple[LanPeer, ...] = ()  # the mDNS entries used, for confirm/refute

    @property
    def relay_hints(self) -> tuple[tuple[str, int, bytes], ...]:
        """``(host, port, relay identity key)`` of the relays the record names."""
        if self.record is None:
            return ()
        return tuple((h.host, h.port, h.identity_key) for h in self.record.relay_hints)


class Resolver:
    """Resolve identity keys to addresses: LAN, then cache, then DHT.

    :param runtime: the wall clock for expiry, and the tasks that run DHT lookups.
    :param lan: the LAN table source, or None when mDNS is off.
    :param dht: the DHT, or None when the DHT is off.
    :param cache_size: records kept at most.
    :param negative_ttl_ms: how long a definitive DHT miss is remembered.
    :param lan_retry_after_ms: how long LAN entries are skipped after a LAN answer failed.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        lan: LanSource | None = None,
        dht: RecordSource | None = None,
        cache_size: int = 1024,
        negative_ttl_ms: int = 30_000,
        lan_retry_after_ms: int = 30_000,
    ) -> None:
        if cache_size < 1:
            raise ValueError("the cache holds at least one record")
        self.lan = lan
        self.dht = dht
        self._runtime = runtime
        self._clock_ms = runtime.wall_ms
        self._cache_size = cache_size
        self._negative_ttl_ms = negative_ttl_ms
        self._lan_retry_after_ms = lan_retry_after_ms
        self._cache: OrderedDict[bytes, PeerRecord] = OrderedDict()
        self._missing_until: dict[bytes, int] = {}
        self._lan_skipped_at: dict[bytes, int] = {}
        self._last_source: dict[bytes, Source] = {}
        self._inflight: dict[bytes, asyncio.Task[LookupOutcome]] = {}
        # Insertion-ordered (a set's order follows memory addresses): stops run in one order.
        self._tasks: dict[asyncio.Task[LookupOutcome], None] = {}
        self.outcomes: Counter[str] = Counter()  # lan / cache / dht / negative / miss / timeout

    # --- resolving ------------------------------------------------------------------------

    async def resolve(self, identity_key: bytes, deadline: float) -> Resolution | None:
        """Where ``identity_key`` can be reached, or None if nobody knows within ``deadline``
        seconds."""
        now_ms = self._clock_ms()
        found = self._from_lan(identity_key, now_ms) or self._from_cache(identity_key, now_ms)
        if found is not None:
            return self._answer(found)
        if self.dht is None:
            self.outcomes["miss"] += 1
            return None
        if self._missing_until.get(identity_key, 0) > now_ms:
            self.outcomes["negative"] += 1
            return None
        outcome = await self._lookup(self.dht, identity_key, deadline)
        if outcome is None or outcome.record is None:
            timed_out = outcome is None or outcome.timed_out
            self.outcomes["timeout" if timed_out else "miss"] += 1
            if not timed_out:
                self._missing_until[identity_key] = self._clock_ms() + self._negative_ttl_ms
            return None
        record = outcome.record.record
        if record.identity_key != identity_key:  # a RecordSource bug, never a network answer
            log.error("the DHT answered for another identity; ignored")
            return None
        self._remember(record, self._clock_ms())
        return self._answer(Resolution(identity_key, record.dial_addresses, Source.DHT, record))

    def _answer(self, resolution: Resolution) -> Resolution:
        self.outcomes[resolution.source.value] += 1
        self._last_source[resolution.identity_key] = resolution.source
        return resolution

    def _from_lan(self, identity_key: bytes, now_ms: int) -> Resolution | None:
        if self.lan is None:
            return None
        peers = self.lan.lookup(compact_fingerprint(identity_key))
        skipped_at = self._lan_skipped_at.get(identity_key)
        if skipped_at is not None:
            if now_ms >= skipped_at + self._lan_retry_after_ms:
                del self._lan_skipped_at[identity_key]
            else:
                # Only entries re-announced after the failure are worth another try.
                peers = [p for p in peers if p.last_seen_ms > skipped_at]
        if not peers:
            return None
        addresses = tuple(dict.fromkeys(a for p in peers for a in p.endpoints))
        record = self._cached(identity_key, now_ms)
        return Resolution(identity_key, addresses, Source.LAN, record, tuple(peers))

    def _from_cache(self, identity_key: bytes, now_ms: int) -> Resolution | None:
        record = self._cached(identity_key, now_ms)
        if record is None:
            return None
        self._cache.move_to_end(identity_key)
        return Resolution(identity_key, record.dial_addresses, Source.CACHE, record)

    async def _lookup(
        self, dht: RecordSource, identity_key: bytes, deadline: float
    ) -> LookupOutcome | None:
        task = self._inflight.get(identity_key)
        if task is None:
            task = self._runtime.spawn(self._run_lookup(dht, identity_key, deadline))
            self._inflight[identity_key] = task
            self._tasks[task] = None
            task.add_done_callback(lambda t: self._lookup_done(identity_key, t))
        try:
            # Shielded: one caller's deadline must not cancel a lookup others are waiting on.
            async with asyncio.timeout(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            # Later callers start afresh rather than join a lookup about to run out of time;
            # this one ends by its own deadline (close() cancels it sooner).
            if self._inflight.get(identity_key) is task:
                del self._inflight[identity_key]
            return None
        except Exception:  # a failing DHT must not take the router down; logged when done
            return None

    @staticmethod
    async def _run_lookup(dht: RecordSource, identity_key: bytes, deadline: float) -> LookupOutcome:
        return await dht.lookup_detailed(identity_key, deadline)

    def _lookup_done(self, identity_key: bytes, task: asyncio.Task[LookupOutcome]) -> None:
        self._tasks.pop(task, None)
        if self._inflight.get(identity_key) is task:
            del self._inflight[identity_key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT lookup failed: %r", task.exception())

    # --- the cache ------------------------------------------------------------------------

    def _cached(self, identity_key: bytes, now_ms: int) -> PeerRecord | None:
        record = self._cache.get(identity_key)
        if record is not None and record.expires_at_ms <= now_ms:
            del self._cache[identity_key]
            return None
        return record

    def _remember(self, record: PeerRecord, now_ms: int) -> bool:
        held = self._cached(record.identity_key, now_ms)
        if held is not None and held.sequence > record.sequence:
            return False
        self._cache[record.identity_key] = record
        self._cache.move_to_end(record.identity_key)
        self._missing_until.pop(record.identity_key, None)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True

    def learn(self, signed_record: bytes, expected_identity: bytes | None = None) -> RecordVerdict:
        """Validate a signed record that arrived some other way (a relay directory, a peer)
        and cache it if it is the newest known."""
        verdict = validate(signed_record, self._clock_ms(), expected_identity)
        if isinstance(verdict, AcceptedRecord):
            self._remember(verdict.record, self._clock_ms())
        return verdict

    def cached(self, identity_key: bytes) -> PeerRecord | None:
        """The cached record of ``identity_key``, if any and unexpired."""
        return self._cached(identity_key, self._clock_ms())

    def invalidate(self, identity_key: bytes) -> None:
        """A dial to what :meth:`resolve` returned failed: forget it and look further next
        time."""
        self._cache.pop(identity_key, None)
        self._missing_until.pop(identity_key, None)
        if self._last_source.pop(identity_key, None) is Source.LAN:
            self._lan_skipped_at[identity_key] = self._clock_ms()

    def known(self) -> Sequence[PeerRecord]:
        """Every cached, unexpired record (for ``quicnprotochat peers``)."""
        now_ms = self._clock_ms()
        return [r for r in list(self._cache.values()) if self._cached(r.identity_key, now_ms)]

    async def close(self) -> None:
        """Cancel lookups still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
