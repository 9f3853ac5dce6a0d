"""An asyncio event loop on a virtual clock, so unmodified aioquic, kademlia and node code runs
thousands of simulated seconds per real second.

The loop is :class:`asyncio.BaseEventLoop` with a selector that never waits: whenever no
callback is ready, ``select`` moves the clock straight to the earliest timer deadline **plus
1 µs**. (aioquic's loss detection compares ``sent <= now - delay`` at exactly the deadline; with
an exact jump, float rounding makes that test fail and re-arms the same timer forever — a
livelock seen with exact-jump clocks. See LIBRARY-FACTS "Running the real code on a virtual
clock".)

It owns no file descriptors and opens no sockets: the base loop's self-pipe belongs to
``BaseSelectorEventLoop``, which this deliberately is not, and every real-I/O method raises
:class:`RealIOError`. Datagrams come from :mod:`simulations.network` instead. Blocking work
handed to ``run_in_executor`` runs inline, in submission order, so runs repeat exactly.

A loop with nothing ready and nothing scheduled can never make progress again (nothing outside
the simulation can wake it); it raises :class:`SimulationDeadlock` rather than hang.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import inspect
import time
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

__all__ = [
    "JUMP_EPSILON",
    "RealIOError",
    "SimulationDeadlock",
    "SimulationError",
    "SimulationLivelock",
    "SimulationTimeLimit",
    "TaskOwner",
    "VirtualLoop",
    "run_simulated",
    "timer_rate",
]

JUMP_EPSILON = 1e-6
"""Seconds added past a deadline on each jump (see the module docstring for why)."""


class SimulationError(Exception):
    """The simulation itself cannot go on (not an error of the code under test)."""


class SimulationDeadlock(SimulationError):
    """Nothing is ready and no timer is pending, yet the main coroutine has not finished."""


class SimulationLivelock(SimulationError):
    """The loop went round too many times without the clock moving: something re-arms itself
    at the same instant forever (what exact jumps do to aioquic)."""


class SimulationTimeLimit(SimulationError):
    """The main coroutine was still running when the simulated-time limit came."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"simulated time limit of {limit:g} s reached")
        self.limit = limit


class RealIOError(SimulationError, OSError):
    """Code under simulation tried real I/O (a socket, DNS, a thread) behind the loop's back.

    An ``OSError`` too, so code that handles network failures sees one; the message says which
    seam was bypassed.
    """


class TaskOwner(Protocol):
    """Whoever should hear of tasks created in its context (a simulated node's runtime), so
    that crashing it can cancel them; once ``crashed``, its timers no longer fire."""

    crashed: bool

    def adopt_task(self, task: asyncio.Task[Any]) -> None: ...


TASK_OWNER: contextvars.ContextVar[TaskOwner | None] = contextvars.ContextVar(
    "simulations_task_owner", default=None
)
"""Set in a simulated node's context; tasks created under it are reported to it."""


