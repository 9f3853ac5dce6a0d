"""The real :class:`~node.core.runtime.Runtime`: the system clock, the operating system's
randomness, UDP sockets, one worker thread for blocking work, and the running event loop's tasks.

Built only by the command line and by the code that opens a data directory for it
(``node.app.profile``); everything below those takes the runtime it is given.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from node.core.addresses import Address

T = TypeVar("T")


class ThreadRunner:
    """One worker thread: blocking calls run in order, so a single SQLite handle is safe."""

    def __init__(self, name: str = "qpc-blocking") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class RealRuntime:
    """The world as it is. Call :meth:`close` when the component it serves has stopped."""

    def __init__(self, name: str = "qpc") -> None:
        self._runner = ThreadRunner(f"{name}-blocking")

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def random_bytes(self, n: int, /) -> bytes:
        return os.urandom(n)

    def mls_rng_seed(self) -> bytes | None:
        return None

    async def open_datagram(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol], local: Address
    ) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(protocol_factory, local_addr=local)
        return transport

    async def resolve_host(self, host: str, port: int, *, ipv6: bool) -> list[Address]:
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_DGRAM
        )
        return [(str(info[4][0]), port) for info in infos]

    def run_blocking(self, fn: Callable[[], T], /) -> Awaitable[T]:
        return self._runner(fn)

    def spawn(self, coro: Coroutine[Any, Any, T], /) -> asyncio.Task[T]:
        return asyncio.get_running_loop().create_task(coro)

    def close(self) -> None:
        """Wait for blocking work already submitted, then stop the worker thread."""
        self._runner.shutdown()
