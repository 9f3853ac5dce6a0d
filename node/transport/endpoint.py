"""One UDP socket per node that both accepts and dials QUIC connections.

Datagrams are routed by destination connection ID before anything else; all our connection IDs
have one length, so short-header packets parse without state. An Initial packet for an unknown
connection ID starts an inbound connection; anything else unknown is dropped.

The socket comes from the :class:`~node.core.runtime.Runtime` the endpoint is given, the seam
through which the simulator hands in an in-memory datagram network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.tls import AlertDescription

from node.core.addresses import Address
from node.core.errors import PeerIdentityError, PeerUnreachableError
from node.core.framing import DEFAULT_MAX_FRAME
from node.core.identity import Identity
from node.core.runtime import Runtime
from node.transport.connection import PeerConnection, RequestHandler
from node.transport.tls import IdentityQuicConnection, identity_certificate, quic_configuration

log = logging.getLogger(__name__)

# RFC 9001 §4.8: a TLS alert becomes QUIC error 0x100 + alert; bad_certificate is alert 42.
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + AlertDescription.bad_certificate

_SMALLEST_INITIAL = 1200  # RFC 9000 §14.1: client Initial datagrams are padded to 1200 bytes


@dataclass(frozen=True)
class EndpointConfig:
    max_frame: int = DEFAULT_MAX_FRAME
    call_deadline: float = 10.0
    idle_timeout: float = 30.0
    max_concurrent_calls: int = 64


class Endpoint(asyncio.DatagramProtocol):
    """A node's QUIC endpoint: ``start``, then ``dial`` peers and serve ``handler`` to them."""

    def __init__(
        self,
        identity: Identity,
        handler: RequestHandler | None,
        runtime: Runtime,
        config: EndpointConfig | None = None,
    ) -> None:
        self._identity = identity
        self._handler = handler
        self._config = config or EndpointConfig()
        self._runtime = runtime
        self._certificate = identity_certificate(identity)
        self._server_config = self._quic_config(is_client=False)
        self._client_config = self._quic_config(is_client=True)
        self._transport: asyncio.DatagramTransport | None = None
        self._routes: dict[bytes, PeerConnection] = {}
        self._outbound: dict[tuple[Address, bytes], PeerConnection] = {}

    def _quic_config(self, *, is_client: bool):  # type: ignore[no-untyped-def]
        return quic_configuration(
            self._identity,
            self._certificate,
            is_client=is_client,
            idle_timeout=self._config.idle_timeout,
            max_frame=self._config.max_frame,
        )

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        self._transport = await self._runtime.open_datagram(lambda: self, (host, port))
        return self.local_address

    @property
    def local_address(self) -> Address:
        if self._transport is None:
            raise RuntimeError("endpoint is not started")
        sockname = self._transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    @property
    def running(self) -> bool:
        return self._transport is not None

    async def close(self) -> None:
        """Close every connection, then the socket."""
        protocols = self._protocols()
        for protocol in protocols:
            protocol.close()
        if protocols:
            # A peer that never answers the close costs one second, not its idle timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*(p.wait_closed() for p in protocols))
        self._detach_all("endpoint closed")
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def abort(self) -> None:
        """Drop the socket without telling anyone, as a crashed or unplugged node would."""
        self._detach_all("endpoint aborted")
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def _protocols(self) -> list[PeerConnection]:
        # In the order they were made (a set's order follows memory addresses, and the close
        # datagrams would then leave in a different order from run to run).
        return list(dict.fromkeys([*self._routes.values(), *self._outbound.values()]))

    def _detach_all(self, why: str) -> None:
        for protocol in self._protocols():
            protocol.detach(why)
        self._routes.clear()
        self._outbound.clear()

    # --- dialing ------------------------------------------------------------------------------

    async def dial(
        self, address: Address, peer_key: bytes, deadline: float = 5.0
    ) -> PeerConnection:
        """A connection to ``address`` that has proven ``peer_key``; reused while it is open."""
        cached = self._outbound.get((address, peer_key))
        if cached is not None and cached.is_open:
            return cached
        if self._transport is None:
            raise PeerUnreachableError("endpoint is not running")
        quic = IdentityQuicConnection(configuration=self._client_config, expected_peer_key=peer_key)
        protocol = self._adopt(quic, address)
        self._outbound[(address, peer_key)] = protocol
        protocol.connect(address)
        try:
            async with asyncio.timeout(deadline):
                await protocol.wait_ready()
        except TimeoutError as exc:
            self._forget(protocol)
            protocol.close()
            raise PeerUnreachableError(f"no handshake with {address[0]}:{address[1]}") from exc
        except PeerUnreachableError as exc:
            self._forget(protocol)
            if protocol.close_code == BAD_CERTIFICATE:
                raise PeerIdentityError(
                    f"the peer at {address[0]}:{address[1]} is not the expected identity"
                ) from exc
            raise
        return protocol

    def drop(self, address: Address, peer_key: bytes) -> None:
        """Forget a connection that stopped answering, so the next dial starts afresh."""
        protocol = self._outbound.pop((address, peer_key), None)
        if protocol is not None:
            protocol.close()

    # --- routing ------------------------------------------------------------------------------

    def _adopt(self, quic: IdentityQuicConnection, remote: Address) -> PeerConnection:
        assert self._transport is not None
        protocol = PeerConnection(
            quic,
            self._handler,
            remote,
            max_frame=self._config.max_frame,
            call_deadline=self._config.call_deadline,
            max_concurrent=self._config.max_concurrent_calls,
            spawn=self._runtime.spawn,
        )
        protocol.connection_made(self._transport)
        protocol._connection_id_issued_handler = lambda cid: self._routes.__setitem__(cid, protocol)
        protocol._connection_id_retired_handler = lambda cid: self._retire(cid)
        protocol._connection_terminated_handler = lambda: self._forget(protocol)
        self._routes[quic.host_cid] = protocol
        return protocol

    def _retire(self, cid: bytes) -> None:
        self._routes.pop(cid, None)

    def _forget(self, protocol: PeerConnection) -> None:
        for cid in [c for c, p in self._routes.items() if p is protocol]:
            del self._routes[cid]
        for key in [k for k, p in self._outbound.items() if p is protocol]:
            del self._outbound[key]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is None:
            return
        address: Address = (str(addr[0]), int(addr[1]))
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._server_config.connection_id_length
            )
        except ValueError:
            return  # not QUIC: drop silently
        protocol = self._routes.get(header.destination_cid)
        if protocol is not None:
            protocol.datagram_received(data, address)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION or header.version is None:
            return
        if header.version not in self._server_config.supported_versions:
            # Never answer a version negotiation with another (reflection loops).
            self._transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._server_config.supported_versions,
                ),
                address,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < _SMALLEST_INITIAL:
            return
        quic = IdentityQuicConnection(
            configuration=self._server_config,
            original_destination_connection_id=header.destination_cid,
        )
        protocol = self._adopt(quic, address)
        self._routes[header.destination_cid] = protocol
        protocol.datagram_received(data, address)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) are advisory in QUIC; the call deadline decides.
        log.debug("datagram error: %s", type(exc).__name__)
