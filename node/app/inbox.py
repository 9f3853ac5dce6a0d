"""The receive path: persist before accepting, apply in order, deliver to the user once.

An envelope is written to the node's store (its id to ``seen``, its bytes to ``inbox``) before
the caller hears "accepted"; only then is it applied to MLS, and the inbox row is replaced by the
message it produced in one transaction. A process that dies anywhere in between finds the
envelope still in ``inbox`` at the next start and applies it then. A duplicate is accepted again
(so the sender stops retrying) but never stored or applied twice.

A failure to write state (a full disk, a read-only file, the MLS state file or the database
refusing a write: any :class:`~node.core.errors.StorageError`) is not a verdict on the
envelope: it and everything after it stay in the inbox, the failure is logged once and kept in
:attr:`Inbox.failure`, and :meth:`Inbox.retry_when_stalled` applies them again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Literal

from node.app.router import Path
from node.app.store import NodeStore, StoredMessage
from node.core import wire
from node.core.errors import StorageError
from node.core.runtime import BlockingRunner

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 1.0, 30.0  # seconds between attempts while state cannot be written

DEFERRED: Literal["deferred"] = "deferred"
# What applying one envelope gave: a message for the user, nothing to show (a commit, a
# Welcome, an undecryptable payload), or "not yet" (its group is not joined yet, its epoch has
# not begun here, or it is a commit whose proposal has not arrived).
Applied = StoredMessage | None | Literal["deferred"]


class Inbox:
    def __init__(
        self,
        store: NodeStore,
        run: BlockingRunner,
        apply: Callable[[wire.Envelope, Path], Awaitable[Applied]],
        delivered: Callable[[StoredMessage], Awaitable[None]],
        max_deferred: int = 1000,
        dropped: Callable[[wire.Envelope], None] | None = None,
    ) -> None:
        self._store = store
        self._run = run
        self._apply = apply
        self._delivered = delivered
        self._max_deferred = max_deferred
        self._dropped = dropped
        self._lock = asyncio.Lock()
        self._stalled = asyncio.Event()
        # Why the inbox could not apply what it holds (None while all is well).
        self.failure: str | None = None

    async def accept(self, envelopes: Sequence[wire.Envelope], path: Path) -> None:
        """Persist the envelopes not seen before, then apply whatever is pending."""
        store = self._store
        await self._run(lambda: store.stash_incoming(envelopes, path.value))
        await self.apply_pending()

    async def apply_pending(self) -> None:
        """Apply stored envelopes in arrival order; keep the ones whose group is not joined yet
        and retry them whenever another envelope made progress (a Welcome, typically)."""
        async with self._lock:
            try:
                await self._apply_pending()
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

    async def _apply_pending(self) -> None:
        store = self._store
        pending = await self._run(store.pending_incoming)
        progress = True
        while pending and progress:
            progress = False
            waiting = []
            for seq, env, path in pending:
                outcome = await self._apply(env, Path(path))
                if outcome == DEFERRED:
                    waiting.append((seq, env, path))
                    continue
                message = outcome if isinstance(outcome, StoredMessage) else None
                row = await self._run(partial(store.complete_incoming, seq, message))
                if message is not None and row is not None:
                    await self._delivered(replace(message, row=row))
                progress = True
            pending = waiting
        await self._bound(pending)

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

    async def _bound(self, deferred: list[tuple[int, wire.Envelope, str]]) -> None:
        # Anyone may send envelopes naming made-up groups or epochs: keep only the newest few.
        store = self._store
        excess = len(deferred) - self._max_deferred
        for seq, env, _ in deferred[: max(0, excess)]:
            log.warning("dropped a %s whose group, epoch or proposal never came", env.kind.value)
            if self._dropped is not None:
                self._dropped(env)
            await self._run(partial(store.complete_incoming, seq, None))
