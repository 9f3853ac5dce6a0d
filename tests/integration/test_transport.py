"""Real QUIC on loopback: mutual identity authentication and the one-stream-per-call RPC."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from node.core import wire
from node.core.errors import ErrorCode, PeerIdentityError, PeerUnreachableError
from node.core.framing import PREFIX, encode_frame
from node.core.identity import Identity
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint, EndpointConfig
from node.transport.tls import ALPN
from tests.conftest import LOOPBACK, running_endpoint
from tests.runtime_support import Runtimes


class Recorder:
    """A handler that answers FetchKeyPackage with the caller's proven key."""

    def __init__(self) -> None:
        self.callers: list[Caller] = []
        self.arrived = asyncio.Condition()

    async def wait_for_calls(self, count: int) -> None:
        async with asyncio.timeout(10), self.arrived:
            await self.arrived.wait_for(lambda: len(self.callers) >= count)

    async def __call__(self, caller: Caller, request: wire.Request) -> wire.Response:
        self.callers.append(caller)
        async with self.arrived:
            self.arrived.notify_all()
        if isinstance(request, wire.FetchKeyPackage) and request.identity == b"boom":
            raise RuntimeError("secret internal detail")
        if isinstance(request, wire.FetchKeyPackage) and request.identity == b"slow":
            await asyncio.sleep(30)
        return wire.FetchKeyPackageResult(caller.identity)


async def test_both_ends_learn_the_proven_key_of_the_other() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    seen_by_alice, seen_by_bob = Recorder(), Recorder()
    async with (
        running_endpoint(alice, seen_by_alice) as ea,
        running_endpoint(bob, seen_by_bob) as eb,
    ):
        to_bob = await ea.dial(eb.local_address, bob.public_key)
        answer = await to_bob.call(wire.FetchKeyPackage(b"x"))
        assert answer == wire.FetchKeyPackageResult(alice.public_key)
        # The same socket serves and dials: bob reaches alice at the address she called from.
        assert seen_by_bob.callers[0].address == ea.local_address
        to_alice = await eb.dial(seen_by_bob.callers[0].address, alice.public_key)
        assert await to_alice.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(
            bob.public_key
        )


async def test_dialing_a_known_peer_that_presents_another_key_fails() -> None:
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    handler = Recorder()
    async with running_endpoint(alice, None) as ea, running_endpoint(mallory, handler) as em:
        with pytest.raises(PeerIdentityError, match="not the expected identity"):
            await ea.dial(em.local_address, bob.public_key)
        assert handler.callers == []


class _BareClient(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.terminated: events.ConnectionTerminated | None = None
        self.responses: list[bytes] = []

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, events.StreamDataReceived):
            self.responses.append(event.data)


async def test_a_client_without_a_certificate_is_refused_and_never_served() -> None:
    server = Identity.generate()
    handler = Recorder()
    async with running_endpoint(server, handler) as endpoint:
        config = QuicConfiguration(alpn_protocols=[ALPN], is_client=True, verify_mode=ssl.CERT_NONE)
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            lambda: _BareClient(QuicConnection(configuration=config)), local_addr=(LOOPBACK, 0)
        )
        try:
            client.connect(endpoint.local_address)
            # Send a call right away, as an impatient client would.
            stream = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(
                stream, encode_frame(wire.encode_request(wire.FetchKeyPackage(b"x"))), True
            )
            client.transmit()
            async with asyncio.timeout(10):
                await client.wait_closed()
        finally:
            transport.close()
    assert client.terminated is not None
    assert client.terminated.error_code == 0x100 + 116  # TLS alert certificate_required
    assert handler.callers == []
    assert client.responses == []


async def test_oversized_frame_gets_an_error_code_and_the_connection_stays_usable() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    small = EndpointConfig(max_frame=4096)
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, Recorder(), small) as eb:
        conn = await ea.dial(eb.local_address, bob.public_key)
        huge = PREFIX.pack(100_000) + b"\0" * 100_000
        raw = await conn._exchange(huge)
        answer = wire.decode_response(raw)
        assert isinstance(answer, wire.ErrorResult)
        assert answer.code is ErrorCode.FRAME_TOO_LARGE
        assert await conn.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(
            alice.public_key
        )


async def test_malformed_frame_gets_an_error_code_and_the_connection_stays_usable() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, Recorder()) as eb:
        conn = await ea.dial(eb.local_address, bob.public_key)
        for garbage in (encode_frame(b"\xff" * 64), encode_frame(b"\x01\x02\x03")[:-1], b"\x00"):
            answer = wire.decode_response(await conn._exchange(garbage))
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.MALFORMED_REQUEST
        assert isinstance(await conn.call(wire.FetchKeyPackage(b"x")), wire.FetchKeyPackageResult)


