"""Group commit for the relay's stores: calls that arrive while a transaction is in flight go
together in the next one.

On the embedded store a batch of deliveries pays the disk's sync once instead of once a call.
A relay process on PostgreSQL spends its CPU on the client side of each query (asyncpg's
encoding, the protocol, the event loop's wake-ups), not on waiting: one transaction for many
deliveries, with set-based statements, pays those costs once a batch instead of once a call.
Each call still gets its own answer, or its own error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from node.core.errors import StorageError
from relay.store import PutCall, PutResult

__all__ = ["MAX_PUT_BATCH_BYTES", "MAX_PUT_BATCH_CALLS", "Batches", "put_batches", "put_weight"]

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
# Runs one batch: an answer or an error for each call, in order. Raising instead fails every
# call of the batch with (a copy of) that error.
RunBatch = Callable[[list[C]], Awaitable[list[R | StorageError]]]

# What one put transaction carries at most, on either store: calls, and bytes of envelopes past
# its first call.
MAX_PUT_BATCH_CALLS = 128
MAX_PUT_BATCH_BYTES = 8 << 20


def put_weight(call: PutCall) -> int:
    """A put's weight in a batch: the bytes of its envelopes."""
    return sum(len(env.payload) for env in call.envelopes)


def put_batches(spawn: Spawn, run: RunBatch[PutCall, PutResult]) -> Batches[PutCall, PutResult]:
    """The queue of deliveries of either store, bounded alike."""
    return Batches(
        spawn, run, max_calls=MAX_PUT_BATCH_CALLS, max_weight=MAX_PUT_BATCH_BYTES, weigh=put_weight
    )


class Batches(Generic[C, R]):
    """A queue of calls and the one task that runs them, a batch at a time.

    A batch holds at most ``max_calls`` calls and, past its first call, at most ``max_weight``
    of ``weigh``: what one transaction carries is bounded, whatever is queued. A call whose
    caller stopped waiting before its batch began is dropped, not run.
    """

    def __init__(
        self,
        spawn: Spawn,
        run: RunBatch[C, R],
        *,
        max_calls: int,
        max_weight: int,
        weigh: Callable[[C], int],
    ) -> None:
        self._spawn = spawn
        self._run = run
        self._max_calls = max_calls
        self._max_weight = max_weight
        self._weigh = weigh
        self._queue: list[tuple[C, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # transactions run, for tests and the benchmark's profile
        self.calls = 0

    async def call(self, call: C) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((call, done))
        if self._runner is None:
            # Its own task: a caller that gives up (its deadline) must not stop the others'.
            self._runner = self._spawn(self._drain())
        return await done

    def _take(self) -> list[tuple[C, asyncio.Future[R]]]:
        batch: list[tuple[C, asyncio.Future[R]]] = []
        weight = 0
        queue = self._queue
        taken = 0
        for call, done in queue:
            if len(batch) >= self._max_calls:
                break
            if done.done():
                taken += 1
                continue  # its caller stopped waiting: nothing of it is stored
            w = self._weigh(call)
            if batch and weight + w > self._max_weight:
                break
            batch.append((call, done))
            weight += w
            taken += 1
        del queue[:taken]
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[C, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                outcomes = await self._outcomes([call for call, _ in batch])
                self.batches += 1
                self.calls += len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue  # its caller stopped waiting
                    if isinstance(outcome, StorageError):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
                batch = []
        except BaseException:
            # Cancelled (the loop is closing): whoever still waits is cancelled with it.
            for _, done in [*batch, *self._queue]:
                done.cancel()
            self._queue = []
            raise
        finally:
            self._runner = None

    async def _outcomes(self, calls: list[C]) -> list[R | StorageError]:
        try:
            return await self._run(calls)
        except StorageError as exc:
            # Each caller gets its own exception object (a traceback is attached to it where it
            # is raised), of the type and with the message it would have had alone.
            return [_copy(exc) for _ in calls]
        except Exception:
            log.exception("a batch of store calls failed")
            return [StorageError("the relay store failed") for _ in calls]

    async def wait_idle(self) -> None:
        """Return once every queued call has been answered."""
        while self._runner is not None:
            await asyncio.shield(self._runner)


def _copy(exc: StorageError) -> StorageError:
    try:
        return type(exc)(*exc.args)
    except Exception:
        return StorageError(str(exc))
