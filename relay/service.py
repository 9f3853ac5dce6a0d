"""The relay's Delivery service: the same calls a node serves, plus a mailbox for each identity.

Pure request → response logic over a :class:`~relay.store_api.MailboxBackend` (the embedded
SQLite store or PostgreSQL); blocking work and the clock come from the
:class:`~node.core.runtime.Runtime` it is given, so the simulator can drive it. While the
database is unreachable every mailbox call is refused with ``BUSY`` and nothing is stored.

Every call is first charged to its caller's token bucket; ``deliver`` is also charged per
(caller, recipient mailbox) in envelopes and per caller in mailboxes it opens, so that no
stranger fills someone else's mailbox, or the store, in a burst. Every refusal has an error
code and a counter (``counters``, keyed by trigger name).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from node.core import wire
from node.core.errors import ErrorCode, StorageError
from node.core.framing import DEFAULT_MAX_FRAME
from node.core.identity import mailbox_of
from node.core.runtime import Runtime
from node.transport.connection import Caller
from relay.accounts import AccountService
from relay.directory import DIRECTORY_CALLS, DirectoryService
from relay.failure_notices import Telling, entries_fitting
from relay.limits import TokenBuckets
from relay.store import (
    MailboxBytesError,
    MailboxFullError,
    MailboxStore,
    NewMailboxLimitError,
    Purged,
    QuotaError,
    StoreFullError,
    TooManyMailboxesError,
)
from relay.store_api import MailboxBackend, SqliteMailboxes, StoreUnavailableError

log = logging.getLogger(__name__)

MAX_ENVELOPES_PER_CALL = 256
MAX_ACK_IDS = 4096
MAX_FETCH = 256
MAX_WAIT_MS = 25_000  # below the relay's call deadline, so a long poll never times out as an error
MAX_CURSOR = (1 << 63) - 1  # cursors are SQLite rowids: signed 64-bit
NOTICE_SALT_SIZE = 16
# Bytes of a FetchResult around its envelopes (root, list pointer, cursor), and what one envelope
# costs inside the list beyond its standalone encoding; generous, overshooting only shortens.
_RESPONSE_OVERHEAD = 1024
_ENVELOPE_OVERHEAD = 64
# A mailbox whose owner fetched from it within this long is in use, not new, even when its
# acks emptied it: a reader who keeps up must not cost its senders a new-mailbox token per
# message. Remembered for this many mailboxes at most (the oldest readers are forgotten).
READER_WINDOW_S = 24 * 3600.0
MAX_READERS = 100_000


@dataclass(frozen=True)
class ServiceLimits:
    """Per-caller allowances and the envelope lifetime (see ``docs/operations.md``)."""

    calls_per_second: float = 50.0
    call_burst: int = 200
    envelopes_per_mailbox_per_second: float = 5.0
    envelope_burst_per_mailbox: int = 100
    new_mailboxes_per_second: float = 1.0
    new_mailbox_burst: int = 60
    envelope_ttl_ms: int = 7 * 24 * 3600 * 1000
    max_envelope_bytes: int | None = None  # None: the most one fetch answer can carry
    # Sealed sender (ADR 0008): envelopes of kind sealed from any key, charged per address.
    allow_sealed_sender: bool = True
    # Keep the caller's mailbox with plain envelopes delivered with failureNotice (ADR 0009).
    failure_notices: bool = True


_CODES: dict[type[QuotaError], ErrorCode] = {
    MailboxFullError: ErrorCode.QUOTA_EXCEEDED,
    MailboxBytesError: ErrorCode.QUOTA_EXCEEDED,
    StoreFullError: ErrorCode.STORE_FULL,
    TooManyMailboxesError: ErrorCode.STORE_FULL,
    NewMailboxLimitError: ErrorCode.RATE_LIMITED,
}


_ACCOUNT_CALLS = (
    wire.RegisterStart,
    wire.RegisterFinish,
    wire.LoginStart,
    wire.LoginFinish,
    wire.Authenticate,
    wire.Logout,
)
# What ``accounts = "required"`` keeps for identities holding a live session.
_MAILBOX_CALLS = (wire.Deliver, wire.Fetch, wire.Wait, wire.Ack, *DIRECTORY_CALLS)

CallObserver = Callable[[wire.Request, wire.Response, float], None]
"""Sees every call the service answered, with its answer and how long it took in seconds
(``relay.metrics``)."""


class RelayService:
    """Answers Delivery calls. ``fetch`` and ``ack`` serve only the caller's own mailbox."""

    def __init__(
        self,
        store: MailboxStore | MailboxBackend,
        runtime: Runtime,
        max_frame: int,
        limits: ServiceLimits | None = None,
        counters: Counter[str] | None = None,
        accounts: AccountService | None = None,
        directory: DirectoryService | None = None,
    ) -> None:
        self._store: MailboxBackend = (
            SqliteMailboxes(store, runtime) if isinstance(store, MailboxStore) else store
        )
        self.accounts = accounts
        self.directory = directory
        self.limits = limits = limits or ServiceLimits()
        self.counters: Counter[str] = Counter() if counters is None else counters
        # Nodes accept frames of DEFAULT_MAX_FRAME at most, whatever this relay allows inbound;
        # leave room for the response's own structure around the envelopes.
        self._fetch_budget = min(max_frame, DEFAULT_MAX_FRAME) - _RESPONSE_OVERHEAD
        # The largest envelope a fetch answer can carry alone: anything larger is refused at
        # deliver, since storing it would block its mailbox for good.
        largest = self._fetch_budget - _ENVELOPE_OVERHEAD
        self.max_envelope_bytes = min(limits.max_envelope_bytes or largest, largest)
        self._run = runtime.run_blocking
        self._clock_ms = runtime.wall_ms
        self._random = runtime.random_bytes
        self._monotonic = runtime.monotonic
        self._calls = TokenBuckets(limits.calls_per_second, limits.call_burst)
        self._per_mailbox = TokenBuckets(
            limits.envelopes_per_mailbox_per_second, limits.envelope_burst_per_mailbox
        )
        self._new_mailboxes = TokenBuckets(
            limits.new_mailboxes_per_second, limits.new_mailbox_burst
        )
        # mailbox -> when its owner last fetched (monotonic), oldest first.
        self._readers: dict[bytes, float] = {}
        # Long polls waiting per mailbox; an arrival wakes every waiter on that mailbox, oldest
        # first (a dict keeps that order; a set's would vary from run to run).
        self._waiters: dict[bytes, dict[asyncio.Future[None], None]] = {}
        self.observer: CallObserver | None = None
        self.in_flight = 0
        self._draining = False
        self._drained: asyncio.Event | None = None
        # Arrivals through other relay processes sharing the store (PostgreSQL NOTIFY).
        self._store.on_arrival(self._wake)

    @property
    def store(self) -> MailboxBackend:
        return self._store

    def _wake(self, mailbox: bytes | None) -> None:
        if mailbox is None:
            self.wake_all()
            return
        for arrival in self._waiters.get(mailbox, ()):
            if not arrival.done():
                arrival.set_result(None)

    def wake_all(self) -> None:
        """Wake every long poll (the store may have missed arrivals, say while reconnecting)."""
        for waiting in list(self._waiters):
            self._wake(waiting)

    def _refuse(self, trigger: str, code: ErrorCode, message: str) -> wire.ErrorResult:
        self.counters[trigger] += 1
        log.info("refused a call", extra={"trigger": trigger})
        return wire.ErrorResult(code, message)

    def _not_before_ms(self) -> int:
        return self._clock_ms() - self.limits.envelope_ttl_ms

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        """Answer one call. The observer sees it with its duration; once :meth:`drain` has
        begun, new calls are refused (``busy``) while those in flight finish."""
        if self._draining:
            return self._refuse(
                "refused_shutting_down", ErrorCode.BUSY, "the relay is shutting down"
            )
        started = self._monotonic()
        self.in_flight += 1
        try:
            response = await self._handle(caller, request)
        except Exception:
            if self.observer is not None:
                failed = wire.ErrorResult(ErrorCode.INTERNAL, "internal error")
                self.observer(request, failed, self._monotonic() - started)
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._drained is not None:
                self._drained.set()
        if self.observer is not None:
            self.observer(request, response, self._monotonic() - started)
        return response

    async def drain(self, grace: float) -> int:
        """Refuse new calls, answer every long poll now, and wait up to ``grace`` seconds for
        the calls in flight to be answered; return how many were still running."""
        self._draining = True
        for waiters in self._waiters.values():
            for arrival in waiters:
                if not arrival.done():
                    arrival.set_result(None)
        if self.in_flight:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        return self.in_flight

    async def _handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        sealed = _is_sealed_delivery(request)
        # A sealed delivery comes from a one-time key: its own bucket would always be full, so
        # its calls are charged to the address it came from.
        if not self._calls.take(_payer(caller, sealed), self._monotonic()):
            return self._refuse(
                "refused_call_rate", ErrorCode.RATE_LIMITED, "too many calls: retry later"
            )
        accounts = self.accounts
        if sealed:
            if not self.limits.allow_sealed_sender:
                return self._refuse(
                    "refused_sealed_sender",
                    ErrorCode.SEALED_REFUSED,
                    "this relay does not take sealed-sender envelopes",
                )
            # Nobody logs in to send sealed: that would name the sender. Such a delivery is
            # bounded by the address's allowances and the recipient's quota instead.
            assert isinstance(request, wire.Deliver)
            if not all(env.kind is wire.EnvelopeKind.SEALED for env in request.envelopes):
                # One sealed envelope must not carry plain ones past accounts = "required".
                return self._refuse(
                    "refused_sealed_mixed",
                    ErrorCode.MALFORMED_REQUEST,
                    "a deliver holds sealed envelopes only, or none",
                )
            try:
                return await self._deliver(caller, request.envelopes, sealed=True)
            except StoreUnavailableError:
                return self._refuse(
                    "refused_store_unavailable",
                    ErrorCode.BUSY,
                    "the relay's database is unreachable: retry later",
                )
        if isinstance(request, _ACCOUNT_CALLS):
            if accounts is None:
                return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "this relay has no accounts")
            answer = await accounts.handle(caller, request)
            if self.directory is not None:
                await self.directory.after_account_call(caller, request, answer)
            return answer
        if (
            accounts is not None
            and isinstance(request, _MAILBOX_CALLS)
            and not await accounts.may_use_mailboxes(caller.identity)
        ):
            return accounts.unauthenticated()
        if isinstance(request, DIRECTORY_CALLS):
            if self.directory is None:
                return wire.ErrorResult(ErrorCode.NOT_FOUND, "this relay has no directory")
            return await self.directory.handle(caller, request)
        try:
            return await self._mailbox_call(caller, request)
        except StoreUnavailableError:
            return self._refuse(
                "refused_store_unavailable",
                ErrorCode.BUSY,
                "the relay's database is unreachable: retry later",
            )

    async def _mailbox_call(self, caller: Caller, request: wire.Request) -> wire.Response:
        match request:
            case wire.Deliver(envelopes, failure_notice):
                return await self._deliver(caller, envelopes, failure_notice=failure_notice)
            case wire.Fetch(mailbox, cursor, limit):
                if not self._owns(caller.identity, mailbox):
                    return self._unauthorized()
                if cursor > MAX_CURSOR:
                    return self._out_of_range()
                return await self._tell_owner(caller, await self._fetch(mailbox, cursor, limit))
            case wire.Wait(mailbox, cursor, limit, timeout_ms):
                if not self._owns(caller.identity, mailbox):
                    return self._unauthorized()
                if cursor > MAX_CURSOR:
                    return self._out_of_range()
                return await self._tell_owner(
                    caller, await self._wait(mailbox, cursor, limit, timeout_ms)
                )
            case wire.Ack(mailbox, ids):
                if not self._owns(caller.identity, mailbox):
                    return self._unauthorized()
                if len(ids) > MAX_ACK_IDS:
                    return self._refuse(
                        "refused_ack_ids", ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_ACK_IDS} ids"
                    )
                removed = await self._store.ack(mailbox, ids)
                return wire.AckResult(removed)
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "unknown method")

    async def _tell_owner(self, caller: Caller, result: wire.FetchResult) -> wire.FetchResult:
        """Mark the answer to a mailbox owner whose KeyPackages here run low."""
        if self.directory is not None and await self.directory.runs_low(caller.identity):
            return dataclasses.replace(result, key_packages_low=True)
        return result

    def _owner_read(self, mailbox: bytes) -> None:
        self._readers.pop(mailbox, None)
        self._readers[mailbox] = self._monotonic()
        while len(self._readers) > MAX_READERS:
            del self._readers[next(iter(self._readers))]

    def _in_use(self, mailboxes: Iterable[bytes], now: float) -> frozenset[bytes]:
        """Of ``mailboxes``, those whose owner fetched from them within the window."""
        since = now - READER_WINDOW_S
        readers = self._readers
        return frozenset(m for m in mailboxes if readers.get(m, since - 1) >= since)

    async def _fetch(self, mailbox: bytes, cursor: int, limit: int) -> wire.FetchResult:
        self._owner_read(mailbox)
        limit = max(1, min(limit or MAX_FETCH, MAX_FETCH))
        budget = self._fetch_budget
        skip_over = self._fetch_budget - _ENVELOPE_OVERHEAD
        not_before = self._not_before_ms()
        batch = await self._store.fetch(
            mailbox, cursor, limit, budget, not_before_ms=not_before, skip_over=skip_over
        )
        if batch.skipped:
            self.counters["fetch_skipped_oversized"] += batch.skipped
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

    async def _deliver(
        self,
        caller: Caller,
        envelopes: tuple[wire.Envelope, ...],
        *,
        sealed: bool = False,
        failure_notice: bool = False,
    ) -> wire.Response:
        if any(env.kind is wire.EnvelopeKind.DELIVERY_FAILED for env in envelopes):
            return self._refuse(
                "refused_notice_kind",
                ErrorCode.UNAUTHORIZED,
                "only a relay makes deliveryFailed envelopes",
            )
        if len(envelopes) > MAX_ENVELOPES_PER_CALL:
            return self._refuse(
                "refused_deliver_count",
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {MAX_ENVELOPES_PER_CALL} envelopes per call",
            )
        largest = self.max_envelope_bytes
        if any(len(wire.encode_envelope(env)) > largest for env in envelopes):
            return self._refuse(
                "refused_envelope_size",
                ErrorCode.TOO_LARGE,
                f"an envelope over {largest} bytes could never be fetched",
            )
        now = self._monotonic()
        payer = _payer(caller, sealed)
        per_mailbox = Counter(env.recipient for env in envelopes)
        for mailbox, n in per_mailbox.items():
            if self._per_mailbox.available((payer, mailbox), now) < n:
                return self._refuse(
                    "refused_mailbox_rate",
                    ErrorCode.RATE_LIMITED,
                    "too many envelopes for one mailbox: retry later",
                )
        allowance = int(self._new_mailboxes.available(payer, now))
        in_use = self._in_use(per_mailbox, now)
        wall = self._clock_ms()
        not_before = wall - self.limits.envelope_ttl_ms
        try:
            put = await self._store.put(
                envelopes,
                wall,
                new_mailbox_allowance=allowance,
                not_before_ms=not_before,
                in_use=in_use,
                # A sealed delivery's caller is a one-time key: nobody to tell, and nothing
                # of it is kept.
                sender=(
                    mailbox_of(caller.identity)
                    if failure_notice and not sealed and self.limits.failure_notices
                    else None
                ),
            )
        except QuotaError as exc:
            return self._refuse(
                exc.trigger, _CODES.get(type(exc), ErrorCode.LIMIT_EXCEEDED), str(exc)
            )
        except StoreUnavailableError:
            raise
        except StorageError:
            return wire.ErrorResult(ErrorCode.INTERNAL, "the relay could not store the envelopes")
        for mailbox, n in per_mailbox.items():
            self._per_mailbox.take((payer, mailbox), now, n)
        if put.new_mailboxes:
            self._new_mailboxes.take(payer, now, put.new_mailboxes)
        self.counters["envelopes_in"] += len(envelopes)
        if sealed:
            self.counters["sealed_envelopes_in"] += len(envelopes)
        for mailbox in per_mailbox:
            self._wake(mailbox)
        return wire.DeliverResult(tuple(put.ids))

    async def purge_expired(self) -> Purged:
        """Delete every expired envelope now, and tell the senders who asked."""
        telling = Telling(
            self._clock_ms(),
            self._random(NOTICE_SALT_SIZE),
            entries_fitting(self.max_envelope_bytes),
        )
        purged = await self._store.purge_expired(self._not_before_ms(), telling)
        self.counters["failure_notices"] += purged.notices
        self.counters["failure_notices_untold"] += purged.untold
        for mailbox in purged.told:
            self._wake(mailbox)
        return purged

    @staticmethod
    def _owns(caller: bytes, mailbox: bytes) -> bool:
        return hmac.compare_digest(mailbox_of(caller), mailbox)

    def _unauthorized(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_unauthorized", ErrorCode.UNAUTHORIZED, "a mailbox is read only by its owner"
        )

    def _out_of_range(self) -> wire.ErrorResult:
        return self._refuse(
            "refused_out_of_range", ErrorCode.MALFORMED_REQUEST, "cursor out of range"
        )


def _is_sealed_delivery(request: wire.Request) -> bool:
    """A deliver carrying any sealed envelope (it is charged, and refused, as sealed)."""
    return isinstance(request, wire.Deliver) and any(
        env.kind is wire.EnvelopeKind.SEALED for env in request.envelopes
    )


def _payer(caller: Caller, sealed: bool) -> bytes | tuple[str, str]:
    """Whose allowance a call spends: its identity key's, or for a sealed delivery (from a key
    made for it) its address's; the port is left out, since a new one costs nothing."""
    return ("address", caller.address[0]) if sealed else caller.identity
