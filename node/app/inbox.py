"""The receive path: persist before accepting, apply in order, deliver to the user once.

An envelope is written to the node's store (its id to ``seen``, its bytes to ``inbox``) before
the caller hears "accepted"; only then is it applied to MLS, and the inbox row is replaced by the
message it produced in one transaction. A process that dies anywhere in between finds the
envelope still in ``inbox`` at the next start and applies it then. A duplicate is accepted again
(so the sender stops retrying) but never stored or applied twice.

The common case (one envelope of a group this node is in, nothing else waiting) takes one
executor call and one commit: stored, applied and replaced by its message in one transaction.
A process that dies before that commit has kept nothing and said nothing, so the envelope
comes again (the sender's outbox, or the relay's mailbox); MLS then returns the outcome it
recorded under the envelope's id (``delivery_id``), and the message is shown once.

Bounds (``node.app.limits.NodeLimits``): an id is kept in ``seen`` only for the redelivery
window after the envelope was made, and an envelope older than that (or dated in the future)
is refused; past ``max_seen`` ids new envelopes are refused. Each stored envelope counts
against one *share* (its direct caller, or for the relay path its group): a share that holds
``max_deferred_per_sender`` rows refuses more, and when the deferred total passes
``max_deferred`` the largest share loses its oldest first, so one sender's flood cannot push
out another's envelopes. What is refused is refused before it is stored.

A failure to write state (a full disk, a read-only file, the MLS state file or the database
refusing a write: any :class:`~node.core.errors.StorageError`) is not a verdict on the
envelope: it and everything after it stay in the inbox, the failure is logged once and kept in
:attr:`Inbox.failure`, and :meth:`Inbox.retry_when_stalled` applies them again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

from node.app.limits import Counters, NodeLimits
from node.app.router import Path
from node.app.store import NodeStore, Stashed, StoredMessage
from node.core import wire
from node.core.errors import StorageError
from node.core.runtime import BlockingRunner

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between attempts while state cannot be written

DEFERRED: Literal["deferred"] = "deferred"


@dataclass(frozen=True)
class Completed:
    """Applied, and its inbox row already replaced by ``message`` (in the same executor call
    as the MLS work, through the ``finish`` the inbox handed over): ``row`` is the message's
    row in the log (None: no message, or kept before)."""

    message: StoredMessage | None
    row: int | None


# What applying one envelope gave: a message for the user, nothing to show (a commit, a
# Welcome, an undecryptable payload), either already completed or not, or "not yet" (its group
# is not joined yet, its epoch has not begun here, or it is a commit whose proposal has not
# arrived).
Applied = StoredMessage | None | Literal["deferred"] | Completed
# Replaces the envelope's inbox row by what it said; runs on the executor's thread.
Finish = Callable[[StoredMessage | None], int | None]
Pending = tuple[int, wire.Envelope, str]  # (inbox seq, envelope, path it came by)
# Applies a group message on the executor's thread: the outcome and what to do next on the
# event loop, or None when the envelope needs the asynchronous way (a Welcome, a proposal, a
# group not joined).
ApplyNow = Callable[[wire.Envelope, Path, Finish], "tuple[Applied, Callable[[], None]] | None"]


@dataclass
class Accepted:
    """What :meth:`Inbox.accept` did with each envelope, by id."""

    ids: list[bytes] = field(default_factory=list)  # stored, now or before: the sender may forget
    later: list[bytes] = field(default_factory=list)  # refused while a bound is full: offer again
    never: list[bytes] = field(default_factory=list)  # refused for good (outside the window)


# Refusals that hold whenever the envelope comes again.
FOR_GOOD = frozenset({"envelope_expired", "envelope_from_future"})


class Inbox:
    def __init__(
        self,
        store: NodeStore,
        run: BlockingRunner,
        apply: Callable[[wire.Envelope, Path, Finish], Awaitable[Applied]],
        delivered: Callable[[StoredMessage], Awaitable[None]],
        dropped: Callable[[wire.Envelope], None] | None = None,
        *,
        apply_now: ApplyNow | None = None,
        limits: NodeLimits | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._store = store
        self._run = run
        self._apply = apply
        self._delivered = delivered
        self.limits = limits or NodeLimits()
        self._counters = counters or Counters()
        self._dropped = dropped
        self._apply_now = apply_now
        self._lock = asyncio.Lock()
        self._stalled = asyncio.Event()
        # The envelopes known to wait in the store (inbox seq -> group id), as the last apply
        # left them; None when not known (at start, after a failure). With them known, a new
        # envelope of another group need not read and retry them all (anyone can park up to
        # max_deferred there, so every message would pay for them).
        self._deferred: dict[int, bytes] | None = None
        # Why the inbox could not apply what it holds (None while all is well).
        self.failure: str | None = None

    async def accept(
        self,
        envelopes: Sequence[wire.Envelope],
        path: Path,
        owners: Sequence[bytes],
        now_ms: int,
    ) -> Accepted:
        """Persist the envelopes not seen before (within the bounds: ``owners[i]`` is the share
        ``envelopes[i]`` counts against), then apply whatever is pending. Returns the ids
        accepted (those stored now and the duplicates) and the refused, for now or for good."""
        limits, counters = self.limits, self._counters
        timely: list[wire.Envelope] = []
        timely_owners: list[bytes] = []
        never: list[bytes] = []
        for env, owner in zip(envelopes, owners, strict=True):
            if env.created_at_ms < now_ms - limits.envelope_window_ms:
                counters.bump("envelope_expired")
                never.append(env.id)
            elif env.created_at_ms > now_ms + limits.max_clock_skew_ms:
                # Its id would be kept until a date the sender chose.
                counters.bump("envelope_from_future")
                never.append(env.id)
            else:
                timely.append(env)
                timely_owners.append(owner)
        store = self._store

        def stash() -> tuple[Stashed, list[Pending] | None]:
            stashed = self._stash(timely, path, timely_owners, now_ms) if timely else Stashed()
            # Read in the same executor call: one hop fewer on every message's way.
            try:
                return stashed, store.pending_incoming()
            except StorageError:
                return stashed, None  # stored all the same; the apply reads again

        async with self._lock:
            fast = await self._accept_at_once(timely, path, timely_owners, now_ms)
            pending: list[Pending] | None
            if fast is not None:
                stashed, pending = fast
            else:
                stashed, pending = await self._run(stash)
            for kind in stashed.refused.values():
                counters.bump(kind)
            if stashed.refused:
                log.info("refused %d received envelopes (bounds)", len(stashed.refused))
            if fast is None or pending:
                await self._apply_locked(pending)
        return Accepted(stashed.fresh + stashed.duplicate, list(stashed.refused), never)

    def _stash(
        self, envelopes: list[wire.Envelope], path: Path, owners: list[bytes], now_ms: int
    ) -> Stashed:
        """Store within the bounds (on the executor's thread)."""
        limits = self.limits
        return self._store.stash_bounded(
            envelopes,
            path.value,
            owners,
            now_ms=now_ms,
            window_ms=limits.envelope_window_ms,
            max_seen=limits.max_seen,
            max_share=limits.max_deferred_per_sender,
        )

    async def _accept_at_once(
        self, envelopes: list[wire.Envelope], path: Path, owners: list[bytes], now_ms: int
    ) -> tuple[Stashed, list[Pending]] | None:
        """The common case in one executor call and one commit: a single envelope of a group
        this node is in, and nothing else waiting. It is stored, applied and replaced by its
        message in one transaction. A crash before the commit leaves no trace in the store,
        so the envelope is not accepted and comes again; MLS then gives the outcome it
        recorded (``delivery_id``). Returns (what was stored, what still waits), or None when
        the usual way must be taken (nothing was stored then)."""
        apply_now = self._apply_now
        if apply_now is None or len(envelopes) != 1:
            return None
        store = self._store
        after: Callable[[], None] | None = None
        shown: StoredMessage | None = None
        known_after: dict[int, bytes] | None = None  # what waits, when taken the quick way

        def at_once() -> tuple[Stashed, list[Pending]]:
            nonlocal after, shown, known_after
            # The MLS call below must not run while an earlier call's mark is unwritten.
            store.flush_mls_mark()
            with store.batch():
                stashed = self._stash(envelopes, path, owners, now_ms)
                alone = self._alone(envelopes[0]) if stashed.fresh else None
                if alone is None:
                    # A duplicate, refused, or others wait that may have to go before it.
                    return stashed, store.pending_incoming()
                seq, env, _ = alone
                done = apply_now(env, path, partial(store.complete_incoming, seq))
                if done is None:
                    return stashed, store.pending_incoming()
                outcome, after = done
                known_after = dict(self._deferred or {})
                if outcome == DEFERRED:
                    known_after[seq] = env.group_id
                    return stashed, []
                if isinstance(outcome, Completed) and outcome.row is not None:
                    shown = outcome.message
                    if shown is not None:
                        shown = replace(shown, row=outcome.row)
                return stashed, []

        try:
            result = await self._run(at_once)
        except StorageError:
            # Nothing of it was kept: the usual way stores it first, then says what failed.
            return None
        if known_after is not None:
            self._deferred = known_after
        if after is not None:
            after()
        if shown is not None:
            await self._delivered(shown)
        return result

    def _alone(self, env: wire.Envelope) -> Pending | None:
        """On the executor's thread, just after ``env`` was stashed: its inbox row, when nothing
        else waits that might have to be applied before it (only envelopes of other groups,
        known to wait); else None."""
        store, known = self._store, self._deferred
        if known is None:
            pending = store.pending_incoming()
            return pending[0] if len(pending) == 1 else None
        if env.group_id in known.values():
            return None  # an envelope of its group waits: order within a group counts
        count, newer = store.incoming_after(max(known, default=0))
        # Exactly the known ones and this one: nothing arrived or left unseen meanwhile.
        return newer[0] if count == len(known) + 1 and len(newer) == 1 else None

    async def apply_pending(self) -> None:
        """Apply stored envelopes in arrival order; keep the ones whose group is not joined yet
        and retry them whenever another envelope made progress (a Welcome, typically)."""
        async with self._lock:
            await self._apply_locked(None)

    async def _apply_locked(self, pending: list[Pending] | None) -> None:
        try:
            self._deferred = None  # until this apply has said what still waits
            await self._apply_pending(pending)
        except StorageError as exc:
            # Nothing was judged: every envelope stays for the next attempt.
            if str(exc) != self.failure:
                log.warning("cannot apply received envelopes (kept, retrying): %s", exc)
            self.failure = str(exc)
            self._stalled.set()
            return
        if self.failure is not None:
            log.warning("received envelopes apply again: %s is over", self.failure)
        self.failure = None

    async def _apply_pending(self, pending: list[Pending] | None) -> None:
        store = self._store
        if pending is None:
            pending = await self._run(store.pending_incoming)
        progress = True
        while pending and progress:
            progress = False
            waiting = []
            for seq, env, path in pending:
                outcome = await self._apply(env, Path(path), partial(store.complete_incoming, seq))
                if outcome == DEFERRED:
                    waiting.append((seq, env, path))
                    continue
                if isinstance(outcome, Completed):
                    message, row = outcome.message, outcome.row
                else:
                    message = outcome if isinstance(outcome, StoredMessage) else None
                    row = await self._run(partial(store.complete_incoming, seq, message))
                if message is not None and row is not None:
                    await self._delivered(replace(message, row=row))
                progress = True
            pending = waiting
        dropped = await self._bound(pending)
        self._deferred = {seq: env.group_id for seq, env, _ in pending if seq not in dropped}

    async def retry_when_stalled(self) -> None:
        """Run for as long as the node runs: after a failed write, apply again with backoff
        until it goes through."""
        delay = RETRY_MIN
        while True:
            await self._stalled.wait()
            await asyncio.sleep(delay)  # a retry delay: the disk gives no event when it frees
            self._stalled.clear()
            await self.apply_pending()
            delay = min(delay * 2, RETRY_MAX) if self.failure is not None else RETRY_MIN

    async def _bound(self, deferred: list[Pending]) -> set[int]:
        """Past the total, the largest share gives up its oldest. Returns their seqs."""
        # Anyone may send envelopes naming made-up groups or epochs: so a flood pushes out
        # only its own.
        excess = len(deferred) - self.limits.max_deferred
        if excess <= 0:
            return set()
        store = self._store
        owners = await self._run(store.incoming_owners)
        shares: dict[bytes, list[tuple[int, wire.Envelope]]] = {}
        for seq, env, _ in deferred:
            shares.setdefault(owners.get(seq, b""), []).append((seq, env))
        dropped: set[int] = set()
        for _ in range(excess):
            largest = max(shares.values(), key=len)
            seq, env = largest.pop(0)
            log.warning("dropped a %s whose group, epoch or proposal never came", env.kind.value)
            self._counters.bump("deferred_dropped")
            if self._dropped is not None:
                self._dropped(env)
            await self._run(partial(store.complete_incoming, seq, None))
            dropped.add(seq)
        return dropped

    async def drop_group(self, group_id: bytes) -> int:
        """Drop every stored envelope of a group this node will not join; returns how many."""
        store = self._store
        async with self._lock:
            pending = await self._run(store.pending_incoming)
            doomed = [seq for seq, env, _ in pending if env.group_id == group_id]
            for seq in doomed:
                if self._deferred is not None:
                    self._deferred.pop(seq, None)
                await self._run(partial(store.complete_incoming, seq, None))
        return len(doomed)