async def test_a_failing_handler_answers_internal_without_details() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, Recorder()) as eb:
        conn = await ea.dial(eb.local_address, bob.public_key)
        answer = await conn.call(wire.FetchKeyPackage(b"boom"))
        assert answer == wire.ErrorResult(ErrorCode.INTERNAL, "internal error")


async def test_a_call_past_its_deadline_fails_and_the_next_call_works() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, Recorder()) as eb:
        conn = await ea.dial(eb.local_address, bob.public_key)
        with pytest.raises(PeerUnreachableError, match="no answer within"):
            await conn.call(wire.FetchKeyPackage(b"slow"), deadline=0.3)
        assert isinstance(await conn.call(wire.FetchKeyPackage(b"x")), wire.FetchKeyPackageResult)


async def test_dialing_a_silent_address_fails_within_the_deadline() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
        silent = eb.local_address
        eb.abort()
        with pytest.raises(PeerUnreachableError):
            await ea.dial(silent, bob.public_key, deadline=0.5)


async def test_too_many_concurrent_calls_are_refused_not_queued() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    limited = EndpointConfig(max_concurrent_calls=2)
    handler = Recorder()
    async with (
        running_endpoint(alice, None) as ea,
        running_endpoint(bob, handler, limited) as eb,
    ):
        conn = await ea.dial(eb.local_address, bob.public_key)
        slow = [
            asyncio.ensure_future(conn.call(wire.FetchKeyPackage(b"slow"), 5)) for _ in range(2)
        ]
        await handler.wait_for_calls(2)
        answer = await conn.call(wire.FetchKeyPackage(b"x"), deadline=5)
        for task in slow:
            task.cancel()
        assert answer == wire.ErrorResult(ErrorCode.BUSY, "too many calls in flight")


async def test_endpoints_talk_over_ipv6_loopback(runtimes: Runtimes) -> None:
    import socket

    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    alice, bob = Identity.generate(), Identity.generate()
    ea, eb = Endpoint(alice, None, runtimes()), Endpoint(bob, Recorder(), runtimes())
    await ea.start("::1", 0)
    await eb.start("::1", 0)
    try:
        conn = await ea.dial(eb.local_address, bob.public_key)
        assert await conn.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(
            alice.public_key
        )
    finally:
        await ea.close()
        await eb.close()


async def test_a_peer_that_restarted_and_called_is_reached_at_once_not_after_a_timeout() -> None:
    """bob dies without a word and comes back on the same port; once he has called alice,
    her next call to him goes over the connection he proved, not the dead cached one."""
    alice, bob = Identity.generate(), Identity.generate()
    seen_by_bob = Recorder()
    async with running_endpoint(alice, Recorder()) as ea:
        async with running_endpoint(bob, seen_by_bob) as first_bob:
            address = first_bob.local_address
            to_bob = await ea.dial(address, bob.public_key)
            assert await to_bob.call(wire.FetchKeyPackage(b"x"))
            first_bob.abort()
            # The transport releases its socket in the loop's next round of callbacks.
            await asyncio.sleep(0)
        async with running_endpoint(bob, seen_by_bob, port=address[1]) as second_bob:
            to_alice = await second_bob.dial(ea.local_address, alice.public_key)
            assert await to_alice.call(wire.FetchKeyPackage(b"x"))
            again = await ea.dial(address, bob.public_key, deadline=1.0)
            answer = await again.call(wire.FetchKeyPackage(b"x"), 1.0)
            assert answer == wire.FetchKeyPackageResult(alice.public_key)


@pytest.mark.parametrize("answer_after", [0.0, 0.005])
async def test_a_call_costs_one_datagram_each_way(answer_after: float) -> None:
    # The ACK of a request rides in its answer, even one that takes longer than aioquic's
    # 1 ms ACK delay (a store write), and the ACK of the answer in the next request: no
    # packet of its own (before: up to two datagrams each way per call).
    calls = 30
    received: dict[str, int] = {"caller": 0, "callee": 0}

    async def slow_enough(caller: Caller, request: wire.Request) -> wire.Response:
        if answer_after:
            await asyncio.sleep(answer_after)
        return wire.FetchKeyPackageResult(caller.identity)

    def counted(endpoint: Endpoint, side: str) -> None:
        deliver = endpoint.datagram_received

        def counting(data: bytes, addr: tuple[str, int]) -> None:
            received[side] += 1
            deliver(data, addr)

        endpoint.datagram_received = counting  # type: ignore[method-assign]

    alice, bob = Identity.generate(), Identity.generate()
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, slow_enough) as eb:
        conn = await ea.dial(eb.local_address, bob.public_key)
        for _ in range(3):  # past the handshake's own packets
            await conn.call(wire.FetchKeyPackage(b"x"))
        counted(ea, "caller")
        counted(eb, "callee")
        for _ in range(calls):
            assert await conn.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(
                alice.public_key
            )
    assert received["callee"] <= 1.2 * calls
    assert received["caller"] <= 1.2 * calls
