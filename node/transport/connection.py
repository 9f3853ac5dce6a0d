"""One authenticated QUIC connection carrying RPC calls, one bidirectional stream per call.

Either side may call the other: a stream opened by the peer carries a request to us, a stream we
opened carries the peer's response. Every stream is finished or reset; no request is served
before the peer's identity key has been proven in the handshake (``node.transport.tls``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events

from node.core import wire
from node.core.addresses import Address
from node.core.errors import (
    ErrorCode,
    LocalProtocolError,
    PeerUnreachableError,
    RemoteProtocolError,
)
from node.core.framing import FrameReader, FrameTooLargeError, encode_frame
from node.transport.tls import IdentityQuicConnection

log = logging.getLogger(__name__)

# Application error codes for RESET_STREAM / STOP_SENDING / CONNECTION_CLOSE.
APP_CANCELLED = 0x1
APP_FRAME_TOO_LARGE = 0x2
APP_UNAUTHENTICATED = 0x3
APP_BUSY = 0x4
APP_TIMEOUT = 0x5  # a request frame did not arrive within the read deadline
APP_STALLED = 0x6  # connection close: the peer kept a refused stream open past the deadline
APP_REFUSED = 0x7  # connection close: too many connections for this identity


@dataclass
class StreamBudget:
    """Request streams and request bytes held by all connections of one endpoint.

    A request stream holds a slot from its first byte until its answer is sent; once its length
    prefix has arrived it also holds the announced frame size, reserved before the body is
    buffered, so the bytes held never exceed ``max_bytes`` whatever peers announce.
    """

    max_streams: int
    max_bytes: int
    streams: int = 0
    bytes: int = 0
    counters: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the identity key proven in the handshake and the UDP address it used."""

    identity: bytes
    address: Address


RequestHandler = Callable[[Caller, wire.Request], Awaitable[wire.Response]]


