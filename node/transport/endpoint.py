"""One UDP socket per node that both accepts and dials QUIC connections.

Datagrams are routed by destination connection ID before anything else; all our connection IDs
have one length, so short-header packets parse without state. An Initial packet for an unknown
connection ID starts an inbound connection; anything else unknown is dropped.

With ``retry`` on (the relay), an Initial without a valid token is answered with a stateless
Retry (RFC 9000 §8.1.2) and nothing is kept; only an Initial carrying a token this endpoint
issued to that address makes a connection. Inbound connections are capped in total, per host,
while their handshake is in progress (half-open) and, once authenticated, per identity key.

The socket comes from the :class:`~node.core.runtime.Runtime` the endpoint is given, the seam
through which the simulator hands in an in-memory datagram network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.tls import AlertDescription

from node.core.addresses import Address
from node.core.errors import PeerIdentityError, PeerUnreachableError
from node.core.framing import DEFAULT_MAX_FRAME
from node.core.identity import Identity
from node.core.runtime import Runtime
from node.transport.connection import PeerConnection, RequestHandler, StreamBudget
from node.transport.retry import RetryTokens
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
    # Calls being read or served at once on one connection.
    max_concurrent_calls: int = 64
    # Address validation: answer a tokenless Initial with a stateless Retry (the relay).
    retry: bool = False
    retry_token_lifetime: float = 10.0
    # Inbound connections whose handshake has not completed, and how long one may take.
    max_half_open: int = 256
    handshake_timeout: float = 10.0
    # Inbound connections: in total, from one IP address, and per proven identity key.
    max_connections: int = 4096
    max_connections_per_host: int = 256
    max_connections_per_identity: int = 16
    # Request streams being read or served, all connections together.
    max_open_streams: int = 8192
    # Request bytes held (announced frames being read or served): per connection, in total.
    max_buffered_per_connection: int = 8 << 20
    max_buffered: int = 256 << 20
    # A request frame must arrive whole this many seconds after its first byte.
    request_read_timeout: float = 20.0


class Endpoint(asyncio.DatagramProtocol):
    """A node's QUIC endpoint: ``start``, then ``dial`` peers and serve ``handler`` to them."""

    def __init__(
        self,
        identity: Identity,
        handler: RequestHandler | None,
        runtime: Runtime,
        config: EndpointConfig | None = None,
        *,
        counters: Counter[str] | None = None,
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
        # Every refusal and validation step, by trigger name (read by the relay's metrics).
        self.counters: Counter[str] = Counter() if counters is None else counters
        cfg = self._config
        self._budget = StreamBudget(cfg.max_open_streams, cfg.max_buffered, counters=self.counters)
        self._retry = (
            RetryTokens(runtime.random_bytes(32), cfg.retry_token_lifetime) if cfg.retry else None
        )
        self._inbound: set[PeerConnection] = set()
        self._half_open: set[PeerConnection] = set()
        self._per_host: Counter[str] = Counter()
        self._per_identity: Counter[bytes] = Counter()
        self._identity_of: dict[PeerConnection, bytes] = {}
        # The latest admitted inbound connection of each (address, identity).
        self._inbound_from: dict[tuple[Address, bytes], PeerConnection] = {}

    def gauges(self) -> dict[str, int]:
        """What the endpoint holds right now: connections, streams and buffered bytes."""
        return {
            "connections_inbound": len(self._inbound),
            "connections_half_open": len(self._half_open),
            "connections_outbound": len(self._outbound),
            "request_streams_open": self._budget.streams,
            "request_bytes_buffered": self._budget.bytes,
            "stream_bytes_out_of_order": sum(p._quic.held_out_of_order() for p in self._inbound),
        }

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
        self._inbound.clear()
        self._half_open.clear()
        self._per_host.clear()
        self._per_identity.clear()
        self._identity_of.clear()
        self._inbound_from.clear()

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
            budget=self._budget,
            max_buffered=self._config.max_buffered_per_connection,
            read_timeout=self._config.request_read_timeout,
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
        if protocol in self._inbound:
            self._inbound.discard(protocol)
            self._half_open.discard(protocol)
            host = protocol.remote[0]
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]
            identity = self._identity_of.pop(protocol, None)
            if (
                identity is not None
                and self._inbound_from.get((protocol.remote, identity)) is protocol
            ):
                del self._inbound_from[(protocol.remote, identity)]
            if identity is not None:
                self._per_identity[identity] -= 1
                if self._per_identity[identity] <= 0:
                    del self._per_identity[identity]

    def _admit(self, protocol: PeerConnection) -> bool:
        """The handshake of an inbound connection proved its key: count it, or refuse it."""
        self._half_open.discard(protocol)
        key = protocol._quic.verified_peer_key
        assert key is not None
        earlier = self._inbound_from.get((protocol.remote, key))
        if earlier is not None and earlier is not protocol and earlier in self._inbound:
            # The same node (one socket per node) dialed afresh: it restarted or gave up on
            # its earlier connection, which would otherwise hold a slot until it times out.
            self.counters["connection_replaced"] += 1
            earlier.close()
            earlier.detach("replaced by a new connection from the same peer")
            self._forget(earlier)
        if self._per_identity[key] >= self._config.max_connections_per_identity:
            self.counters["connection_refused_identity"] += 1
            return False
        self._per_identity[key] += 1
        self._identity_of[protocol] = key
        self._inbound_from[(protocol.remote, key)] = protocol
        # A node calls from the socket it listens on, so this is the peer at that address
        # dialing us afresh (it restarted, or lost our connection): our calls to it go over
        # the connection it just proved, not a cached one that may be dead. The old one is
        # left to finish what it carries and to time out.
        self._outbound[(protocol.remote, key)] = protocol
        return True

    def _handshake_expired(self, protocol: PeerConnection) -> None:
        if protocol in self._half_open and protocol.is_open:
            self.counters["handshake_timeout"] += 1
            protocol.close()
            protocol.detach("no handshake in time")
            self._forget(protocol)

    def _refuse_initial(self, address: Address) -> str | None:
        """Why a validated Initial from ``address`` may not make a connection, if it may not."""
        cfg = self._config
        if len(self._half_open) >= cfg.max_half_open:
            return "initial_refused_half_open"
        if len(self._inbound) >= cfg.max_connections:
            return "initial_refused_connections"
        if self._per_host[address[0]] >= cfg.max_connections_per_host:
            return "initial_refused_host"
        return None

    def _send_retry(self, header: Any, address: Address) -> None:
        assert self._transport is not None
        assert self._retry is not None
        retry_scid = self._runtime.random_bytes(self._server_config.connection_id_length)
        token = self._retry.issue(
            address, header.destination_cid, retry_scid, self._runtime.monotonic()
        )
        self._transport.sendto(
            encode_quic_retry(
                version=header.version,
                source_cid=retry_scid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            ),
            address,
        )
        self.counters["retry_sent"] += 1

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
        original_dcid = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not header.token:
                self._send_retry(header, address)
                return
            checked = self._retry.check(
                address, header.destination_cid, header.token, self._runtime.monotonic()
            )
            if checked is None:
                # Dropped, not answered: a forged or stale token earns the sender nothing.
                self.counters["retry_token_invalid"] += 1
                return
            original_dcid, retry_scid = checked, header.destination_cid
        refusal = self._refuse_initial(address)
        if refusal is not None:
            self.counters[refusal] += 1
            return
        quic = IdentityQuicConnection(
            configuration=self._server_config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        protocol = self._adopt(quic, address)
        protocol.admit = self._admit
        self._inbound.add(protocol)
        self._half_open.add(protocol)
        self._per_host[address[0]] += 1
        self.counters["connections_accepted"] += 1
        protocol._loop.call_later(self._config.handshake_timeout, self._handshake_expired, protocol)
        self._routes[header.destination_cid] = protocol
        protocol.datagram_received(data, address)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) are advisory in QUIC; the call deadline decides.
        log.debug("datagram error: %s", type(exc).__name__)
