"""A Kademlia DHT of signed peer records, for finding nodes across networks.

Each node stores its :class:`~discovery.records.PeerRecord`, signed, under
:func:`dht_key` of its identity key; anyone can look it up with the identity key alone. The
DHT is kademlia 2.2.3 over rpcudp, made safe by the subclasses in :mod:`discovery.kademlia_ext`:
records are validated when stored and again when read, the newest valid one wins, a dead peer
costs ``rpc_timeout`` (1 s) rather than 5 s, and time, randomness, the socket and background
tasks come from the :class:`~node.core.runtime.Runtime` the node is given.

Usage::

    dht = DhtNode(runtime)
    await dht.start("192.0.2.10", 7400)
    await dht.bootstrap([("198.51.100.1", 7400)])
    own = OwnRecord(identity, envelope_public_key, addresses=[("192.0.2.10", 4433)])
    dht.keep_published(own)                        # now and whenever due
    record = await dht.lookup(bob_identity_key, deadline=3.0)
    ...
    await dht.stop()

Every deadline is a duration in seconds from the call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from discovery.kademlia_ext import (
    NODE_ID_SIZE,
    RecordCrawl,
    RecordProtocol,
    RecordStorage,
    dht_key,
)
from discovery.records import AcceptedRecord, OwnRecord, PeerRecord, RecordBook, Rejection, validate
from node.core.runtime import Runtime

log = logging.getLogger(__name__)

Address = tuple[str, int]

BOOTSTRAP_PINGS = 3  # tries per bootstrap peer, each bounded by the RPC timeout

__all__ = ["DhtConfig", "DhtNode", "DhtStats", "LookupResult", "dht_key"]


@dataclass(frozen=True)
class DhtConfig:
    """Tuning knobs; the defaults suit a real network.

    :param rpc_timeout: seconds to wait for one reply before treating the peer as dead.
    :param refresh_interval: seconds between routing refreshes and re-replication of stored
        records (Kademlia §2.3, §2.5).
    """

    ksize: int = 20
    alpha: int = 3
    rpc_timeout: float = 1.0
    max_records: int = 10_000
    refresh_interval: float = 3600.0


@dataclass(frozen=True)
class LookupResult:
    """What one lookup found and what it cost."""

    record: AcceptedRecord | None
    hops: int  # crawl rounds; 0 for this node's own record, or when it knows no other node
    queried: int  # find_value RPCs sent
    rejected: dict[Rejection, int] = field(default_factory=dict)  # bad values received
    timed_out: bool = False


@dataclass(frozen=True)
class DhtStats:
    routing_table: int
    stored_records: int  # home and cache copies
    refused_at_store: dict[Rejection, int]
    rejected_at_read: dict[Rejection, int]
    malformed_datagrams: int
    cached_records: int = 0  # of stored_records, those held as cache (far from their key)


class _RecordServer(Server):  # type: ignore[misc]
    """kademlia's Server with our protocol, storage, socket factory and store logic."""

    def __init__(
        self,
        *,
        ksize: int,
        alpha: int,
        node_id: bytes,
        storage: RecordStorage,
        protocol_args: dict[str, Any],
    ) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id, storage=storage)
        # Stock writes `storage or ForgetfulStorage()`: an empty store is falsy, so set it again.
        self.storage = storage
        self._protocol_args = protocol_args

    def _create_protocol(self) -> RecordProtocol:
        return RecordProtocol(self.node, self.storage, self.ksize, **self._protocol_args)

    async def listen_with(self, runtime: Runtime, host: str, port: int) -> Address:
        """Bind through the runtime (the simulator's seam), not
        ``loop.create_datagram_endpoint``; no stock refresh timer (DhtNode runs its own)."""
        protocol = self._create_protocol()
        self.transport = await runtime.open_datagram(lambda: protocol, (host, port))
        self.protocol = protocol
        sockname = self.transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    async def bootstrap_node(self, addr: Address) -> Node | None:
        # Stock kademlia pings a bootstrap peer once: one lost datagram and the node never
        # joins (found by simulation: with 1% loss, about one node in thirty stayed alone).
        node_id = None
        for _ in range(BOOTSTRAP_PINGS):
            node_id = await self.protocol.ping_address(addr)
            if node_id is not None:
                break
        if node_id is None:
            return None
        node = Node(node_id, addr[0], addr[1])
        # Into the routing table at once, so a bootstrap cut short by its deadline still counts.
        self.protocol.welcome_if_new(node)
        return node

    async def set_digest(self, dkey: bytes, value: bytes, accepted: list[int] | None = None) -> int:
        """Store ``value`` on the k nodes nearest ``dkey``; return how many accepted it.

        Unlike stock, an empty neighbour list is not a ``ValueError`` (``max()`` of nothing), a
        refusal is not counted as success, and ``accepted`` (one counter) is updated as answers
        arrive so a caller's deadline can still report partial success.
        """
        counter = accepted if accepted is not None else [0]
        target = Node(dkey)
        nearest = self.protocol.router.find_neighbors(target)
        if not nearest:
            return 0
        nodes = await NodeSpiderCrawl(self.protocol, target, nearest, self.ksize, self.alpha).find()
        if not nodes:
            return 0

        async def store(node: Node) -> None:
            ok, _ = await self.protocol.call_store(node, dkey, value)
            if ok:
                counter[0] += 1

        await asyncio.gather(*(store(n) for n in nodes))
        return counter[0]

    async def get(self, key: Any) -> Any:
        raise NotImplementedError("use DhtNode.lookup: values must be validated")

    async def set(self, key: Any, value: Any) -> Any:
        raise NotImplementedError("use DhtNode.publish: values must be signed records")

    def save_state(self, fname: Any) -> None:
        raise NotImplementedError("kademlia state files are pickles; never written or loaded")

    def save_state_regularly(self, fname: Any, frequency: Any = 600) -> None:
        raise NotImplementedError("kademlia state files are pickles; never written or loaded")


