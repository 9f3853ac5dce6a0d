"""Where an envelope goes: straight to the peer if it answers quickly, else to a relay.

The same envelope (same id) is offered on each path, so a direct delivery that
arrived but whose answer was lost, followed by a relay copy, is dropped as a duplicate by the
receiver.

Through a relay, with sealed sender on and the recipient's envelope key known (from its peer
record, or told with :meth:`Router.learn_envelope_key`), the envelope is sealed to that key
(``node.core.sealed``) and handed over on a connection made for it alone, from a fresh
identity key and socket: the relay learns the mailbox, not the sender (ADR 0008).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from discovery.lan import compact_fingerprint
from discovery.resolver import Resolution, Resolver, Source
from node.app.contacts import Contacts
from node.core import hybrid_kem, sealed, wire
from node.core.addresses import Address
from node.core.errors import (
    CryptoError,
    ErrorCode,
    NodeError,
    PeerIdentityError,
    PeerUnreachableError,
    RelayError,
    RemoteError,
)
from node.core.identity import Identity, short_fingerprint
from node.core.runtime import Runtime
from node.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

MAX_ADDRESSES_TRIED = 3


class LanFeedback(Protocol):
    """What the router tells mDNS after a handshake (``discovery.mdns.MdnsService``)."""

    def confirm(self, fingerprint: str, proven_identity_key: bytes, address: Address) -> object: ...

    def refute(self, fingerprint: str, address: Address) -> object: ...


class Path(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"


@dataclass(frozen=True)
class RelayInfo:
    address: Address
    identity: bytes
    # More addresses of the same relay service (several processes, one identity key): tried in
    # turn when one fails, the one that last answered first.
    alternates: tuple[Address, ...] = ()


class Router:
    def __init__(
        self,
        endpoint: Endpoint,
        contacts: Contacts,
        relay: RelayInfo | None,
        runtime: Runtime,
        *,
        direct_deadline: float = 1.5,
        relay_deadline: float = 10.0,
        unreachable_backoff: float = 30.0,
        resolver: Resolver | None = None,
        lan: LanFeedback | None = None,
        identity: Identity | None = None,
        sealed_sender: bool = True,
    ) -> None:
        self.resolver = resolver
        # Sealing needs the node's identity key to sign inside the box; without one (a bare
        # router in a test) every relay delivery goes unsealed.
        self._identity = identity
        self.sealed_sender = sealed_sender and identity is not None
        self._runtime = runtime
        # Recipients' hybrid envelope public keys, by identity key (checked when learned).
        self.envelope_keys: dict[bytes, bytes] = {}
        # Relays that refused a sealed delivery (allow_sealed_sender = false): unsealed there.
        self._no_sealed: set[bytes] = set()
        self.sealed_sent = 0
        self.sealed_fallbacks = 0
        self.lan = lan
        # Told of every direct call that succeeded: (peer, address, how discovery found it).
        self.on_reached: Callable[[bytes, Address, Resolution | None], None] | None = None
        self._endpoint = endpoint
        self._now = runtime.monotonic
        self._contacts = contacts
        self.relay = relay
        # Where each peer collects its mail (from its peer record's relay hints, or told by
        # whoever introduced it): an envelope that cannot go direct waits there, not at our own
        # relay, which that peer never asks.
        self.peer_relays: dict[bytes, RelayInfo] = {}
        self._direct_deadline = direct_deadline
        self._relay_deadline = relay_deadline
        self._backoff = unreachable_backoff
        # Peers whose direct path just failed: skip straight to the relay until this loop time,
        # so a vanished peer costs one deadline, not one per message.
        self._unreachable_until: dict[bytes, float] = {}
        # Recipients of direct attempts under way, and whether each reached us meanwhile: a
        # failure that began before the latest sign of life says nothing about it now.
        self._trying: dict[bytes, bool] = {}
        # Per relay identity, the address that answered last.
        self._relay_answered: dict[bytes, Address] = {}

    def peer_alive(self, identity: bytes) -> None:
        """The peer just reached us: its direct path is worth trying again."""
        self._unreachable_until.pop(identity, None)
        if identity in self._trying:
            self._trying[identity] = True

    def _direct_worth_trying(self, identity: bytes) -> bool:
        until = self._unreachable_until.get(identity)
        return until is None or self._now() >= until

    async def send(self, recipient: bytes, envelope: wire.Envelope) -> Path:
        """Deliver one envelope; return the path that accepted it.

        Raises :class:`PeerUnreachableError` when neither the peer nor a relay took it.
        """
        if self._direct_worth_trying(recipient):
            self._trying[recipient] = False
            try:
                response = await self._call_direct(recipient, wire.Deliver((envelope,)))
                _check_accepted(response, envelope)
                return Path.DIRECT
            except NodeError as exc:
                # Unreachable, refused, wrong identity at that address, or a garbled answer:
                # in every case the relay is the way to go.
                log.info("direct delivery to %s failed: %s", short_fingerprint(recipient), exc)
                if not self._trying.get(recipient):
                    self._unreachable_until[recipient] = self._now() + self._backoff
            finally:
                self._trying.pop(recipient, None)
        relay = self.peer_relays.get(recipient, self.relay)
        if relay is None:
            raise PeerUnreachableError(
                f"{self._contacts.name(recipient)} is unreachable and no relay is configured"
            )
        envelope_key = self.envelope_keys.get(recipient)
        if (
            self.sealed_sender
            and envelope_key is not None
            and relay.identity not in self._no_sealed
        ):
            try:
                await self._send_sealed(relay, envelope_key, envelope)
                self.sealed_sent += 1
                return Path.RELAY
            except RemoteError as exc:
                if exc.code is not ErrorCode.SEALED_REFUSED:
                    raise RelayError(f"the relay did not take the message: {exc}") from exc
                # Delivery matters more than hiding the sender from this one relay: say so
                # once, then send there unsealed (ADR 0008).
                self._no_sealed.add(relay.identity)
                log.warning(
                    "the relay at %s:%d refuses sealed sender: it will see who sends there",
                    *relay.address,
                )
            except NodeError as exc:
                raise RelayError(f"the relay did not take the message: {exc}") from exc
        if self.sealed_sender and envelope_key is None:
            self.sealed_fallbacks += 1
            log.info("no envelope key known for %s: sent unsealed", short_fingerprint(recipient))
        # This node reads its own relay's mailbox only: a notice anywhere else would go unread.
        own = self.relay is not None and relay.identity == self.relay.identity
        try:
            response = await self._call_relay_at(
                relay,
                wire.Deliver((envelope,), failure_notice=own),
                self._relay_deadline,
                self._relay_deadline,
            )
            _check_accepted(response, envelope)
        except NodeError as exc:
            raise RelayError(f"the relay did not take the message: {exc}") from exc
        return Path.RELAY

    def learn_envelope_key(self, identity: bytes, envelope_key: bytes) -> None:
        """Remember ``identity``'s envelope public key (from its signed peer record or invite
        link). Raises :class:`CryptoError` for a key that is not a usable one."""
        hybrid_kem.check_public_key(envelope_key)
        self.envelope_keys[identity] = envelope_key

    async def _send_sealed(
        self, relay: RelayInfo, envelope_key: bytes, envelope: wire.Envelope
    ) -> None:
        """Seal ``envelope`` and deliver it to ``relay`` from a one-time identity key, on a
        socket of its own (so not even the UDP port links two deliveries); the outer id is
        fresh, and what the receiver keeps is the inner one."""
        assert self._identity is not None
        runtime = self._runtime
        outer = sealed.seal_envelope(
            self._identity, envelope_key, envelope, runtime.random_bytes(wire.ENVELOPE_ID_SIZE)
        )
        one_time = Endpoint(Identity.from_seed(runtime.random_bytes(32)), None, runtime)
        await one_time.start(self._endpoint.local_address[0], 0)
        try:
            failure: NodeError | None = None
            for address in [relay.address, *relay.alternates]:
                try:
                    conn = await one_time.dial(address, relay.identity, self._relay_deadline)
                    response = await conn.call(wire.Deliver((outer,)), self._relay_deadline)
                except NodeError as exc:
                    failure = exc
                    continue
                _check_accepted(response, outer)
                return
            assert failure is not None
            raise failure
        finally:
            await one_time.close()

    async def _candidates(self, peer: bytes) -> tuple[list[Address], Resolution | None]:
        """Addresses to try for ``peer``: the last one that worked, then what discovery says."""
        found: list[Address] = []
        known = self._contacts.address(peer)
        if known is not None:
            found.append(known)
        resolution = None
        if self.resolver is not None:
            try:
                resolution = await self.resolver.resolve(peer, self._direct_deadline)
            except NodeError as exc:
                log.info("resolving %s failed: %s", short_fingerprint(peer), exc)
            if resolution is not None:
                found += [a for a in resolution.addresses if a not in found]
                if resolution.record is not None:
                    try:
                        self.learn_envelope_key(peer, resolution.record.envelope_key)
                    except CryptoError as exc:
                        log.info(
                            "%s publishes no usable envelope key: %s", short_fingerprint(peer), exc
                        )
                for host, port, identity in resolution.relay_hints[:1]:
                    self.peer_relays[peer] = RelayInfo((host, port), identity)
        return found[:MAX_ADDRESSES_TRIED], resolution

    async def _call_direct(self, peer: bytes, request: wire.Request) -> wire.Response:
        """Call ``peer`` itself at the first of its addresses that proves its key."""
        addresses, resolution = await self._candidates(peer)
        if not addresses:
            raise PeerUnreachableError(f"no address known for {self._contacts.name(peer)}")
        failure: NodeError | None = None
        for address in addresses:
            try:
                conn = await self._endpoint.dial(address, peer, self._direct_deadline)
                response = await conn.call(request, self._direct_deadline)
            except NodeError as exc:
                failure = exc
                self._endpoint.drop(address, peer)
                self._discovery_feedback(peer, address, resolution, ok=False, error=exc)
                continue
            if isinstance(response, wire.ErrorResult):
                raise RemoteError(response.code, response.message)
            self._discovery_feedback(peer, address, resolution, ok=True, error=None)
            self._contacts.seen_at(peer, address)
            if self.on_reached is not None:
                self.on_reached(peer, address, resolution)
            self.peer_alive(peer)
            return response
        assert failure is not None
        raise failure

    def _discovery_feedback(
        self,
        peer: bytes,
        address: Address,
        resolution: Resolution | None,
        *,
        ok: bool,
        error: NodeError | None,
    ) -> None:
        """Tell mDNS what the handshake proved: a TXT record is only ever a claim."""
        if self.resolver is None:
            return
        if not ok:
            self.resolver.invalidate(peer)
        if resolution is None or resolution.source is not Source.LAN or self.lan is None:
            return
        fingerprint = compact_fingerprint(peer)
        if ok:
            self.lan.confirm(fingerprint, peer, address)
        elif isinstance(error, PeerIdentityError):
            log.warning("a LAN node at %s:%d advertised %s falsely", *address, fingerprint)
            self.lan.refute(fingerprint, address)

    async def call_relay(
        self, request: wire.Request, deadline: float | None = None
    ) -> wire.Response:
        if self.relay is None:
            raise RelayError("no relay is configured")
        try:
            response = await self._call_relay_at(
                self.relay, request, None, deadline or self._relay_deadline
            )
        except NodeError as exc:
            raise RelayError(f"the relay is unreachable: {exc}") from exc
        if isinstance(response, wire.ErrorResult):
            raise RelayError(f"the relay refused: {response.message}")
        return response

    async def _call_relay_at(
        self,
        relay: RelayInfo,
        request: wire.Request,
        dial_deadline: float | None,
        deadline: float,
    ) -> wire.Response:
        """Call the relay at each of its addresses in turn until one answers. A call that timed
        out may still have been served: retrying it elsewhere is safe, since every relay call
        is idempotent (envelopes are stored once by id, acks remove once)."""
        addresses = [relay.address, *relay.alternates]
        answered = self._relay_answered.get(relay.identity)
        if answered in addresses:
            addresses.remove(answered)
            addresses.insert(0, answered)
        failure: NodeError | None = None
        for address in addresses:
            try:
                if dial_deadline is None:
                    conn = await self._endpoint.dial(address, relay.identity)
                else:
                    conn = await self._endpoint.dial(address, relay.identity, dial_deadline)
                response = await conn.call(request, deadline)
            except NodeError as exc:
                self._endpoint.drop(address, relay.identity)
                failure = exc
                continue
            self._relay_answered[relay.identity] = address
            return response
        assert failure is not None  # at least one address was tried
        raise failure

    async def call_peer(self, peer: bytes, request: wire.Request) -> wire.Response:
        """Call the peer itself (no relay): used for its own KeyPackage, say."""
        return await self._call_direct(peer, request)


def _check_accepted(response: wire.Response, envelope: wire.Envelope) -> None:
    if isinstance(response, wire.ErrorResult):
        raise RemoteError(response.code, response.message)
    if not isinstance(response, wire.DeliverResult) or envelope.id not in response.accepted:
        raise RemoteError(ErrorCode.INTERNAL, "the envelope was not accepted")
