"""Where an envelope goes: straight to the peer if it answers quickly, else to a relay.

DESIGN.md §5. The same envelope (same id) is offered on each path, so a direct delivery that
arrived but whose answer was lost, followed by a relay copy, is dropped as a duplicate by the
receiver.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from node.app.contacts import Contacts
from node.core import wire
from node.core.addresses import Address
from node.core.errors import ErrorCode, NodeError, PeerUnreachableError, RelayError, RemoteError
from node.core.identity import short_fingerprint
from node.transport.endpoint import Endpoint

log = logging.getLogger(__name__)


class Path(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"


@dataclass(frozen=True)
class RelayInfo:
    address: Address
    identity: bytes


class Router:
    def __init__(
        self,
        endpoint: Endpoint,
        contacts: Contacts,
        relay: RelayInfo | None,
        *,
        direct_deadline: float = 1.5,
        relay_deadline: float = 10.0,
        unreachable_backoff: float = 30.0,
    ) -> None:
        self._endpoint = endpoint
        self._contacts = contacts
        self.relay = relay
        self._direct_deadline = direct_deadline
        self._relay_deadline = relay_deadline
        self._backoff = unreachable_backoff
        # Peers whose direct path just failed: skip straight to the relay until this loop time,
        # so a vanished peer costs one deadline, not one per message.
        self._unreachable_until: dict[bytes, float] = {}

    def peer_alive(self, identity: bytes) -> None:
        """The peer just reached us: its direct path is worth trying again."""
        self._unreachable_until.pop(identity, None)

    def _direct_worth_trying(self, identity: bytes) -> bool:
        until = self._unreachable_until.get(identity)
        return until is None or asyncio.get_running_loop().time() >= until

    async def send(self, recipient: bytes, envelope: wire.Envelope) -> Path:
        """Deliver one envelope; return the path that accepted it.

        Raises :class:`PeerUnreachableError` when neither the peer nor a relay took it.
        """
        address = self._contacts.address(recipient)
        if address is not None and self._direct_worth_trying(recipient):
            try:
                await self._deliver(address, recipient, envelope, self._direct_deadline)
                self.peer_alive(recipient)
                return Path.DIRECT
            except NodeError as exc:
                # Unreachable, refused, wrong identity at that address, or a garbled answer:
                # in every case the relay is the way to go.
                log.info("direct delivery to %s failed: %s", short_fingerprint(recipient), exc)
                self._endpoint.drop(address, recipient)
                loop_now = asyncio.get_running_loop().time()
                self._unreachable_until[recipient] = loop_now + self._backoff
        if self.relay is None:
            raise PeerUnreachableError(
                f"{self._contacts.name(recipient)} is unreachable and no relay is configured"
            )
        try:
            await self._deliver(
                self.relay.address, self.relay.identity, envelope, self._relay_deadline
            )
        except NodeError as exc:
            self._endpoint.drop(self.relay.address, self.relay.identity)
            raise RelayError(f"the relay did not take the message: {exc}") from exc
        return Path.RELAY

    async def _deliver(
        self, address: Address, peer: bytes, envelope: wire.Envelope, deadline: float
    ) -> None:
        conn = await self._endpoint.dial(address, peer, deadline)
        response = await conn.call(wire.Deliver((envelope,)), deadline)
        if isinstance(response, wire.ErrorResult):
            raise RemoteError(response.code, response.message)
        if not isinstance(response, wire.DeliverResult) or envelope.id not in response.accepted:
            raise RemoteError(ErrorCode.INTERNAL, "the envelope was not accepted")

    async def call_relay(
        self, request: wire.Request, deadline: float | None = None
    ) -> wire.Response:
        if self.relay is None:
            raise RelayError("no relay is configured")
        try:
            conn = await self._endpoint.dial(self.relay.address, self.relay.identity)
            response = await conn.call(request, deadline or self._relay_deadline)
        except NodeError as exc:
            self._endpoint.drop(self.relay.address, self.relay.identity)
            raise RelayError(f"the relay is unreachable: {exc}") from exc
        if isinstance(response, wire.ErrorResult):
            raise RelayError(f"the relay refused: {response.message}")
        return response

    async def call_peer(self, peer: bytes, request: wire.Request) -> wire.Response:
        address = self._contacts.address(peer)
        if address is None:
            raise PeerUnreachableError(f"no address known for {self._contacts.name(peer)}")
        try:
            conn = await self._endpoint.dial(address, peer, self._direct_deadline)
            response = await conn.call(request, self._direct_deadline)
        except PeerUnreachableError:
            self._endpoint.drop(address, peer)
            raise
        if isinstance(response, wire.ErrorResult):
            raise RemoteError(response.code, response.message)
        return response
