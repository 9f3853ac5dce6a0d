"""Runtimes for tests: the real one, with a wall clock the test may move."""

from __future__ import annotations

from collections.abc import Callable

from node.transport.runtime import RealRuntime


class ClockedRuntime(RealRuntime):
    """The real runtime (sockets, worker thread, tasks) whose wall clock the test sets, for
    expiry logic; timers still run on the event loop's own clock."""

    def __init__(self, clock: Callable[[], int], name: str = "qpc-test") -> None:
        super().__init__(name)
        self._clock = clock

    def wall_ms(self) -> int:
        return self._clock()


class Runtimes:
    """Makes one real runtime per component under test and closes them all afterwards."""

    def __init__(self) -> None:
        self._made: list[RealRuntime] = []

    def __call__(self, name: str = "qpc-test") -> RealRuntime:
        runtime = RealRuntime(name)
        self._made.append(runtime)
        return runtime

    def clocked(self, clock: Callable[[], int], name: str = "qpc-test") -> ClockedRuntime:
        runtime = ClockedRuntime(clock, name)
        self._made.append(runtime)
        return runtime

    def close(self) -> None:
        for runtime in self._made:
            runtime.close()
        self._made.clear()
