"""The durable outbox: every outgoing envelope is stored before its first attempt and removed
only when a peer or a relay accepted it; what failed is retried later.

Bounded (``node.app.limits.NodeLimits``): an application message is refused up front
(:class:`~node.app.store.OutboxFullError`) when too many envelopes wait for one of its
recipients or in all; commits, Welcomes and proposals are always queued, since a group must
not lose a membership change over a full queue. An envelope older than the redelivery window
is dropped from the queue: its recipient would refuse it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from node.app.limits import DAY_MS, Counters, NodeLimits
from node.app.router import Path, Router
from node.app.store import NodeStore, OutboxFullError
from node.core import wire
from node.core.errors import NodeError, StorageError
from node.core.identity import short_fingerprint
from node.core.runtime import BlockingRunner, Clock

__all__ = ["Outbox", "OutboxFullError", "SendReport"]

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    """How a set of outgoing envelopes fared, per recipient identity."""

    paths: dict[bytes, Path] = field(default_factory=dict)
    failed: dict[bytes, str] = field(default_factory=dict)  # still queued for retry


# Told of each attempt at an envelope: (envelope id, recipient, path it took or None, why not).
AttemptListener = Callable[[bytes, bytes, Path | None, str | None], None]


class Outbox:
    def __init__(
        self,
        store: NodeStore,
        run: BlockingRunner,
        router: Router,
        *,
        limits: NodeLimits | None = None,
        counters: Counters | None = None,
        clock_ms: Clock | None = None,
    ) -> None:
        """:param clock_ms: the runtime's wall clock, to drop envelopes past the window
        (without it nothing expires)."""
        self._store = store
        self._run = run
        self._router = router
        self._limits = limits or NodeLimits()
        self._counters = counters or Counters()
        self._clock_ms = clock_ms
        store.set_outbox_bounds(self._limits.max_outbox, self._limits.max_outbox_per_recipient)
        self._locks: dict[bytes, asyncio.Lock] = {}
        # Why the outbox could not record an attempt or a delivery (None while all is well).
        self.failure: str | None = None
        self.on_attempt: AttemptListener | None = None
        # Told (envelope id, recipient, why) of each envelope given up on, undelivered.
        self.on_gave_up: Callable[[bytes, bytes, str], None] | None = None
        # False only once the outbox was seen empty and nothing was queued since.
        self._maybe_pending = True
        self._queued = 0  # sends so far

    async def send(
        self,
        items: Sequence[tuple[bytes, wire.Envelope]],
        commit: tuple[bytes, int] | None = None,
    ) -> SendReport:
        """Queue (recipient, envelope) pairs durably, then drain those recipients' queues.
        ``commit`` = (group id, epoch) marks them as the fan-out of this node's commit."""
        return await self.send_made(lambda: items, commit)

    async def send_made(
        self,
        make: Callable[[], Sequence[tuple[bytes, wire.Envelope]]],
        commit: tuple[bytes, int] | None = None,
        *,
        keep: Callable[[dict[bytes, bytes]], None] | None = None,
        on_queued: Callable[[dict[bytes, bytes]], None] | None = None,
    ) -> SendReport:
        """:meth:`send` what ``make`` returns, made on the executor's thread in the same call
        that queues it (one hop: the MLS work that made the envelopes and the queueing commit
        together). ``keep`` runs there too, inside the queueing transaction, given {recipient:
        envelope id}; ``on_queued`` on the event loop once it is committed, before the first
        attempt."""
        store = self._store

        def queue() -> tuple[Sequence[tuple[bytes, wire.Envelope]], dict[bytes, int]]:
            items = make()
            with store.batch():
                if keep is not None:
                    keep({recipient: env.id for recipient, env in items})
                return items, store.outbox_put(items, commit)

        try:
            items, waiting = await self._run(queue)
        except OutboxFullError:
            self._counters.bump("outbox_full")
            raise
        self._queued += 1
        self._maybe_pending = True
        if on_queued is not None:
            on_queued({recipient: env.id for recipient, env in items})
        mine: dict[bytes, list[wire.Envelope]] = {}
        for recipient, env in items:
            mine.setdefault(recipient, []).append(env)
        # A recipient whose queue holds only what was just put needs no read of it.
        known = {r: envs for r, envs in mine.items() if waiting.get(r) == len(envs)}
        return await self._drain(list(mine), known)

    async def queued_commit_epoch(self, group_id: bytes) -> int | None:
        store = self._store
        return await self._run(lambda: store.queued_commit_epoch(group_id))

    async def flush(self) -> SendReport:
        """Try again everything still queued. Returns what happened."""
        if self._clock_ms is not None:
            now, store = self._clock_ms(), self._store
            window = self._limits.envelope_window_ms
            days = window / DAY_MS
            why = f"not delivered within {days:g} days: given up"
            expired = await self._run(lambda: store.outbox_expire(now - window, now, why))
            if expired:
                log.warning("dropped %d queued envelopes older than the window", len(expired))
                self._counters.bump("outbox_expired", len(expired))
                if self.on_gave_up is not None:
                    for envelope_id, recipient in expired:
                        self.on_gave_up(envelope_id, recipient, why)
        queued = await self._run(self._store.outbox)
        return await self._drain([recipient for recipient, _, _ in queued])

    async def pending(self) -> int:
        if not self._maybe_pending:
            return 0
        queued_before = self._queued
        count = await self._run(self._store.outbox_count)
        if count == 0 and queued_before == self._queued:
            # Until the next send, a peer that reappears costs no read of an empty outbox.
            self._maybe_pending = False
        return count

    async def _drain(
        self, recipients: list[bytes], known: dict[bytes, list[wire.Envelope]] | None = None
    ) -> SendReport:
        # MLS needs order per recipient (a commit before the messages of its epoch): each
        # recipient's queue goes out oldest first and stops at its first failure. Recipients
        # are served concurrently, started in the order they were queued (never a set's
        # order, which varies from run to run: a seeded simulation must repeat exactly).
        report = SendReport()
        ordered = dict.fromkeys(recipients)
        known = known or {}
        await asyncio.gather(
            *(self._drain_one(recipient, report, known.get(recipient)) for recipient in ordered)
        )
        return report

    async def _drain_one(
        self, recipient: bytes, report: SendReport, known: list[wire.Envelope] | None
    ) -> None:
        store = self._store
        lock = self._locks.setdefault(recipient, asyncio.Lock())
        if lock.locked():
            known = None  # another drain may have sent some of them, or queued more meanwhile
        async with lock:
            queued = (
                known if known is not None else await self._run(lambda: store.outbox_for(recipient))
            )
            for env in queued:
                try:
                    path = await self._router.send(recipient, env)
                except NodeError as exc:
                    report.failed[recipient] = f"{exc} (kept for retry)"
                    self._tell(env.id, recipient, None, str(exc))
                    log.info("could not deliver to %s yet: %s", short_fingerprint(recipient), exc)
                    try:
                        await self._run(partial(store.outbox_failed, env.id))
                    except StorageError as failed:
                        # Only a counter: a full disk must not turn "not yet" into a failure.
                        self.failure = str(failed)
                    return
                report.paths[recipient] = path
                self._tell(env.id, recipient, path, None)
                try:
                    await self._run(partial(store.outbox_done, env.id))
                except StorageError as exc:
                    # Delivered, but still queued: it goes again later and the peer drops the
                    # duplicate by id. The rest waits behind it, in order.
                    log.warning("cannot record a delivery (it will be sent again): %s", exc)
                    self.failure = str(exc)
                    return
                self.failure = None

    def _tell(
        self, envelope_id: bytes, recipient: bytes, path: Path | None, why: str | None
    ) -> None:
        if self.on_attempt is not None:
            self.on_attempt(envelope_id, recipient, path, why)