class _VirtualSelector:
    """Stands where the loop's selector would: 'waiting' is moving the virtual clock."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._instant = loop._now
        self._turns_at_instant = 0

    def select(self, timeout: float | None) -> list[Any]:
        loop = self._loop
        if loop._now == self._instant:
            self._turns_at_instant += 1
            if self._turns_at_instant > loop.livelock_turns:
                raise SimulationLivelock(
                    f"{loop.livelock_turns} loop turns at t={loop._now:.6f} s without the clock "
                    "moving"
                )
        else:
            self._instant = loop._now
            self._turns_at_instant = 0
        if timeout is None:
            raise SimulationDeadlock(
                f"at t={loop.time():.6f} s nothing is ready or scheduled, so nothing can ever "
                "happen again (a future nobody will resolve?)"
            )
        if timeout > 0:
            # The base loop computed timeout from its earliest live timer; jump to that
            # deadline itself (not now + timeout, which rounds) plus the epsilon.
            deadline = loop.scheduled_handles()[0].when()
            loop._now = max(loop._now, deadline + loop.jump_epsilon)
            loop.jumps += 1
        return []

    def close(self) -> None:
        pass

    def fresh_allowance(self) -> None:
        """Start counting turns at this instant afresh (cleanup after a livelock)."""
        self._turns_at_instant = 0


class _OrderedTimerHandle(asyncio.TimerHandle):
    """A timer that breaks deadline ties by scheduling order (heapq only uses ``<``) and does
    not fire for a crashed node."""

    __slots__ = ("_seq",)

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
        seq: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def _run(self) -> None:
        # A crashed node's timers (aioquic's loss and idle timers, its sleeps) die with it.
        owner = self._context.get(TASK_OWNER)  # type: ignore[attr-defined]
        if owner is not None and owner.crashed:
            return
        super()._run()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, _OrderedTimerHandle):
            return NotImplemented
        if self._when == other._when:  # type: ignore[attr-defined]
            return self._seq < other._seq
        when: bool = self._when < other._when  # type: ignore[attr-defined]
        return when


class VirtualLoop(asyncio.BaseEventLoop):
    """An event loop whose ``time()`` is virtual and whose I/O is only what the simulation
    delivers through callbacks.

    :param start: the virtual time (seconds) the clock starts at.
    :param jump_epsilon: seconds past each deadline a jump lands (0 only to show the livelock).
    :param livelock_turns: loop turns allowed at one instant before :class:`SimulationLivelock`
        (a turn runs every callback that is ready, so legitimate code needs as many turns as
        its longest chain of ``call_soon``/``sleep(0)`` within one instant).
    """

    def __init__(
        self,
        start: float = 0.0,
        *,
        jump_epsilon: float = JUMP_EPSILON,
        livelock_turns: int = 1_000_000,
    ) -> None:
        super().__init__()
        self._now = start
        self.jump_epsilon = jump_epsilon
        self.livelock_turns = livelock_turns
        self._selector = _VirtualSelector(self)
        # The base loop fires handles with ``_when < time() + resolution``; keeping its 1 ns
        # resolution lets ``call_later(0)`` fire without a jump.
        self.jumps = 0
        """How many times the clock jumped (a rough measure of simulated idleness)."""
        self.timers_scheduled = 0
        """``call_at``/``call_later`` calls so far (for the timers/s figure)."""

    # --- the clock -------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """As the base loop's, but timers with equal deadlines fire in the order they were
        scheduled (the base heap orders ties arbitrarily, if repeatably)."""
        self._check_closed()  # type: ignore[attr-defined]
        self.timers_scheduled += 1
        timer = _OrderedTimerHandle(when, callback, args, self, context, self.timers_scheduled)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        heapq.heappush(self.scheduled_handles(), timer)
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def scheduled_handles(self) -> list[asyncio.TimerHandle]:
        """The base loop's timer heap (cancelled handles included; the first is the earliest)."""
        heap: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        return heap

    def pending_timers(self) -> int:
        """Scheduled, uncancelled timers."""
        return sum(1 for h in self.scheduled_handles() if not h.cancelled())

    def next_deadline(self) -> float | None:
        """The earliest live timer's deadline, or None."""
        live = [h.when() for h in self.scheduled_handles() if not h.cancelled()]
        return min(live) if live else None

    def _process_events(self, event_list: list[Any]) -> None:
        pass  # there are no file descriptors, so there are never events

    def _write_to_self(self) -> None:
        # Only another thread (call_soon_threadsafe) wakes a loop this way; in a simulation
        # that would make the run depend on real timing.
        raise RealIOError("call_soon_threadsafe from another thread in a simulation")

    # --- tasks -------------------------------------------------------------------------------

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: object = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task: asyncio.Task[T] = super().create_task(coro, name=name, context=context)
        # The task's context is ``context`` or a copy of the current one (asyncio.Task);
        # either way the current owner, if any, is the task's owner.
        owner = context.get(TASK_OWNER) if context is not None else TASK_OWNER.get()
        if owner is not None:
            owner.adopt_task(task)
        return task

    # --- blocking work ----------------------------------------------------------------------

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run ``func`` inline, now: deterministic, and no thread ever wakes the loop."""
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            future.set_exception(exc)
        return future

    # --- real I/O is refused -----------------------------------------------------------------

    def _refuse(self, what: str) -> RealIOError:
        return RealIOError(f"{what} would touch the real network; use the simulated network")

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("loop.create_datagram_endpoint")

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("loop.create_connection")

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("loop.create_server")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("loop.getaddrinfo")

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("loop.getnameinfo")

    def add_reader(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise self._refuse("loop.add_reader")

    def add_writer(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise self._refuse("loop.add_writer")

    def add_signal_handler(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise self._refuse("loop.add_signal_handler")


def run_simulated(
    main: Coroutine[Any, Any, T],
    *,
    time_limit: float | None = None,
    start: float = 0.0,
    loop: VirtualLoop | None = None,
    cleanup_limit: float = 3600.0,
) -> T:
    """Run ``main`` on a fresh :class:`VirtualLoop` (or ``loop``) and return its result.

    Like :func:`asyncio.run`, leftover tasks are cancelled and the loop is closed afterwards.

    :param time_limit: simulated seconds after ``start``; if ``main`` is still running then,
        it is cancelled and :class:`SimulationTimeLimit` raised.
    :param cleanup_limit: simulated seconds the cancelled leftover tasks get to finish.
    """
    loop = loop if loop is not None else VirtualLoop(start)
    if loop.is_closed() or loop.is_running():
        raise ValueError("run_simulated needs a fresh, idle loop")
    hit_limit = False
    task = loop.create_task(main)

    def stop_at_limit() -> None:
        nonlocal hit_limit
        if not task.done():
            hit_limit = True
            task.cancel()

    limiter = None
    if time_limit is not None:
        limiter = loop.call_at(loop.time() + time_limit, stop_at_limit)
    try:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if hit_limit:
                assert time_limit is not None
                raise SimulationTimeLimit(time_limit) from None
            raise
    finally:
        if limiter is not None:
            limiter.cancel()
        try:
            _cancel_leftovers(loop, cleanup_limit)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_leftovers(loop: VirtualLoop, cleanup_limit: float) -> None:
    leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not leftovers:
        return
    for t in leftovers:
        t.cancel()
    gathered = asyncio.gather(*leftovers, return_exceptions=True)

    async def settle() -> None:
        # A leftover that ignores cancellation must not keep the clock running forever.
        try:
            async with asyncio.timeout(cleanup_limit):
                await gathered
        except TimeoutError:
            pass

    selector = loop._selector
    if isinstance(selector, _VirtualSelector):
        selector.fresh_allowance()
    settling = settle()
    try:
        loop.run_until_complete(settling)
    except SimulationError:
        # A leftover waits for what never comes, or the livelock that ended the run goes on:
        # nothing more can be settled. (The primary error, if any, is already on its way.)
        if inspect.getcoroutinestate(settling) == inspect.CORO_CREATED:
            settling.close()
        gathered.cancel()
        return
    for t in leftovers:
        if t.done() and not t.cancelled() and t.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task left over after the simulation",
                    "exception": t.exception(),
                    "task": t,
                }
            )


def timer_rate(count: int = 200_000, concurrent: int = 1_000) -> float:
    """Timers fired per real second: ``concurrent`` chains of ``call_later`` callbacks, each
    re-arming itself at a random-ish delay, until ``count`` have fired.

    A benchmark helper, kept here so the figure quoted for the loop is reproducible.
    """
    loop = VirtualLoop()
    fired = 0
    done = loop.create_future()

    def tick(i: int) -> None:
        nonlocal fired
        fired += 1
        if fired >= count:
            if not done.done():
                done.set_result(None)
            return
        loop.call_later(0.001 * ((i * 7919 + fired) % 97 + 1), tick, i)

    for i in range(concurrent):
        loop.call_later(0.001 * (i % 13 + 1), tick, i)
    started = time.perf_counter()
    loop.run_until_complete(done)
    elapsed = time.perf_counter() - started
    loop.close()
    return fired / elapsed
