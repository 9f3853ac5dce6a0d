"""Real implementations of the :mod:`node.core.runtime` seams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ThreadRunner:
    """One worker thread: blocking calls run in order, so a single SQLite handle is safe."""

    def __init__(self, name: str = "qpc-blocking") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000
