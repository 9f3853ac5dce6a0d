"""kademlia 2.2.3 subclasses that make the stock DHT safe to hold signed peer records.

The stock library trusts everything: it stores any value anyone sends,
returns the majority answer of a lookup unchecked, reads ``time.monotonic()`` and the global
``random`` module, re-sends its whole store on every message from a node parked in a
replacement cache (the *store storm*), waits 5 s for a dead peer, and lets one malformed datagram
raise inside an unobserved task. Each class here fixes one of those by overriding methods —
the library itself is used as installed, never copied:

* :class:`RoutingTable` / :class:`KBucket`: time from the event loop; ``is_new_node`` is false
  for nodes in the replacement cache (the store-storm fix); ``find_neighbors`` ranks every
  contact instead of the stock bucket walk, which gives up at an empty bucket.
* :class:`RecordStorage`: holds only valid records, one per key, under the key derived from the
  record's own identity, newest sequence wins; expiry by the injected wall clock. A record
  stored on a node that is not among the k nearest its key is only a short-lived cache copy.
* :class:`RecordProtocol`: validates at the store RPC, sanitises every request and reply,
  fixes the key used by ``welcome_if_new``, shields rpcudp futures from cancellation so a
  lookup deadline cannot corrupt them, and takes its RPC timeout and randomness as arguments.
* :class:`RecordCrawl`: a value spider that validates every value it is given, does not stop at
  the first one (stock does) but goes on to the k nearest nodes, and returns the newest valid
  record rather than the majority answer.

These are internals of :mod:`discovery.dht`; use :class:`discovery.dht.DhtNode`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import msgpack
import rpcudp.protocol
from kademlia.crawling import RPCFindResponse, ValueSpiderCrawl
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket as _StockBucket
from kademlia.routing import RoutingTable as _StockTable
from kademlia.storage import IStorage

from discovery.records import (
    MAX_SIGNED_RECORD_SIZE,
    AcceptedRecord,
    RecordBook,
    RecordVerdict,
    RejectedRecord,
    Rejection,
    validate,
)
from node.core.runtime import Clock

log = logging.getLogger(__name__)


class _MsgpackCodec:
    """rpcudp's datagram codec with the C ``msgpack`` in place of the pure-Python
    ``u-msgpack-python``: the same bytes both ways (str as str, bytes as bin), a fraction of
    the cost (a quarter of a DHT's CPU time went to u-msgpack, measured in simulation)."""

    @staticmethod
    def packb(obj: object) -> bytes:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed

    @staticmethod
    def unpackb(data: bytes) -> Any:
        # A datagram is at most 8 KiB; anything malformed raises, and rpcudp's callers in
        # RecordProtocol drop it.
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


# rpcudp 5.0.1 (pinned) reads its codec from this one module global.
rpcudp.protocol.umsgpack = _MsgpackCodec

NODE_ID_SIZE = 20  # kademlia's ids and keys are 160-bit
# A find_node answer lists k contacts; peers may run a larger k than ours (stock: 20), so the cap
# is generous, but bounded so one datagram cannot make us rank thousands of fake nodes.
MAX_NODES_PER_REPLY = 64
DHT_KEY_CONTEXT = b"quicnprotochat dht key v1\x00"
# How long a node keeps a record stored on it from afar (it is not among the k nearest the key).
# Lookups never stop at such a copy, so it matters only when none of the k nearest answers; short,
# so a replayed old record does not linger where no newer one will ever overwrite it.
CACHE_SECONDS = 300.0
_ID_SPACE = 2**160

Monotonic = Callable[[], float]
RandomBytes = Callable[[int], bytes]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


def dht_key(identity_key: bytes) -> bytes:
    """The kademlia key under which an identity's peer record is stored.

    kademlia needs 160-bit keys. We take the first 20 bytes of
    SHA-256(``DHT_KEY_CONTEXT`` || identity key) rather than kademlia's own SHA-1 ``digest``: the
    context keeps these keys apart from any other use of the identity's hash (the mailbox is
    plain SHA-256 of the key), and truncated SHA-256 is as uniform as SHA-1 without its baggage.
    """
    return hashlib.sha256(DHT_KEY_CONTEXT + identity_key).digest()[:NODE_ID_SIZE]


class _Malformed(Exception):
    """A request or reply that does not have the shape the protocol needs; it is dropped."""


def _node_id(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != NODE_ID_SIZE:
        raise _Malformed("bad node id")
    return value


# --- routing --------------------------------------------------------------------------------


class KBucket(_StockBucket):  # type: ignore[misc]
    """A k-bucket whose "last updated" time comes from the event loop, not ``time.monotonic``."""

    def __init__(self, low: int, high: int, ksize: int, now: Monotonic) -> None:
        self._now = now  # set first: the stock constructor calls touch_last_updated()
        super().__init__(low, high, ksize)

    def touch_last_updated(self) -> None:
        self.last_updated = self._now()

    def split(self) -> tuple[KBucket, KBucket]:
        # The stock split builds stock buckets by name; this one keeps the injected time.
        midpoint = (self.range[0] + self.range[1]) // 2
        one = KBucket(self.range[0], midpoint, self.ksize, self._now)
        two = KBucket(midpoint + 1, self.range[1], self.ksize, self._now)
        for node in [*self.nodes.values(), *self.replacement_nodes.values()]:
            (one if node.long_id <= midpoint else two).add_node(node)
        return one, two


class RoutingTable(_StockTable):  # type: ignore[misc]
    """Kademlia's routing table with loop time and the store-storm fix."""

    def __init__(self, protocol: Any, ksize: int, node: Node, now: Monotonic) -> None:
        self._now = now  # set first: the stock constructor calls flush()
        super().__init__(protocol, ksize, node)

    def flush(self) -> None:
        self.buckets = [KBucket(0, _ID_SPACE, self.ksize, self._now)]

    def lonely_buckets(self) -> list[KBucket]:
        cutoff = self._now() - 3600
        return [b for b in self.buckets if b.last_updated < cutoff]

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        """The k known nodes nearest ``node`` (never ``node`` itself, nor ``exclude``'s address).

        The stock version walks buckets outwards with ``TableTraverser``, which stops at the
        first empty bucket once it runs out of buckets on one side — so a key in a far, empty
        bucket got *no* neighbours from a table that had several (found as lookups that failed
        with zero queries). Ranking every contact is exact and cheap: a table holds at most
        160 · k nodes.
        """
        self.buckets[self.get_bucket_for(node)].touch_last_updated()  # as the stock walk does
        return self.nearest(node, k, exclude)

    def nearest(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Node]:
        """:meth:`find_neighbors` without marking the bucket as used (a look, not a lookup)."""
        target, own_id = node.long_id, node.id
        if exclude is None:
            candidates = [
                contact
                for bucket in self.buckets
                for contact in bucket.nodes.values()
                if contact.id != own_id
            ]
        else:
            candidates = [
                contact
                for bucket in self.buckets
                for contact in bucket.nodes.values()
                if contact.id != own_id and not contact.same_home_as(exclude)
            ]
        # XOR of the ids as ints is Kademlia's distance (what Node.distance_to computes).
        return heapq.nsmallest(
            k or self.ksize, candidates, key=lambda contact: contact.long_id ^ target
        )

    def is_new_node(self, node: Node) -> bool:
        # Store-storm fix: the stock check ignores the replacement cache, so a
        # node parked there is "new" on every message and welcome_if_new re-sends it every
        # stored value each time (at 1,000 nodes: ~6,700 tasks, 2.9 GB).
        bucket = self.buckets[self.get_bucket_for(node)]
        return node.id not in bucket.nodes and node.id not in bucket.replacement_nodes


# --- storage --------------------------------------------------------------------------------


class RecordStorage(IStorage):  # type: ignore[misc]
    """Valid peer records only, one per DHT key, the highest sequence winning.

    A record is held either as a **home** copy (this node is among the k nearest the key, or
    published the record itself) or as a **cache** copy (stored here by someone although this
    node is not among the k nearest, Kademlia §2.3), which is dropped ``cache_for`` seconds
    after it arrived, is never re-replicated nor handed to new neighbours, and is the first to go
    when the store is full. Either kind is only ever a candidate for a lookup: the crawl goes on
    to the k nearest nodes and the highest sequence wins (see :class:`RecordCrawl`).

    :param clock_ms: wall clock for record expiry.
    :param now: loop time, for "stored longer than" (Kademlia's hourly republish) and caches.
    """

    def __init__(self, clock_ms: Clock, now: Monotonic, capacity: int = 10_000) -> None:
        self._clock_ms = clock_ms
        self._now = now
        self.book = RecordBook(capacity)
        self._identity_of: dict[bytes, bytes] = {}
        self._stored_at: dict[bytes, float] = {}
        self._cached_until: dict[bytes, float] = {}

    @property
    def dropped(self) -> Counter[Rejection]:
        """Records refused, by reason."""
        return self.book.dropped

    def offer(
        self,
        key: bytes,
        value: object,
        now_ms: int | None = None,
        *,
        cache_for: float | None = None,
    ) -> Rejection | None:
        """Store ``value`` under ``key`` if valid and newest; return why not otherwise.

        With ``cache_for`` (seconds) a newly kept record is a cache copy; without it, a home
        copy — and the record already held, offered again as home, becomes one.
        """
        now_ms = self._clock_ms() if now_ms is None else now_ms
        verdict = validate(value, now_ms)
        if isinstance(verdict, RejectedRecord):
            self.book.dropped[verdict.reason] += 1
            return verdict.reason
        if dht_key(verdict.record.identity_key) != key:
            self.book.dropped[Rejection.WRONG_IDENTITY] += 1
            return Rejection.WRONG_IDENTITY
        if key not in self._identity_of and len(self.book) >= self.book.capacity:
            self.book.expire(now_ms)
            if len(self.book) >= self.book.capacity:
                self._drop_a_cache()  # rather than the book's choice, which may be a home copy
        kept = self.book.keep(verdict, now_ms)
        if isinstance(kept, RejectedRecord):
            return kept.reason
        if kept is verdict:
            self._identity_of[key] = verdict.record.identity_key
            self._stored_at[key] = self._now()
            if cache_for is None:
                self._cached_until.pop(key, None)
            else:
                self._cached_until[key] = self._now() + cache_for
        elif cache_for is None:
            self._cached_until.pop(key, None)  # the same record, now held as a home copy
        return None

    def _forget(self, key: bytes) -> None:
        identity = self._identity_of.pop(key, None)
        if identity is not None:
            self.book.forget(identity)
        self._stored_at.pop(key, None)
        self._cached_until.pop(key, None)

    def _drop_a_cache(self) -> None:
        if self._cached_until:
            self._forget(min(self._cached_until, key=self._cached_until.__getitem__))

    def is_cached(self, key: bytes) -> bool:
        """Whether the record under ``key`` is held as a cache copy (False if none is held)."""
        return key in self._cached_until and self.accepted(key) is not None

    def accepted(self, key: bytes, now_ms: int | None = None) -> AcceptedRecord | None:
        identity = self._identity_of.get(key)
        if identity is None:
            return None
        until = self._cached_until.get(key)
        if until is not None and self._now() >= until:
            self._forget(key)
            return None
        held = self.book.get(identity, self._clock_ms() if now_ms is None else now_ms)
        if held is None:
            self._forget(key)
        return held

    # IStorage, for the parts of kademlia that still read storage directly.

    def __setitem__(self, key: bytes, value: object) -> None:
        reason = self.offer(key, value)
        if reason is not None:
            raise ValueError(f"record refused: {reason.value}")

    def __getitem__(self, key: bytes) -> bytes:
        held = self.accepted(key)
        if held is None:
            raise KeyError(key)
        return held.signed

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        held = self.accepted(key)
        return default if held is None else held.signed

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return True  # a storage object is there even when empty

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        now_ms = self._clock_ms()
        items = []
        for key in list(self._identity_of):
            held = self.accepted(key, now_ms)
            if held is not None:
                items.append((key, held.signed))
        return iter(items)

    def home_items(self) -> list[tuple[bytes, bytes]]:
        """The home copies: what this node re-replicates and hands to new neighbours."""
        return [(k, v) for k, v in self if k not in self._cached_until]

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        cutoff = self._now() - seconds_old
        return [(k, v) for k, v in self.home_items() if self._stored_at.get(k, cutoff) <= cutoff]


# --- protocol -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _ip_version(text: str) -> int | None:
    # Every find_node answer repeats the same few addresses; parsing them is a hot path.
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def _sanitise_nodes(value: object, limit: int, ip_version: int) -> list[tuple[bytes, str, int]]:
    """A find_node answer as ``(id, ip, port)`` triples, or :class:`_Malformed`.

    IPs must be literals of our socket's family: a hostname here would make the socket layer
    resolve it (a blocking DNS query chosen by a stranger).
    """
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise _Malformed("bad node list")
    nodes = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise _Malformed("bad node triple")
        node_id, ip, port = item
        if not isinstance(ip, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise _Malformed("bad node address")
        version = _ip_version(ip)
        if version is None:
            raise _Malformed("node address is not an IP literal")
        if version != ip_version:
            continue
        nodes.append((_node_id(node_id), ip, port))
    return nodes


class RecordProtocol(KademliaProtocol):  # type: ignore[misc]
    """The kademlia RPC protocol, validating records and hardened against hostile datagrams.

    :param rpc_timeout: seconds to wait for any one reply (stock: 5).
    :param cache_seconds: how long a record stored from afar is kept (:class:`RecordStorage`).
    """

    def __init__(
        self,
        source_node: Node,
        storage: RecordStorage,
        ksize: int,
        *,
        rpc_timeout: float,
        now: Monotonic,
        random_bytes: RandomBytes,
        spawn: Spawn,
        ip_version: int,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._cache_seconds = cache_seconds
        self._wait_timeout = rpc_timeout
        self.router = RoutingTable(self, ksize, source_node, now)
        self._ksize = ksize
        self._random_bytes = random_bytes
        self._spawn_task = spawn
        self._ip_version = ip_version
        # Insertion-ordered (a set's order follows memory addresses): stops run in one order.
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self.malformed = 0  # datagrams dropped as undecodable or ill-formed

    # Background work (stores to newcomers, cache stores) is tracked so stop() can end it.
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._spawn_task(coro)
        self._tasks[task] = None
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("DHT background task failed: %r", task.exception())

    def close(self) -> None:
        """Cancel background tasks and settle every outstanding RPC as unanswered."""
        for task in list(self._tasks):
            task.cancel()
        # rpcudp keeps (future, timer) per request; settle them now instead of leaving timers
        # behind a closed socket (private to rpcudp 5.0.1, pinned in pyproject.toml).
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    # --- inbound: everything from the wire is hostile until checked ---------------------

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as exc:  # umsgpack and rpcudp raise a wide family on bad input
            self.malformed += 1
            log.debug("dropped a malformed DHT datagram from %s: %r", address, exc)

    async def _accept_request(self, msg_id: bytes, data: object, address: Any) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:  # wrong arity, wrong types: drop without answering
            self.malformed += 1
            log.debug("dropped a malformed DHT request from %s: %r", address, exc)

    def rpc_ping(self, sender: Any, nodeid: object) -> bytes:
        return bytes(super().rpc_ping(sender, _node_id(nodeid)))

    def rpc_store(self, sender: Any, nodeid: object, key: object, value: object) -> bool:
        source = Node(_node_id(nodeid), sender[0], sender[1])
        self.welcome_if_new(source)
        reason = self.keep_record(_node_id(key), value)
        if reason is not None:
            log.debug("refused a %s record from %s", reason.value, sender)
            return False
        return True

    def keep_record(self, key: bytes, value: object) -> Rejection | None:
        """Offer a record to storage: a home copy if this node is among the k nearest the key
        it knows of, else a short-lived cache copy."""
        cache_for = self._cache_seconds if self.far_from(key) else None
        reason: Rejection | None = self.storage.offer(key, value, cache_for=cache_for)
        return reason

    def far_from(self, key: bytes) -> bool:
        """Whether this node knows k nodes nearer ``key`` than itself."""
        target = Node(key)
        nearest = self.router.nearest(target, self._ksize)
        mine = self.source_node.distance_to(target)
        return len(nearest) >= self._ksize and nearest[-1].distance_to(target) < mine

    def rpc_find_node(self, sender: Any, nodeid: object, key: object) -> list[Any]:
        return list(super().rpc_find_node(sender, _node_id(nodeid), _node_id(key)))

    def rpc_find_value(self, sender: Any, nodeid: object, key: object) -> Any:
        source = Node(_node_id(nodeid), sender[0], sender[1])
        self.welcome_if_new(source)
        value = self.storage.get(_node_id(key))
        if value is None:
            return self.rpc_find_node(sender, nodeid, key)
        # "nodes" is our extension (stock readers look only at "value"): it lets a record crawl
        # keep closing in on the key past nodes that hold a copy, home or cached, which may be
        # older than the copies nearer the key. See RecordCrawl.
        return {"value": value, "nodes": self.rpc_find_node(sender, nodeid, key)}

    def welcome_if_new(self, node: Node) -> None:
        """Stock logic (Kademlia §2.5) with one fix: stored keys are already hashed, and the
        stock code hashes them again before measuring distance; cached copies are not handed
        on (this node is not where they belong)."""
        if not self.router.is_new_node(node):
            return
        for key, value in self.storage.home_items():
            keynode = Node(key)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(
                    keynode
                )
            if not neighbors or (new_node_close and this_closest):
                self.spawn(self.call_store(node, key, value))
        self.router.add_contact(node)

    def get_refresh_ids(self) -> list[bytes]:
        ids = []
        for bucket in self.router.lonely_buckets():
            low, high = bucket.range
            span = min(high, _ID_SPACE - 1) - low + 1
            offset = int.from_bytes(self._random_bytes(NODE_ID_SIZE), "big") % span
            ids.append((low + offset).to_bytes(NODE_ID_SIZE, "big"))
        return ids

    # --- outbound -----------------------------------------------------------------------

    async def _request(self, method: str, address: tuple[str, int], *args: object) -> Any:
        send = getattr(self, method)  # rpcudp turns unknown attributes into remote calls
        # Shielded: when a lookup deadline cancels us, rpcudp still owns the future and sets
        # its result on reply or timeout; a cancelled future there raises InvalidStateError.
        return await asyncio.shield(send(address, self.source_node.id, *args))

    async def ping_address(self, address: tuple[str, int]) -> bytes | None:
        """The node id answering at ``address``, or None."""
        ok, value = await self._request("ping", address)
        if not ok or not isinstance(value, bytes) or len(value) != NODE_ID_SIZE:
            return None
        return value

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        ok, value = await self._request("ping", (node_to_ask.ip, node_to_ask.port))
        good = ok and isinstance(value, bytes) and len(value) == NODE_ID_SIZE
        result: tuple[bool, Any] = self.handle_call_response(
            (good, value if good else None), node_to_ask
        )
        return result

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        ok, answer = await self._request("store", (node_to_ask.ip, node_to_ask.port), key, value)
        # A peer that answers at all is alive; only a literal True means it kept the record.
        self.handle_call_response((ok, None), node_to_ask)
        return (ok and answer is True, answer)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self._request("find_node", address, node_to_find.id)
        checked: tuple[bool, Any] = self.handle_call_response(
            self._checked_find(result, value_ok=False), node_to_ask
        )
        return checked

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self._request("find_value", address, node_to_find.id)
        checked: tuple[bool, Any] = self.handle_call_response(
            self._checked_find(result, value_ok=True), node_to_ask
        )
        return checked

    def _checked_find(self, result: tuple[bool, Any], *, value_ok: bool) -> tuple[bool, Any]:
        ok, value = result
        if not ok:
            return (False, None)
        try:
            if value_ok and isinstance(value, dict):
                # The value itself is judged by the crawl (it knows which identity it wants).
                if "value" not in value or not set(value) <= {"value", "nodes"}:
                    raise _Malformed("bad find_value answer")
                nodes = _sanitise_nodes(
                    value.get("nodes", []), MAX_NODES_PER_REPLY, self._ip_version
                )
                return (True, {"value": value["value"], "nodes": nodes})
            return (True, _sanitise_nodes(value, MAX_NODES_PER_REPLY, self._ip_version))
        except _Malformed:
            self.malformed += 1
            return (False, None)


# --- lookups --------------------------------------------------------------------------------


class RecordCrawl(ValueSpiderCrawl):  # type: ignore[misc]
    """Find the newest valid record under a key, never trusting any single answer.

    Every value found is validated against the identity asked for; invalid ones are counted
    and the crawl goes on around the node that sent them. Finding a valid record does not end
    the walk, as it does in stock kademlia: anyone can replay an old (validly signed) record to
    nodes far from the key, so the crawl keeps converging until the k nodes nearest the key
    have all answered — asking all of them at once from then on — and the highest sequence
    wins. Our nodes send their closest contacts along with a value (an extra ``nodes`` entry
    that stock kademlia ignores), so walking past value holders still gets closer to the key.
    :meth:`behind` names the nodes among those k that answered with no record or an older one,
    for the caller to store the newest on (Kademlia §2.3, extended to stale holders).
    """

    def __init__(
        self,
        protocol: RecordProtocol,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        *,
        identity_key: bytes,
        now_ms: int,
        known_sequence: int | None,
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self._identity_key = identity_key
        self._now_ms = now_ms
        self._known_sequence = known_sequence
        self.found: list[AcceptedRecord] = []
        self.rejected: Counter[Rejection] = Counter()
        self._verdicts: dict[bytes, RecordVerdict] = {}
        self._answered: dict[bytes, int | None] = {}  # peer id -> valid sequence it returned
        self.rounds = 0
        self.queried = 0

    def best(self) -> AcceptedRecord | None:
        """The highest-sequence valid record found so far."""
        if not self.found:
            return None
        return max(self.found, key=lambda a: a.record.sequence)

    def behind(self, record: AcceptedRecord) -> list[Node]:
        """The nearest nodes (at most k) that answered without ``record`` or anything newer."""
        sequence = record.record.sequence
        behind = []
        for peer in self.nearest:
            if peer.id not in self._answered:
                continue  # not asked (the crawl was cut short)
            held = self._answered[peer.id]
            if held is None or held < sequence:
                behind.append(peer)
        return behind

    async def _nodes_found(self, responses: dict[bytes, Any]) -> AcceptedRecord | None:
        self._absorb(responses)
        if self.nearest.have_contacted_all():
            return self.best()
        if self.found:
            # The stock crawl asks `alpha` nodes per round; with a record in hand, the rest of
            # the k nearest are asked together so confirming costs about one round trip.
            self.alpha = self.ksize
        result: AcceptedRecord | None = await self.find()
        return result

    def _judge(self, value: object) -> RecordVerdict:
        # The k holders mostly return the same bytes: check a signature once per distinct value.
        if not isinstance(value, bytes) or len(value) > MAX_SIGNED_RECORD_SIZE:
            return validate(value, self._now_ms, self._identity_key, self._known_sequence)
        verdict = self._verdicts.get(value)
        if verdict is None:
            verdict = validate(value, self._now_ms, self._identity_key, self._known_sequence)
            self._verdicts[value] = verdict
        return verdict

    def _absorb(self, responses: dict[bytes, Any]) -> None:
        self.rounds += 1
        self.queried += len(responses)
        unanswered = []
        for peer_id, raw in responses.items():
            response = RPCFindResponse(raw)
            if not response.happened():
                unanswered.append(peer_id)
                continue
            if response.has_value():
                verdict = self._judge(response.get_value())
                if isinstance(verdict, AcceptedRecord):
                    self.found.append(verdict)
                    self._answered[peer_id] = verdict.record.sequence
                else:
                    self.rejected[verdict.reason] += 1
                    self._answered[peer_id] = None
                self.nearest.push([Node(*n) for n in raw[1].get("nodes", [])])
                continue
            self._answered[peer_id] = None
            peer = self.nearest.get_node(peer_id)
            if peer is not None:
                self.nearest_without_value.push(peer)
            self.nearest.push(response.get_node_list())
        self.nearest.remove(unanswered)
