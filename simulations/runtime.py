"""The simulator's :class:`node.core.runtime.Runtime`: one per simulated node, over the virtual
loop's clock, a seeded RNG and a host on a :class:`~simulations.network.SimNetwork`.

Each runtime has its own ``contextvars.Context`` in which it runs everything of its node: the
tasks it spawns, the datagrams its transports receive, and (through asyncio's context capture)
the timers and tasks those create. Two things hang on that context: the node's ambient RNG
(library-internal randomness, see :mod:`simulations.determinism`) and the task owner, so that
:meth:`SimRuntime.crash` can cancel every task the node started, not only the ones passed to
:meth:`SimRuntime.spawn`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from node.core.addresses import Address
from node.core.runtime import Runtime
from simulations.determinism import AMBIENT_RNG
from simulations.loop import TASK_OWNER
from simulations.network import WILDCARDS, SimDatagramTransport, SimNetwork

T = TypeVar("T")

__all__ = ["BlockingCost", "SimRuntime", "derive_seed"]

# A fixed "now" so runs repeat, in the past: OpenMLS checks KeyPackage lifetimes against the
# system clock too, so simulated KeyPackages (made with a long lifetime, see simulations.engine)
# must have begun before the real today.
DEFAULT_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

BlockingCost = Callable[[Callable[[], Any]], float]
"""Simulated CPU seconds a blocking call costs (a hook for a cost model; 0 = free)."""


def derive_seed(scenario_seed: int, *labels: str) -> int:
    """A 64-bit seed for one stream of one node: a hash of the scenario seed and labels, so
    each node's randomness depends only on its own name, not on how many nodes came before."""
    text = "\x1f".join((str(scenario_seed), *labels)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


class SimRuntime:
    """A simulated node's clock, randomness, datagram sockets, executor and tasks.

    :param network: the network the node's host is on (the host is added if missing).
    :param host: the node's IP address on that network.
    :param seed: the scenario seed; the node's streams derive from it and ``host``.
    :param epoch_ms: the wall clock at virtual time 0.
    :param blocking_cost: simulated seconds each :meth:`run_blocking` call occupies the node's
        one (virtual) worker; None: blocking work takes no simulated time.
    :param incarnation: how many times this host's node has restarted; a restarted process
        draws fresh randomness (a durable identity comes from its data, not from here).
    """

    def __init__(
        self,
        network: SimNetwork,
        host: str,
        *,
        seed: int,
        epoch_ms: int = DEFAULT_EPOCH_MS,
        blocking_cost: BlockingCost | None = None,
        incarnation: int = 0,
    ) -> None:
        self.network = network
        self.host = host
        self.seed = seed
        self.incarnation = incarnation
        if host not in network.hosts:
            network.add_host(host)
        self.epoch_ms = epoch_ms
        life = str(incarnation)
        self._rng = random.Random(derive_seed(seed, host, life, "runtime"))  # noqa: S311 -- seeded on purpose
        self._ambient = random.Random(derive_seed(seed, host, life, "libraries"))  # noqa: S311 -- seeded on purpose
        self._blocking_cost = blocking_cost
        self._worker_free_at = 0.0
        # A dict, not a set: crash() cancels in the order the tasks began, never by address.
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._transports: list[SimDatagramTransport] = []
        self.crashed = False
        self.context = contextvars.Context()
        self.context.run(AMBIENT_RNG.set, self._ambient)
        self.context.run(TASK_OWNER.set, self)

    # --- clock -------------------------------------------------------------------------------

    def wall_ms(self) -> int:
        # The nanosecond nudge keeps 0.29 s from flooring to 289 ms (float products).
        return self.epoch_ms + int(asyncio.get_running_loop().time() * 1000 + 1e-6)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    # --- randomness ----------------------------------------------------------------------------

    def random_bytes(self, n: int, /) -> bytes:
        return self._rng.randbytes(n)

    def mls_rng_seed(self) -> bytes | None:
        return self._rng.randbytes(32)

    # --- datagrams and names -------------------------------------------------------------------

    async def open_datagram(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol], local: Address
    ) -> asyncio.DatagramTransport:
        """Bind on this node's host. ``local``'s host must be that address or a wildcard
        (``0.0.0.0``, ``::``); the transport reports the host's address as its sockname, which
        is what a peer must dial."""
        if self.crashed:
            raise OSError(100, "the simulated node has crashed")  # ENETDOWN
        address, port = local
        if address not in WILDCARDS and address != self.host:
            raise OSError(99, f"cannot bind {address}: this node's host is {self.host}")
        protocol = self.context.run(protocol_factory)
        transport = self.network.bind(self.host, port, protocol, context=self.context)
        self._transports.append(transport)
        return transport

    async def resolve_host(self, host: str, port: int, *, ipv6: bool) -> list[Address]:
        """Names from the network's table (:meth:`SimNetwork.add_name`); unknown: OSError."""
        addresses = self.network.names.get(host)
        if addresses is None:
            raise OSError(-2, f"simulated name {host!r} does not resolve")  # EAI_NONAME
        return [(a, port) for a in addresses if (":" in a) == ipv6]

    # --- blocking work and tasks ---------------------------------------------------------------

    def run_blocking(self, fn: Callable[[], T], /) -> Awaitable[T]:
        """Run ``fn`` now, inline; the future completes at once (or after the cost model's
        simulated time, one call after another as on the real runtime's single worker)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        cost = 0.0 if self._blocking_cost is None else self._blocking_cost(fn)
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            outcome = (False, exc)
        if cost <= 0.0:
            _settle(future, outcome)
        else:
            self._worker_free_at = max(loop.time(), self._worker_free_at) + cost
            loop.call_at(self._worker_free_at, _settle, future, outcome)
        return future

    def spawn(self, coro: Coroutine[Any, Any, T], /) -> asyncio.Task[T]:
        """A task in this node's context (its tasks are cancelled by :meth:`crash`)."""
        if self.crashed:
            coro.close()
            raise RuntimeError("the simulated node has crashed")
        return asyncio.get_running_loop().create_task(coro, context=self.context.copy())

    def adopt_task(self, task: asyncio.Task[Any]) -> None:
        """Called by the virtual loop for every task created in this node's context."""
        self._tasks[task] = None
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """This node's unfinished tasks."""
        return frozenset(self._tasks)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` in this node's context (so what it schedules belongs to the node)."""
        return self.context.run(fn, *args)

    # --- failure -------------------------------------------------------------------------------

    def crash(self, *, host_down: bool = True) -> None:
        """The node dies: every task it started is cancelled and every transport it opened
        aborted. ``host_down``: its host also goes down on the network (nothing in or out)."""
        self.crashed = True
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        if host_down:
            self.network.crash(self.host)

    def restarted(self) -> SimRuntime:
        """The runtime of the node's next life on the same host (brought back up if down)."""
        if not self.crashed:
            raise RuntimeError("crash the node before restarting it")
        self.network.restart(self.host)
        return SimRuntime(
            self.network,
            self.host,
            seed=self.seed,
            epoch_ms=self.epoch_ms,
            blocking_cost=self._blocking_cost,
            incarnation=self.incarnation + 1,
        )


def _settle(future: asyncio.Future[T], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _satisfies_protocol(runtime: SimRuntime) -> Runtime:
    return runtime  # mypy checks here that SimRuntime is a Runtime
