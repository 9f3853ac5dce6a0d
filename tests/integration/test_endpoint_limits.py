"""Real UDP on loopback: what the endpoint does for strangers before and after their handshake.

Address validation (Retry) before any connection state, caps on half-open and established
connections, and budgets for request streams and the bytes they hold. Each test counts the
endpoint's connection objects and buffered bytes (``Endpoint.gauges``), never RSS.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from node.core import wire
from node.core.errors import ErrorCode, PeerUnreachableError
from node.core.framing import PREFIX, FrameReader
from node.core.identity import Identity
from node.transport.connection import Caller, PeerConnection
from node.transport.endpoint import Endpoint, EndpointConfig
from tests.conftest import LOOPBACK, running_endpoint

QUIC_V1 = 1


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition the endpoint reaches by itself (datagrams are asynchronous)."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


def initial(dcid: bytes, scid: bytes, token: bytes = b"", size: int = 1200) -> bytes:
    """A well-formed QUIC v1 Initial header around random bytes, padded to ``size``."""
    head = Buffer(capacity=64 + len(token))
    head.push_uint8(0xC3)  # long header, fixed bit, type Initial, 4-byte packet number
    head.push_uint32(QUIC_V1)
    head.push_uint8(len(dcid))
    head.push_bytes(dcid)
    head.push_uint8(len(scid))
    head.push_bytes(scid)
    head.push_uint_var(len(token))
    head.push_bytes(token)
    rest = size - head.tell() - 2
    head.push_uint16(0x4000 | rest)  # two-byte varint length
    return head.data + os.urandom(rest)


@pytest.fixture
def raw_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def receive(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5.0):
        return await loop.sock_recv(sock, 2048)


async def retry_token(sock: socket.socket, server: tuple[str, int]) -> tuple[bytes, bytes]:
    """Ask for a Retry as a client would: (token, the connection ID to send to next)."""
    sock.sendto(initial(os.urandom(8), os.urandom(8)), server)
    header = pull_quic_header(Buffer(data=await receive(sock)), host_cid_length=8)
    assert header.packet_type == QuicPacketType.RETRY
    return header.token, header.source_cid


RETRY = EndpointConfig(retry=True)


async def test_garbage_initials_get_a_stateless_retry_and_make_no_connection(
    raw_socket: socket.socket,
) -> None:
    async with running_endpoint(Identity.generate(), None, RETRY) as endpoint:
        for burst in range(1, 11):  # in bursts that fit the socket's receive buffer
            for _ in range(20):
                raw_socket.sendto(initial(os.urandom(8), os.urandom(8)), endpoint.local_address)
            await until(lambda n=20 * burst: endpoint.counters["retry_sent"] == n)  # type: ignore[misc]
        assert endpoint.gauges()["connections_inbound"] == 0
        assert endpoint._routes == {}
        header = pull_quic_header(Buffer(data=await receive(raw_socket)), host_cid_length=8)
        assert header.packet_type == QuicPacketType.RETRY


async def test_without_retry_every_garbage_initial_makes_a_connection(
    raw_socket: socket.socket,
) -> None:
    """The control for the test above: what the flood costs when validation is off."""
    async with running_endpoint(Identity.generate(), None, EndpointConfig()) as endpoint:
        for _ in range(20):
            raw_socket.sendto(initial(os.urandom(8), os.urandom(8)), endpoint.local_address)
        await until(lambda: endpoint.gauges()["connections_inbound"] == 20)
        assert endpoint.counters["retry_sent"] == 0


async def test_forged_foreign_and_expired_tokens_make_no_connection(
    raw_socket: socket.socket,
) -> None:
    config = EndpointConfig(retry=True, retry_token_lifetime=0.05)
    async with running_endpoint(Identity.generate(), None, config) as endpoint:
        server = endpoint.local_address
        # Forged: random bytes where the token goes.
        for _ in range(20):
            raw_socket.sendto(initial(os.urandom(8), os.urandom(8), os.urandom(40)), server)
        # Foreign: a genuine token replayed from another address.
        token, dcid = await retry_token(raw_socket, server)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind((LOOPBACK, 0))
        try:
            other.sendto(initial(dcid, os.urandom(8), token), server)
        finally:
            other.close()
        # Sent to another connection ID than the Retry named.
        raw_socket.sendto(initial(os.urandom(8), os.urandom(8), token), server)
        # Expired: a genuine token used after its lifetime.
        token, dcid = await retry_token(raw_socket, server)
        await asyncio.sleep(0.1)
        raw_socket.sendto(initial(dcid, os.urandom(8), token), server)
        await until(lambda: endpoint.counters["retry_token_invalid"] == 23)
        assert endpoint.gauges()["connections_inbound"] == 0


async def test_a_real_client_follows_the_retry_and_is_served() -> None:
    alice, bob = Identity.generate(), Identity.generate()

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    async with (
        running_endpoint(alice, None) as ea,
        running_endpoint(bob, answer, RETRY) as eb,
    ):
        conn = await ea.dial(eb.local_address, bob.public_key)
        assert await conn.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(b"ok")
        assert eb.counters["retry_sent"] == 1
        assert eb.counters["connections_accepted"] == 1
        assert eb.counters["retry_token_invalid"] == 0


async def test_half_open_connections_are_capped_and_expire(raw_socket: socket.socket) -> None:
    config = EndpointConfig(retry=True, max_half_open=2, handshake_timeout=0.5)
    bob = Identity.generate()
    async with running_endpoint(bob, None, config) as endpoint:
        server = endpoint.local_address
        # Validated addresses (tokens are genuine) that never finish a handshake.
        for _ in range(5):
            token, dcid = await retry_token(raw_socket, server)
            raw_socket.sendto(initial(dcid, os.urandom(8), token), server)
        await until(lambda: endpoint.counters["initial_refused_half_open"] == 3)
        assert endpoint.gauges()["connections_half_open"] == 2
        assert endpoint.gauges()["connections_inbound"] == 2
        # The handshake deadline frees them, and an honest client gets in again.
        await until(lambda: endpoint.gauges()["connections_inbound"] == 0)
        assert endpoint.counters["handshake_timeout"] == 2
        async with running_endpoint(Identity.generate(), None) as client:
            conn = await client.dial(server, bob.public_key)
            assert conn.is_open


async def test_connections_per_host_and_per_identity_are_capped() -> None:
    bob = Identity.generate()
    per_host = EndpointConfig(max_connections_per_host=1)
    async with running_endpoint(bob, None, per_host) as eb:
        async with running_endpoint(Identity.generate(), None) as first:
            await first.dial(eb.local_address, bob.public_key)
            async with running_endpoint(Identity.generate(), None) as second:
                with pytest.raises(PeerUnreachableError):
                    await second.dial(eb.local_address, bob.public_key, deadline=1.0)
        assert eb.counters["initial_refused_host"] >= 1

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    alice = Identity.generate()
    per_identity = EndpointConfig(max_connections_per_identity=1)
    async with running_endpoint(bob, answer, per_identity) as eb:
        async with running_endpoint(alice, None) as first, running_endpoint(alice, None) as again:
            kept = await first.dial(eb.local_address, bob.public_key)
            # The second connection of the same key completes its handshake, then is closed.
            refused = await again.dial(eb.local_address, bob.public_key)
            with pytest.raises(PeerUnreachableError):
                await refused.call(wire.FetchKeyPackage(b"x"), deadline=2.0)
            assert refused.close_code == 0x7
            assert await kept.call(wire.FetchKeyPackage(b"x")) == wire.FetchKeyPackageResult(b"ok")
        assert eb.counters["connection_refused_identity"] == 1


def unfinished_call(conn: PeerConnection, announced: int, sent: int) -> asyncio.Future[bytes]:
    """Open a request stream announcing a frame of ``announced`` bytes, send ``sent`` of them
    and never finish it: the shape of the unfinished-frame attack."""
    stream_id = conn._quic.get_next_available_stream_id()
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn._pending[stream_id] = future
    conn._readers[stream_id] = FrameReader(conn._max_frame)
    conn._quic.send_stream_data(stream_id, PREFIX.pack(announced) + b"\0" * sent, False)
    conn.transmit()
    return future


MIB = 1 << 20


async def test_unfinished_frames_hold_at_most_the_buffer_budget_then_time_out() -> None:
    """Several connections, several unfinished 1 MiB frames: the endpoint reserves at most
    its budgets, answers the rest ``busy`` at once, and frees everything at the read deadline."""
    bob = Identity.generate()
    config = EndpointConfig(
        max_buffered_per_connection=3 * MIB + 64,
        max_buffered=5 * MIB + 64,
        request_read_timeout=1.5,
    )

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    async with running_endpoint(bob, answer, config) as eb:
        clients = [Identity.generate() for _ in range(3)]
        async with (
            running_endpoint(clients[0], None) as e0,
            running_endpoint(clients[1], None) as e1,
            running_endpoint(clients[2], None) as e2,
        ):
            conns = [await e.dial(eb.local_address, bob.public_key) for e in (e0, e1, e2)]
            for conn in conns:
                await conn.call(wire.FetchKeyPackage(b"x"))  # the server has judged the client
            calls = [unfinished_call(conn, MIB, 1000) for conn in conns for _ in range(4)]
            busy = 12 - 5  # 3 fit on the first connection, 2 more in the total budget
            await until(lambda: sum(c.done() for c in calls) == busy)
            gauges = eb.gauges()
            assert gauges["request_bytes_buffered"] <= config.max_buffered
            assert gauges["request_streams_open"] == 5
            answers = [wire.decode_response(c.result()) for c in calls if c.done()]
            assert {a.code for a in answers if isinstance(a, wire.ErrorResult)} == {ErrorCode.BUSY}
            refusals = (
                eb.counters["stream_refused_connection_bytes"]
                + eb.counters["stream_refused_total_bytes"]
            )
            assert refusals == busy
            # The read deadline answers the held ones `timeout` and frees their bytes.
            done = await asyncio.gather(*calls)
            timeouts = [
                a
                for a in map(wire.decode_response, done)
                if a == wire.ErrorResult(ErrorCode.TIMEOUT, "request not received in time")
            ]
            assert len(timeouts) == 5
            assert eb.counters["stream_read_timeout"] == 5
            await until(lambda: eb.gauges()["request_bytes_buffered"] == 0)
            assert eb.gauges()["request_streams_open"] == 0
            # The connections still serve whole calls.
            assert await conns[0].call(wire.FetchKeyPackage(b"x")) == (
                wire.FetchKeyPackageResult(b"ok")
            )


async def test_request_streams_are_capped_across_connections() -> None:
    bob = Identity.generate()
    config = EndpointConfig(max_open_streams=3, request_read_timeout=30)

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    async with running_endpoint(bob, answer, config) as eb:
        async with (
            running_endpoint(Identity.generate(), None) as e0,
            running_endpoint(Identity.generate(), None) as e1,
        ):
            c0 = await e0.dial(eb.local_address, bob.public_key)
            c1 = await e1.dial(eb.local_address, bob.public_key)
            await c0.call(wire.FetchKeyPackage(b"x"))
            await c1.call(wire.FetchKeyPackage(b"x"))
            held = [unfinished_call(c0, 100, 10) for _ in range(3)]
            await until(lambda: eb.gauges()["request_streams_open"] == 3)
            answer_ = await c1.call(wire.FetchKeyPackage(b"x"), deadline=5)
            assert answer_ == wire.ErrorResult(ErrorCode.BUSY, "too many calls in flight")
            assert eb.counters["stream_refused_total_calls"] == 1
            for future in held:
                future.cancel()


def test_endpoint_counters_are_one_object_when_given() -> None:
    from collections import Counter

    from node.transport.runtime import RealRuntime

    shared: Counter[str] = Counter()
    runtime = RealRuntime("qpc-test")
    try:
        endpoint = Endpoint(Identity.generate(), None, runtime, RETRY, counters=shared)
        assert endpoint.counters is shared
    finally:
        runtime.close()


async def test_data_sent_out_of_order_is_held_to_the_connection_window() -> None:
    """aioquic buffers stream data that arrives after a gap, unseen by the request budgets, and
    would double its windows as it comes. A peer that never sends the first byte of its streams
    gets no more than the connection window (``max_data``) held, however much it offers."""
    bob = Identity.generate()

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    config = EndpointConfig(request_read_timeout=1.0)
    async with (
        running_endpoint(bob, answer, config) as eb,
        running_endpoint(Identity.generate(), None) as ea,
    ):
        conn = await ea.dial(eb.local_address, bob.public_key)
        await conn.call(wire.FetchKeyPackage(b"x"))
        client = conn._quic
        offered = 0
        for _ in range(8):
            stream_id = client.get_next_available_stream_id()
            client.send_stream_data(stream_id, b"\0" * (2 * MIB), end_stream=False)
            client._streams[stream_id].sender._pending.subtract(0, 1)  # never send byte 0
            offered += 2 * MIB - 1
        conn.transmit()
        (server,) = eb._inbound
        window = server._quic._receive_window

        def settled() -> bool:
            # The client has sent all it offered, or all the server allows, and it arrived.
            blocked = client._remote_max_data_used >= client._remote_max_data
            sent_all = client._remote_max_data_used >= offered
            return (blocked or sent_all) and (
                server._quic._local_max_data.used == client._remote_max_data_used
            )

        await until(settled, within=20)
        held = server._quic.held_out_of_order()
        assert held <= window
        assert client._remote_max_data <= window + MIB  # the window did not run away
        assert eb.gauges()["stream_bytes_out_of_order"] == held
        # No stream's window grew past one frame either.
        windows = [stream.max_stream_data_local for stream in server._quic._streams.values()]
        assert max(windows) == MIB + 64
        # The gaps stay; within two read deadlines the server closes the connection.
        await until(lambda: not conn.is_open, within=5)
        assert conn.close_code == 0x6
        assert eb.counters["connection_closed_stalled"] == 1
        await until(lambda: eb.gauges()["connections_inbound"] == 0)


async def test_refused_calls_that_were_complete_do_not_count_as_stalled() -> None:
    """A call refused ``busy`` after the peer had finished sending leaves nothing open: the
    connection outlives the read deadline (it used to be closed as stalled)."""
    bob = Identity.generate()
    release = asyncio.Event()

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        await release.wait()
        return wire.FetchKeyPackageResult(b"ok")

    config = EndpointConfig(max_concurrent_calls=1, request_read_timeout=0.3)
    async with running_endpoint(bob, answer, config) as eb:
        async with running_endpoint(Identity.generate(), None) as ea:
            conn = await ea.dial(eb.local_address, bob.public_key)
            held = asyncio.ensure_future(conn.call(wire.FetchKeyPackage(b"x"), deadline=10))
            await until(lambda: eb.gauges()["request_streams_open"] == 1)
            refused = await conn.call(wire.FetchKeyPackage(b"x"), deadline=5)
            assert refused == wire.ErrorResult(ErrorCode.BUSY, "too many calls in flight")
            await asyncio.sleep(1.0)  # past three read deadlines
            assert conn.is_open
            release.set()
            assert await held == wire.FetchKeyPackageResult(b"ok")
            assert eb.counters["connection_closed_stalled"] == 0


async def test_a_peer_that_ignores_stop_sending_loses_its_connection() -> None:
    bob = Identity.generate()
    config = EndpointConfig(max_frame=4096, request_read_timeout=0.5)

    async def answer(caller: object, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    async with running_endpoint(bob, answer, config) as eb:
        async with running_endpoint(Identity.generate(), None) as ea:
            conn = await ea.dial(eb.local_address, bob.public_key)
            await conn.call(wire.FetchKeyPackage(b"x"))
            client = conn._quic
            handlers = client._QuicConnection__frame_handlers  # type: ignore[attr-defined]

            def ignore_stop_sending(context: object, frame_type: int, buf: Buffer) -> None:
                buf.pull_uint_var()  # stream id
                buf.pull_uint_var()  # error code

            handlers[0x05] = (ignore_stop_sending, handlers[0x05][1])
            refused = unfinished_call(conn, 100_000, 100)  # over the frame cap: stopped
            answer_ = wire.decode_response(await refused)
            assert isinstance(answer_, wire.ErrorResult)
            assert answer_.code is ErrorCode.FRAME_TOO_LARGE
            # The client neither finishes nor resets the stream: a read deadline later the
            # server closes the connection.
            await until(lambda: not conn.is_open)
            assert conn.close_code == 0x6
            assert eb.counters["connection_closed_stalled"] == 1


async def test_a_peer_that_restarts_again_and_again_is_not_locked_out_by_its_dead_connections() -> (
    None
):
    """Each restart leaves a connection nobody will close (a SIGKILLed node says nothing): a new
    connection from the same address and key replaces it, so the per-identity cap counts live
    connections, not corpses that wait for their idle timeout."""
    bob = Identity.generate()

    async def answer(caller: Caller, request: wire.Request) -> wire.Response:
        return wire.FetchKeyPackageResult(b"ok")

    alice = Identity.generate()
    async with running_endpoint(bob, answer, EndpointConfig(max_connections_per_identity=2)) as eb:
        port = 0
        for _ in range(5):
            async with running_endpoint(alice, None, port=port) as incarnation:
                port = incarnation.local_address[1]
                conn = await incarnation.dial(eb.local_address, bob.public_key)
                assert await conn.call(wire.FetchKeyPackage(b"x"), deadline=2.0) == (
                    wire.FetchKeyPackageResult(b"ok")
                )
                incarnation.abort()  # gone without a word
                # The transport releases its socket in the loop's next round of callbacks.
                await asyncio.sleep(0)
        assert eb.counters["connection_refused_identity"] == 0
        assert eb.counters["connection_replaced"] == 4
        assert eb.gauges()["connections_inbound"] == 1
