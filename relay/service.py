"""The relay's Delivery service: the same calls a node serves, plus a mailbox for each identity.

Pure request → response logic over a :class:`MailboxStore`; blocking store calls and the clock
come from the :class:`~node.core.runtime.Runtime` it is given, so the simulator can drive it.
"""

from __future__ import annotations

import asyncio
import hmac

from node.core import wire
from node.core.errors import ErrorCode, StorageError
from node.core.framing import DEFAULT_MAX_FRAME
from node.core.identity import mailbox_of
from node.core.runtime import Runtime
from node.transport.connection import Caller
from relay.store import MailboxFullError, MailboxStore

MAX_ENVELOPES_PER_CALL = 256
MAX_FETCH = 256
MAX_WAIT_MS = 25_000  # below the relay's call deadline, so a long poll never times out as an error


class RelayService:
    """Answers Delivery calls. ``fetch`` and ``ack`` serve only the caller's own mailbox."""

    def __init__(
        self,
        store: MailboxStore,
        runtime: Runtime,
        max_frame: int,
    ) -> None:
        self._store = store
        # Nodes accept frames of DEFAULT_MAX_FRAME at most, whatever this relay allows inbound;
        # leave room for the response's own structure around the envelopes.
        self._fetch_budget = min(max_frame, DEFAULT_MAX_FRAME) - 1024
        self._run = runtime.run_blocking
        self._clock_ms = runtime.wall_ms
        # Long polls waiting per mailbox; an arrival wakes every waiter on that mailbox, oldest
        # first (a dict keeps that order; a set's would vary from run to run).
        self._waiters: dict[bytes, dict[asyncio.Future[None], None]] = {}

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        match request:
            case wire.Deliver(envelopes):
                return await self._deliver(envelopes)
            case wire.Fetch(mailbox, cursor, limit):
                if not self._owns(caller.identity, mailbox):
                    return _unauthorized()
                return await self._fetch(mailbox, cursor, limit)
            case wire.Wait(mailbox, cursor, limit, timeout_ms):
                if not self._owns(caller.identity, mailbox):
                    return _unauthorized()
                return await self._wait(mailbox, cursor, limit, timeout_ms)
            case wire.Ack(mailbox, ids):
                if not self._owns(caller.identity, mailbox):
                    return _unauthorized()
                removed = await self._run(lambda: self._store.ack(mailbox, ids))
                return wire.AckResult(removed)
            case wire.FetchKeyPackage():
                return wire.ErrorResult(ErrorCode.NOT_FOUND, "this relay has no directory yet")
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "unknown method")

    async def _fetch(self, mailbox: bytes, cursor: int, limit: int) -> wire.FetchResult:
        limit = max(1, min(limit or MAX_FETCH, MAX_FETCH))
        budget = self._fetch_budget
        batch = await self._run(lambda: self._store.fetch(mailbox, cursor, limit, budget))
        return wire.FetchResult(batch.envelopes, batch.cursor)

    async def _wait(
        self, mailbox: bytes, cursor: int, limit: int, timeout_ms: int
    ) -> wire.FetchResult:
        # Registered before the fetch, so an arrival between the two is not missed.
        arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(mailbox, {})
        waiters[arrival] = None
        try:
            result = await self._fetch(mailbox, cursor, limit)
            if result.envelopes:
                return result
            try:
                async with asyncio.timeout(min(timeout_ms, MAX_WAIT_MS) / 1000):
                    await arrival
            except TimeoutError:
                return result
            return await self._fetch(mailbox, cursor, limit)
        finally:
            waiters.pop(arrival, None)
            if not waiters:
                self._waiters.pop(mailbox, None)

    async def _deliver(self, envelopes: tuple[wire.Envelope, ...]) -> wire.Response:
        if len(envelopes) > MAX_ENVELOPES_PER_CALL:
            return wire.ErrorResult(
                ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_ENVELOPES_PER_CALL} envelopes per call"
            )
        now = self._clock_ms()
        try:
            accepted = await self._run(lambda: self._store.put(envelopes, now))
        except MailboxFullError as exc:
            return wire.ErrorResult(ErrorCode.LIMIT_EXCEEDED, str(exc))
        except StorageError:
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not store the envelopes")
        for env in envelopes:
            for arrival in self._waiters.get(env.recipient, ()):
                if not arrival.done():
                    arrival.set_result(None)
        return wire.DeliverResult(tuple(accepted))

    @staticmethod
    def _owns(caller: bytes, mailbox: bytes) -> bool:
        return hmac.compare_digest(mailbox_of(caller), mailbox)


def _unauthorized() -> wire.ErrorResult:
    return wire.ErrorResult(ErrorCode.UNAUTHORIZED, "a mailbox is read only by its owner")