class PeerConnection(QuicConnectionProtocol):
    """RPC over one QUIC connection. ``peer_key`` is the proven identity of the other side."""

    _quic: IdentityQuicConnection

    def __init__(
        self,
        quic: IdentityQuicConnection,
        handler: RequestHandler | None,
        remote: Address,
        *,
        max_frame: int,
        call_deadline: float,
        max_concurrent: int,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        budget: StreamBudget | None = None,
        max_buffered: int | None = None,
        read_timeout: float | None = None,
    ) -> None:
        super().__init__(quic)
        self._budget = budget or StreamBudget(max_streams=1 << 30, max_bytes=1 << 62)
        self._counters = self._budget.counters
        # Request bytes this connection may hold at once (announced frames being read or served).
        self._max_buffered = max_buffered if max_buffered is not None else 1 << 62
        self._read_timeout = read_timeout if read_timeout is not None else call_deadline
        self._buffered = 0
        # Request streams holding a slot: stream id -> bytes reserved for its frame.
        self._slots: dict[int, int] = {}
        self._read_timers: dict[int, asyncio.TimerHandle] = {}
        # Called once the handshake has proven the peer; False closes the connection.
        self.admit: Callable[[PeerConnection], bool] | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._gaps: frozenset[tuple[int, int]] = frozenset()
        self._spawn = spawn
        self._handler = handler
        self.remote = remote
        self._max_frame = max_frame
        self._call_deadline = call_deadline
        self._max_concurrent = max_concurrent
        self._readers: dict[int, FrameReader] = {}
        self._ignored: set[int] = set()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._serving_ids: dict[asyncio.Task[None], int] = {}
        self._handshake_done = asyncio.Event()
        # Set once the handshake has proven the peer, or the connection is gone.
        self._settled = asyncio.Event()
        self._terminated: str | None = None
        self.close_code: int | None = None
        self._detached = False

    # --- state ---------------------------------------------------------------------------

    @property
    def peer_key(self) -> bytes | None:
        return self._quic.verified_peer_key if self._handshake_done.is_set() else None

    @property
    def is_open(self) -> bool:
        return self._terminated is None

    async def wait_ready(self) -> bytes:
        """Wait for the handshake; return the peer's proven identity key."""
        if self._terminated is not None:
            raise PeerUnreachableError(self._terminated)
        await self._settled.wait()
        key = self.peer_key
        if key is None:
            raise PeerUnreachableError(self._terminated or "handshake failed")
        return key

    def detach(self, why: str) -> None:
        """Stop for good without sending anything: the socket under us is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transmit_task = None
        self._on_terminated(why, None)
        self._closed.set()

    def transmit(self) -> None:
        if self._detached:
            return
        super().transmit()

    # --- calls we make ----------------------------------------------------------------------

    async def call(self, request: wire.Request, deadline: float | None = None) -> wire.Response:
        """Send one request and wait for its response, at most ``deadline`` seconds."""
        body = wire.encode_request(request)
        try:
            frame = encode_frame(body, self._max_frame)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from exc
        deadline = self._call_deadline if deadline is None else deadline
        try:
            async with asyncio.timeout(deadline):
                raw = await self._exchange(frame)
        except TimeoutError as exc:
            raise PeerUnreachableError(f"no answer within {deadline:g} s") from exc
        return wire.decode_response(raw)

    async def _exchange(self, frame: bytes) -> bytes:
        await self.wait_ready()
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[stream_id] = future
        self._readers[stream_id] = FrameReader(self._max_frame)
        self._quic.send_stream_data(stream_id, frame, end_stream=True)
        self._quic.ack_with_next_packet(self._loop.time())
        self.transmit()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(stream_id)
            raise

    def _abandon(self, stream_id: int) -> None:
        self._pending.pop(stream_id, None)
        self._readers.pop(stream_id, None)
        if self._terminated is None:
            try:
                self._quic.reset_stream(stream_id, APP_CANCELLED)
                self._quic.stop_stream(stream_id, APP_CANCELLED)
            except (ValueError, AssertionError):
                pass  # stream already finished in that direction
            self.transmit()

    # --- events ---------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if self._quic.verified_peer_key is None:
                self.close(error_code=APP_UNAUTHENTICATED, reason_phrase="unauthenticated")
                return
            if self.admit is not None and not self.admit(self):
                self.close(error_code=APP_REFUSED, reason_phrase="too many connections")
                return
            self._handshake_done.set()
            self._settled.set()
            self._gap_timer = self._loop.call_later(self._read_timeout, self._check_gaps)
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            self._on_stream_gone(event.stream_id, "peer reset the stream")
        elif isinstance(event, events.ConnectionTerminated):
            why = event.reason_phrase or f"connection closed (0x{event.error_code:x})"
            self._on_terminated(why, event.error_code)

    def _check_gaps(self) -> None:
        """Close the connection if stream data has waited behind the same gaps for a whole
        read deadline: lost packets are resent within round trips, so a gap that stays is a
        peer parking data in aioquic's buffers, where no budget sees it."""
        self._gap_timer = None
        if self._terminated is not None:
            return
        gaps = self._quic.gaps()
        if gaps and gaps & self._gaps:
            self._counters["connection_closed_stalled"] += 1
            self.close(error_code=APP_STALLED, reason_phrase="stalled streams")
            return
        self._gaps = gaps
        self._gap_timer = self._loop.call_later(self._read_timeout, self._check_gaps)

    def _on_terminated(self, why: str, code: int | None) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        if code is None:
            self._detached = True
        else:
            self.close_code = code
        if self._terminated is None:
            self._terminated = why
        self._settled.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(PeerUnreachableError(why))
        self._pending.clear()
        self._readers.clear()
        for stream_id in list(self._slots):
            self._release(stream_id)
        for task in list(self._serving_ids):  # in the order they began, never a set's
            task.cancel()

    def _is_local_stream(self, stream_id: int) -> bool:
        # RFC 9000 §2.1: bit 0 of a stream id is 0 for client-initiated streams.
        return (stream_id & 1) == (0 if self._quic.configuration.is_client else 1)

    def _on_stream_gone(self, stream_id: int, why: str) -> None:
        self._readers.pop(stream_id, None)
        self._ignored.discard(stream_id)
        if stream_id in self._slots and stream_id not in self._serving_streams():
            self._release(stream_id)
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            future.set_exception(PeerUnreachableError(why))

    def _on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id in self._ignored:
            if end_stream:
                self._ignored.discard(stream_id)
            return
        local = self._is_local_stream(stream_id)
        reader = self._readers.get(stream_id)
        if reader is None:
            if local:
                return  # a response to a call we abandoned
            if not self._accept_request_stream(stream_id, end_stream):
                return
            reader = self._readers[stream_id] = FrameReader(self._max_frame)
        try:
            reader.feed(data)
            if not local and not self._reserve(stream_id, reader, end_stream):
                return
            body = reader.finish() if end_stream else None
        except RemoteProtocolError as exc:
            self._readers.pop(stream_id, None)
            if local:
                self._fail_call(stream_id, exc)
            else:
                self._refuse(stream_id, exc, ignore_rest=not end_stream)
                self._release(stream_id)
            return
        if body is None:
            return
        del self._readers[stream_id]
        if local:
            future = self._pending.pop(stream_id, None)
            if future is not None and not future.done():
                future.set_result(body)
        else:
            timer = self._read_timers.pop(stream_id, None)
            if timer is not None:
                timer.cancel()
            task = self._spawn(self._serve(stream_id, body))
            self._serving_ids[task] = stream_id
            self._serving.add(task)
            task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._serving.discard(task)
        stream_id = self._serving_ids.pop(task, None)
        if stream_id is not None:
            self._release(stream_id)

    def _serving_streams(self) -> set[int]:
        return set(self._serving_ids.values())

    # --- budgets ----------------------------------------------------------------------------

    def _reserve(self, stream_id: int, reader: FrameReader, end_stream: bool) -> bool:
        """Reserve the announced frame size once the prefix is in; refuse the stream (busy)
        when this connection or the endpoint cannot hold it. False if refused."""
        announced = reader.announced
        if announced is None or self._slots.get(stream_id, 0) > 0:
            return True
        need = announced + 4
        budget = self._budget
        if self._buffered + need > self._max_buffered:
            trigger = "stream_refused_connection_bytes"
        elif budget.bytes + need > budget.max_bytes:
            trigger = "stream_refused_total_bytes"
        else:
            self._slots[stream_id] = need
            self._buffered += need
            budget.bytes += need
            return True
        self._readers.pop(stream_id, None)
        self._busy(stream_id, trigger, "out of buffer space", ignore_rest=not end_stream)
        self._release(stream_id)
        return False

    def _release(self, stream_id: int) -> None:
        held = self._slots.pop(stream_id, None)
        timer = self._read_timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()
        if held is None:
            return
        self._budget.streams -= 1
        self._budget.bytes -= held
        self._buffered -= held

    def _busy(self, stream_id: int, trigger: str, why: str, *, ignore_rest: bool = True) -> None:
        self._counters[trigger] += 1
        log.info("refused a call", extra={"trigger": trigger, "peer_stream": stream_id})
        self._respond(stream_id, wire.ErrorResult(ErrorCode.BUSY, why))
        if ignore_rest:
            self._quic.stop_stream(stream_id, APP_BUSY)
            self._ignore(stream_id)

    def _ignore(self, stream_id: int) -> None:
        """Drop the rest of a refused stream unread. A peer that keeps it open (no FIN, no
        reset) a read deadline later loses its connection: open streams are a budget too."""
        self._ignored.add(stream_id)
        self._loop.call_later(self._read_timeout, self._check_lingering, stream_id)

    def _check_lingering(self, stream_id: int) -> None:
        if stream_id not in self._ignored or self._terminated is not None:
            return
        stream = self._quic._streams.get(stream_id)
        if stream is None or stream.receiver.is_finished:
            self._ignored.discard(stream_id)  # the peer finished or reset it after all
            return
        self._counters["connection_closed_stalled"] += 1
        self.close(error_code=APP_STALLED, reason_phrase="stalled streams")

    def _read_expired(self, stream_id: int) -> None:
        self._read_timers.pop(stream_id, None)
        if self._readers.pop(stream_id, None) is None or self._terminated is not None:
            return
        self._counters["stream_read_timeout"] += 1
        log.info("refused a call", extra={"trigger": "read_timeout", "peer_stream": stream_id})
        self._respond(
            stream_id, wire.ErrorResult(ErrorCode.TIMEOUT, "request not received in time")
        )
        self._quic.stop_stream(stream_id, APP_TIMEOUT)
        self._ignore(stream_id)
        self._release(stream_id)
        self.transmit()

    def _accept_request_stream(self, stream_id: int, end_stream: bool) -> bool:
        if self._handler is None or self.peer_key is None:
            self._quic.stop_stream(stream_id, APP_UNAUTHENTICATED)
            self._quic.reset_stream(stream_id, APP_UNAUTHENTICATED)
            if not end_stream:
                self._ignore(stream_id)
            return False
        if len(self._slots) >= self._max_concurrent:
            self._busy(
                stream_id,
                "stream_refused_connection_calls",
                "too many calls in flight",
                ignore_rest=not end_stream,
            )
            return False
        if self._budget.streams >= self._budget.max_streams:
            self._busy(
                stream_id,
                "stream_refused_total_calls",
                "too many calls in flight",
                ignore_rest=not end_stream,
            )
            return False
        self._slots[stream_id] = 0
        self._budget.streams += 1
        self._read_timers[stream_id] = self._loop.call_later(
            self._read_timeout, self._read_expired, stream_id
        )
        return True

    def _fail_call(self, stream_id: int, exc: Exception) -> None:
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            future.set_exception(exc)
        self._quic.stop_stream(stream_id, APP_FRAME_TOO_LARGE)

    def _refuse(self, stream_id: int, exc: RemoteProtocolError, *, ignore_rest: bool) -> None:
        code = (
            ErrorCode.FRAME_TOO_LARGE
            if isinstance(exc, FrameTooLargeError)
            else ErrorCode.MALFORMED_REQUEST
        )
        self._counters[code.name.lower()] += 1
        log.info("refused a call", extra={"trigger": code.name, "peer_stream": stream_id})
        self._respond(stream_id, wire.ErrorResult(code, str(exc)))
        if ignore_rest:
            # Tell the peer to stop sending; whatever is already in flight is dropped unbuffered.
            self._quic.stop_stream(stream_id, APP_FRAME_TOO_LARGE)
            self._ignore(stream_id)

    def _respond(self, stream_id: int, response: wire.Response) -> None:
        if self._terminated is not None:
            return
        body = wire.encode_response(response)
        try:
            try:
                frame = encode_frame(body, self._max_frame)
            except ValueError:
                # Our own response outgrew the frame limit: say so instead of sending it.
                error = wire.ErrorResult(ErrorCode.LIMIT_EXCEEDED, "response too large")
                frame = encode_frame(wire.encode_response(error))
            self._quic.send_stream_data(stream_id, frame, True)
            self._quic.ack_with_next_packet(self._loop.time())
        except (RuntimeError, ValueError):
            # aioquic refuses data on a stream the peer reset meanwhile (it gave up waiting),
            # or one it no longer knows: nobody is left to answer.
            log.debug("no answer sent: the caller reset stream %d", stream_id)
            return
        self.transmit()

    async def _serve(self, stream_id: int, body: bytes) -> None:
        peer = self.peer_key
        assert peer is not None
        assert self._handler is not None
        response: wire.Response
        try:
            request = wire.decode_request(body)
        except wire.UnknownMethodError as exc:
            self._counters["unknown_method"] += 1
            response = wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, str(exc))
        except RemoteProtocolError as exc:
            self._counters["malformed_request"] += 1
            response = wire.ErrorResult(ErrorCode.MALFORMED_REQUEST, str(exc))
        else:
            try:
                async with asyncio.timeout(self._call_deadline):
                    response = await self._handler(Caller(peer, self.remote), request)
            except TimeoutError:
                response = wire.ErrorResult(ErrorCode.TIMEOUT, "call took too long")
            except Exception:
                # Never send a traceback: the log keeps it for the operator, the peer gets a code.
                log.exception("request handler failed")
                response = wire.ErrorResult(ErrorCode.INTERNAL, "internal error")
        self._respond(stream_id, response)
