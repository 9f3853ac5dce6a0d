"""A node's presence in discovery: advertised and browsing on the LAN (mDNS), published in and
resolving through the DHT, with what it sees written to the store for ``quicnprotochat peers``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from discovery.dht import DhtNode
from discovery.lan import LanEvent, LanEventKind, compact_fingerprint
from discovery.mdns import MdnsService
from discovery.records import OwnRecord, RelayHint
from discovery.resolver import Resolution, Resolver, Source
from node.app.node import Node
from node.app.store import SeenPeer
from node.core.addresses import Address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresenceConfig:
    mdns: bool = True
    mdns_interfaces: Sequence[str] = ()  # default: the host the node listens on
    dht: bool = True
    dht_port: int = 0
    bootstrap: Sequence[Address] = ()


class Presence:
    """Discovery for one node, on that node's runtime (its clock, randomness, sockets and
    tasks): a presence never runs on another runtime than the node it advertises."""

    def __init__(self, node: Node, config: PresenceConfig) -> None:
        self.node = node
        self.config = config
        self.mdns: MdnsService | None = None
        self.dht: DhtNode | None = None
        self.resolver: Resolver | None = None
        self.own: OwnRecord | None = None

    async def start(self) -> None:
        """Start after the node: advertise where its endpoint listens."""
        node, cfg = self.node, self.config
        host, port = node.address
        if cfg.mdns:
            self.mdns = MdnsService(
                node.runtime,
                interfaces=list(cfg.mdns_interfaces) or [host],
                identity_key=node.public_key,
                display_name=node.name,
                port=port,
                on_event=self._on_lan_event,
            )
            await self.mdns.start()
        if cfg.dht:
            self.dht = DhtNode(node.runtime)
            dht_address = await self.dht.start(host, cfg.dht_port)
            log.info("DHT node on %s:%d", *dht_address)
            if cfg.bootstrap:
                answered = await self.dht.bootstrap(list(cfg.bootstrap))
                if not answered:
                    log.warning("no DHT bootstrap peer answered")
            mls = node.mls
            self.own = OwnRecord(
                node.identity,
                (await node.envelope_key()).public_key,
                addresses=[(host, port)],
                relay_hints=self._relay_hints(),
                key_package=await node.run(mls.last_resort_key_package),
            )
            self.dht.keep_published(self.own)
        self.resolver = Resolver(node.runtime, lan=self.mdns, dht=self.dht)
        node.router.resolver = self.resolver
        node.router.lan = self.mdns
        node.router.on_reached = self._on_reached

    @property
    def dht_address(self) -> Address | None:
        return self.dht.address if self.dht is not None else None

    async def stop(self) -> None:
        self.node.router.resolver = None
        self.node.router.on_reached = None
        self.node.router.lan = None
        if self.resolver is not None:
            await self.resolver.close()
        if self.dht is not None:
            await self.dht.stop()
        if self.mdns is not None:
            await self.mdns.stop()

    def _relay_hints(self) -> list[RelayHint]:
        relay = self.node.router.relay
        if relay is None:
            return []
        return [RelayHint(relay.address[0], relay.address[1], relay.identity)]

    def _on_reached(self, peer: bytes, address: Address, found: Resolution | None) -> None:
        """A handshake just proved ``peer`` at ``address``: list it as confirmed."""
        if found is None:
            return  # reached at its last known address: discovery had no part in it
        store = self.node.store
        seen = SeenPeer(
            fingerprint=compact_fingerprint(peer),
            name=self.node.contacts.name(peer),
            # The resolver's cache holds only DHT records; LAN answers are never cached.
            source="lan" if found.source is Source.LAN else "dht",
            host=address[0],
            port=address[1],
            status="confirmed",
            seen_at_ms=self.node.clock_ms(),
        )
        self.node.spawn(self.node.run(lambda: store.save_peer(seen)))

    def _on_lan_event(self, event: LanEvent) -> None:
        peer, store = event.peer, self.node.store
        if not peer.addresses:
            return
        if event.kind is LanEventKind.REMOVED:
            self.node.spawn(self.node.run(lambda: store.forget_peer_claim(peer.fingerprint)))
            return
        seen = SeenPeer(
            fingerprint=peer.fingerprint,
            name=peer.name,
            source="lan",
            host=peer.addresses[0],
            port=peer.port,
            status=peer.status.value,
            seen_at_ms=peer.last_seen_ms,
        )
        self.node.spawn(self.node.run(lambda: store.save_peer_claim(seen)))
