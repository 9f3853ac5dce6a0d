"""The one seam through which time, randomness, sockets, blocking work and tasks reach the
node, relay, discovery and MLS logic.

Library code never reads the wall clock, draws randomness, opens a socket, starts a thread or
creates a task on its own: it is handed a :class:`Runtime` and asks it. Only the command line
(and the code that opens a data directory for it) builds the real one, the transport
layer's ``RealRuntime``; the simulator builds one per simulated node over a
virtual clock and an in-memory network. There is deliberately no default anywhere: a seam with
a real default is one the simulator silently misses.

Timers (``asyncio.sleep``, ``asyncio.timeout``) need no seam of their own: they run on the
event loop's clock, and the simulator's loop jumps that clock. :meth:`Runtime.monotonic` is that
same clock, for code that compares instants itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from node.core.addresses import Address

if TYPE_CHECKING:  # types only: node.core imports no I/O at run time
    import asyncio

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Runs a blocking function (disk, Argon2, MLS with its fsync) off the event loop."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


class Clock(Protocol):
    """Wall-clock time in milliseconds since the Unix epoch (for timestamps, never timers)."""

    def __call__(self) -> int: ...


class RandomBytes(Protocol):
    """``n`` random bytes (cryptographic in the real runtime, seeded in a simulation)."""

    def __call__(self, n: int, /) -> bytes: ...


DatagramFactory = Callable[
    [Callable[[], "asyncio.DatagramProtocol"], Address],
    Awaitable["asyncio.DatagramTransport"],
]
"""Binds a datagram endpoint at ``local`` for the protocol the factory makes; the real one is a
UDP socket, the simulator's an in-memory network port."""


class Runtime(Protocol):
    """Everything a component may take from the world outside its own logic."""

    def wall_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch: timestamps, record and KeyPackage
        lifetimes."""
        ...

    def monotonic(self) -> float:
        """Seconds on the event loop's timer clock (comparable with its deadlines)."""
        ...

    def random_bytes(self, n: int, /) -> bytes:
        """``n`` random bytes: ids, nonces, keys, node ids."""
        ...

    def mls_rng_seed(self) -> bytes | None:
        """The seed of a new MLS client's random generator, or None for the operating
        system's generator. Only a simulation returns a seed, so its runs repeat exactly."""
        ...

    async def open_datagram(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol], local: Address
    ) -> asyncio.DatagramTransport:
        """A datagram endpoint bound at ``local`` (port 0: any free port)."""
        ...

    async def resolve_host(self, host: str, port: int, *, ipv6: bool) -> list[Address]:
        """The addresses a host name stands for (IP literals are not passed here)."""
        ...

    def run_blocking(self, fn: Callable[[], T], /) -> Awaitable[T]:
        """Run ``fn`` off the event loop, in submission order, and await its result."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, T], /) -> asyncio.Task[T]:
        """Run ``coro`` as a background task of this runtime's component."""
        ...
