"""One authenticated QUIC connection carrying RPC calls, one bidirectional stream per call.

Either side may call the other: a stream opened by the peer carries a request to us, a stream we
opened carries the peer's response. Every stream is finished or reset; no request is served
before the peer's identity key has been proven in the handshake (``node.transport.tls``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
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
    ) -> None:
        super().__init__(quic)
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
            self._handshake_done.set()
            self._settled.set()
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            self._on_stream_gone(event.stream_id, "peer reset the stream")
        elif isinstance(event, events.ConnectionTerminated):
            why = event.reason_phrase or f"connection closed (0x{event.error_code:x})"
            self._on_terminated(why, event.error_code)

    def _on_terminated(self, why: str, code: int | None) -> None:
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
        for task in self._serving:
            task.cancel()

    def _is_local_stream(self, stream_id: int) -> bool:
        # RFC 9000 §2.1: bit 0 of a stream id is 0 for client-initiated streams.
        return (stream_id & 1) == (0 if self._quic.configuration.is_client else 1)

    def _on_stream_gone(self, stream_id: int, why: str) -> None:
        self._readers.pop(stream_id, None)
        self._ignored.discard(stream_id)
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
            if not self._accept_request_stream(stream_id):
                return
            reader = self._readers[stream_id] = FrameReader(self._max_frame)
        try:
            reader.feed(data)
            body = reader.finish() if end_stream else None
        except RemoteProtocolError as exc:
            self._readers.pop(stream_id, None)
            if local:
                self._fail_call(stream_id, exc)
            else:
                self._refuse(stream_id, exc, ignore_rest=not end_stream)
            return
        if body is None:
            return
        del self._readers[stream_id]
        if local:
            future = self._pending.pop(stream_id, None)
            if future is not None and not future.done():
                future.set_result(body)
        else:
            task = self._spawn(self._serve(stream_id, body))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    def _accept_request_stream(self, stream_id: int) -> bool:
        if self._handler is None or self.peer_key is None:
            self._quic.stop_stream(stream_id, APP_UNAUTHENTICATED)
            self._quic.reset_stream(stream_id, APP_UNAUTHENTICATED)
            self._ignored.add(stream_id)
            return False
        if len(self._serving) + len(self._readers) >= self._max_concurrent:
            self._respond(
                stream_id, wire.ErrorResult(ErrorCode.LIMIT_EXCEEDED, "too many calls in flight")
            )
            self._quic.stop_stream(stream_id, APP_BUSY)
            self._ignored.add(stream_id)
            return False
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
        log.info("refused a call", extra={"trigger": code.name, "peer_stream": stream_id})
        self._respond(stream_id, wire.ErrorResult(code, str(exc)))
        if ignore_rest:
            # Tell the peer to stop sending; whatever is already in flight is dropped unbuffered.
            self._quic.stop_stream(stream_id, APP_FRAME_TOO_LARGE)
            self._ignored.add(stream_id)

    def _respond(self, stream_id: int, response: wire.Response) -> None:
        if self._terminated is not None:
            return
        body = wire.encode_response(response)
        try:
            self._quic.send_stream_data(stream_id, encode_frame(body, self._max_frame), True)
        except ValueError:
            # Our own response outgrew the frame limit: say so instead of sending it.
            error = wire.ErrorResult(ErrorCode.LIMIT_EXCEEDED, "response too large")
            body = wire.encode_response(error)
            self._quic.send_stream_data(stream_id, encode_frame(body), True)
        self.transmit()

    async def _serve(self, stream_id: int, body: bytes) -> None:
        peer = self.peer_key
        assert peer is not None
        assert self._handler is not None
        response: wire.Response
        try:
            request = wire.decode_request(body)
        except wire.UnknownMethodError as exc:
            response = wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, str(exc))
        except RemoteProtocolError as exc:
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