class DhtNode:
    """One node of the peer-record DHT.

    :param runtime: the wall clock for record expiry, randomness for the node id and refresh
        targets, the UDP socket and background tasks (the simulator hands in its own).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        config: DhtConfig | None = None,
        node_id: bytes | None = None,
    ) -> None:
        self.config = config or DhtConfig()
        self._runtime = runtime
        self._clock_ms = runtime.wall_ms
        self.node_id = node_id if node_id is not None else runtime.random_bytes(NODE_ID_SIZE)
        if len(self.node_id) != NODE_ID_SIZE:
            raise ValueError(f"a DHT node id is {NODE_ID_SIZE} bytes")
        self._server: _RecordServer | None = None
        self._address: Address | None = None
        self._ipv6 = False
        self._seen = RecordBook(capacity=self.config.max_records)
        self._own: dict[bytes, OwnRecord] = {}  # identity key -> this node's own record
        self.rejected_at_read: Counter[Rejection] = Counter()
        # Insertion-ordered (a set's order follows memory addresses): stops run in one order.
        self._tasks: dict[asyncio.Task[None], None] = {}

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the DHT node is not started")
        return self._address

    def _protocol(self) -> RecordProtocol:
        if self._server is None:
            raise RuntimeError("the DHT node is not started")
        protocol: RecordProtocol = self._server.protocol
        return protocol

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        """Bind the DHT's UDP socket to ``host`` (an IP literal) and start maintenance."""
        if self._server is not None:
            raise RuntimeError("the DHT node is already started")
        version = ipaddress.ip_address(host).version
        self._ipv6 = version == 6
        runtime = self._runtime
        storage = RecordStorage(runtime.wall_ms, runtime.monotonic, self.config.max_records)
        server = _RecordServer(
            ksize=self.config.ksize,
            alpha=self.config.alpha,
            node_id=self.node_id,
            storage=storage,
            protocol_args={
                "rpc_timeout": self.config.rpc_timeout,
                "now": runtime.monotonic,
                "random_bytes": runtime.random_bytes,
                "spawn": runtime.spawn,
                "ip_version": version,
            },
        )
        self._address = await server.listen_with(runtime, host, port)
        self._server = server
        self._spawn(self._maintain())
        return self._address

    async def stop(self) -> None:
        """Stop periodic work, settle outstanding RPCs and close the socket."""
        server, self._server = self._server, None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if server is None:
            return
        server.protocol.close()
        if server.transport is not None:
            server.transport.close()
        pending = tasks + list(server.protocol._tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._runtime.spawn(coro)
        self._tasks[task] = None
        task.add_done_callback(lambda done: self._tasks.pop(done, None))

    # --- joining --------------------------------------------------------------------------

    async def _resolve(self, host: str, port: int) -> Address | None:
        try:
            ip = ipaddress.ip_address(host)
            return (str(ip), port) if (ip.version == 6) == self._ipv6 else None
        except ValueError:
            pass
        try:
            found = await self._runtime.resolve_host(host, port, ipv6=self._ipv6)
        except OSError as exc:
            log.warning("DHT bootstrap host %s does not resolve: %s", host, exc)
            return None
        return found[0] if found else None

    async def bootstrap(self, peers: Sequence[Address], deadline: float = 5.0) -> int:
        """Join the DHT through known peers (IPs or host names); return how many answered.

        A dead peer costs at most ``rpc_timeout``, and the whole call at most ``deadline``.
        """
        server = self._server
        if server is None:
            raise RuntimeError("the DHT node is not started")
        answered: list[Node] = []
        try:
            async with asyncio.timeout(deadline):
                resolved = await asyncio.gather(*(self._resolve(h, p) for h, p in peers))
                addresses = [a for a in dict.fromkeys(resolved) if a is not None]

                async def ping(address: Address) -> None:
                    node = await server.bootstrap_node(address)
                    if node is not None:
                        answered.append(node)

                await asyncio.gather(*(ping(a) for a in addresses))
                if answered:
                    crawl = NodeSpiderCrawl(
                        server.protocol, server.node, answered, server.ksize, server.alpha
                    )
                    await crawl.find()
        except TimeoutError:
            log.info("DHT bootstrap stopped at its %.1f s deadline", deadline)
        return len(answered)

    def neighbors(self) -> list[Address]:
        """Addresses of the nodes in the routing table (closest to us first)."""
        server = self._server
        if server is None:
            return []
        return [(n.ip, n.port) for n in server.protocol.router.find_neighbors(server.node)]

    # --- records --------------------------------------------------------------------------

    async def publish(self, signed_record: bytes, deadline: float = 5.0) -> int:
        """Store a signed record on the k nodes nearest its key; return how many accepted.

        The record is also kept locally, so this node answers for it. Raises
        :class:`ValueError` if the record is invalid or older than one already held.
        """
        server = self._server
        if server is None:
            raise RuntimeError("the DHT node is not started")
        verdict = validate(signed_record, self._clock_ms())
        if not isinstance(verdict, AcceptedRecord):
            raise ValueError(f"refusing to publish a {verdict.reason.value} record")
        key = dht_key(verdict.record.identity_key)
        refused = server.storage.offer(key, signed_record)
        if refused is not None:
            raise ValueError(f"refusing to publish: the record is {refused.value}")
        self._seen.keep(verdict, self._clock_ms())
        accepted = [0]
        try:
            async with asyncio.timeout(deadline):
                await server.set_digest(key, verdict.signed, accepted)
        except TimeoutError:
            log.info("DHT publish stopped at its deadline with %d stores", accepted[0])
        return accepted[0]

    async def republish(self, own: OwnRecord, deadline: float = 5.0) -> int:
        """Sign a fresh record now (after an address change, say) and publish it.

        This node is then the signer of ``own``'s identity: its lookups of that identity answer
        with the record it signed last, without asking the DHT.
        """
        self._own[own.identity.public_key] = own
        return await self.publish(own.sign(self._clock_ms()), deadline)

    def keep_published(self, own: OwnRecord, check_interval: float = 60.0) -> None:
        """Publish ``own`` now and again whenever it is due (changed, or half its life gone).

        Call ``own.update(...)`` when addresses change; the next check republishes. For an
        immediate republish, await :meth:`republish` instead.
        """
        self._spawn(self._keep_published(own, check_interval))

    async def _keep_published(self, own: OwnRecord, check_interval: float) -> None:
        while True:
            if own.due(self._clock_ms()):
                try:
                    stored = await self.republish(own)
                    log.info("published our peer record on %d DHT nodes", stored)
                except ValueError as exc:
                    log.warning("could not publish our peer record: %s", exc)
                except Exception:  # keep trying at the next check rather than stop for good
                    log.exception("publishing our peer record failed")
            await asyncio.sleep(check_interval)

    async def lookup(self, identity_key: bytes, deadline: float) -> PeerRecord | None:
        """The newest valid record of ``identity_key``, or None if none was found in time."""
        result = await self.lookup_detailed(identity_key, deadline)
        return None if result.record is None else result.record.record

    async def lookup_detailed(self, identity_key: bytes, deadline: float) -> LookupResult:
        """Like :meth:`lookup`, with the cost of the search (for metrics and benchmarks).

        Only this node's own record is answered without a crawl: the signer knows its newest
        record. Any other copy held here — stored by whoever chose to, perhaps an old record
        replayed — is just one candidate: the crawl goes on to the k nodes nearest the key, and
        the highest valid sequence among everything it reached, and the local copy, wins.
        """
        server = self._server
        if server is None:
            raise RuntimeError("the DHT node is not started")
        protocol = server.protocol
        now_ms = self._clock_ms()
        mine = self._own.get(identity_key)
        if mine is not None and mine.current is not None:
            if mine.current.record.expires_at_ms > now_ms:
                return LookupResult(self._newest(mine.current, now_ms), hops=0, queried=0)
        key = dht_key(identity_key)
        local = server.storage.accepted(key, now_ms)
        target = Node(key)
        nearest = protocol.router.find_neighbors(target)
        if not nearest:
            held = None if local is None else self._newest(local, now_ms)
            return LookupResult(held, hops=0, queried=0)
        crawl = RecordCrawl(
            protocol,
            target,
            nearest,
            server.ksize,
            server.alpha,
            identity_key=identity_key,
            now_ms=now_ms,
            known_sequence=self._seen.known_sequence(identity_key),
        )
        timed_out = False
        try:
            async with asyncio.timeout(deadline):
                await crawl.find()
        except TimeoutError:
            timed_out = True
        self.rejected_at_read.update(crawl.rejected)
        best = crawl.best()
        if local is not None and (best is None or local.record.sequence > best.record.sequence):
            best = local
        if best is not None:
            best = self._newest(best, now_ms)
            # Repair our own copy if it is older, or missing though this is one of its homes.
            missing = local is None and not protocol.far_from(key)
            if missing or (local is not None and local.signed != best.signed):
                protocol.keep_record(key, best.signed)
            if not timed_out:
                # Kademlia §2.3 stores the answer at the nearest node that lacked it; we store
                # it at each of the k nearest that had no record or an older one.
                for peer in crawl.behind(best):
                    protocol.spawn(protocol.call_store(peer, key, best.signed))
        return LookupResult(best, crawl.rounds, crawl.queried, dict(crawl.rejected), timed_out)

    def _newest(self, found: AcceptedRecord, now_ms: int) -> AcceptedRecord:
        kept = self._seen.keep(found, now_ms)
        if isinstance(kept, AcceptedRecord):
            return kept
        held = self._seen.get(found.record.identity_key, now_ms)
        return held if held is not None else found

    # --- upkeep ---------------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            try:
                await self.refresh()
            except Exception:  # upkeep must outlive one bad round; the next one may work
                log.exception("DHT refresh failed")

    async def refresh(self, older_than: float | None = None) -> int:
        """Refresh quiet buckets, then re-replicate records held longer than ``older_than``
        seconds (default: the refresh interval) to their k nearest nodes (Kademlia §2.3, §2.5).

        Runs every ``refresh_interval`` by itself; call it after a network change to re-join
        faster. Returns how many records were re-replicated.
        """
        server = self._server
        if server is None:
            return 0
        crawls = []
        for node_id in server.protocol.get_refresh_ids():
            target = Node(node_id)
            nearest = server.protocol.router.find_neighbors(target, server.alpha)
            crawls.append(
                NodeSpiderCrawl(server.protocol, target, nearest, server.ksize, server.alpha).find()
            )
        await asyncio.gather(*crawls)
        self._seen.expire(self._clock_ms())
        age = self.config.refresh_interval if older_than is None else older_than
        held = server.storage.iter_older_than(age)
        for dkey, value in held:
            await server.set_digest(dkey, value)
        return len(held)

    def stats(self) -> DhtStats:
        server = self._server
        if server is None:
            return DhtStats(0, 0, {}, dict(self.rejected_at_read), 0)
        protocol = server.protocol
        table = sum(len(b) for b in protocol.router.buckets)
        return DhtStats(
            routing_table=table,
            stored_records=len(server.storage),
            refused_at_store=dict(server.storage.dropped),
            rejected_at_read=dict(self.rejected_at_read),
            malformed_datagrams=protocol.malformed,
            cached_records=sum(1 for key, _ in server.storage if server.storage.is_cached(key)),
        )
