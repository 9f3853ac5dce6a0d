"""The seams through which time and blocking work reach node, relay and discovery logic.

The simulator replaces both: logic never reads the wall clock or starts threads
itself, it is handed a :class:`Clock` and a :class:`BlockingRunner`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Runs a blocking function (disk, Argon2) off the event loop and awaits its result."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


class Clock(Protocol):
    """Wall-clock time in milliseconds since the Unix epoch (for timestamps, never timers)."""

    def __call__(self) -> int: ...
