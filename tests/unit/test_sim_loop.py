"""The virtual-clock event loop: time jumps, timers keep their order, asyncio's timeouts work,
and nothing real (sockets, threads) is ever touched."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from simulations.loop import (
    JUMP_EPSILON,
    RealIOError,
    SimulationDeadlock,
    SimulationLivelock,
    SimulationTimeLimit,
    VirtualLoop,
    run_simulated,
    timer_rate,
)


def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    started = time.perf_counter()
    ended = run_simulated(main())
    assert time.perf_counter() - started < 0.5
    assert 3600 <= ended <= 3600 + 2 * JUMP_EPSILON


def test_a_jump_lands_one_microsecond_past_the_deadline() -> None:
    # Exact jumps livelock aioquic's loss detection (LIBRARY-FACTS); the epsilon is the cure.
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen: list[float] = []
        done = loop.create_future()
        loop.call_at(5.0, lambda: seen.append(loop.time()))
        loop.call_at(7.5, lambda: done.set_result(None))
        await done
        return [*seen, loop.time()]

    assert run_simulated(main()) == [5.0 + JUMP_EPSILON, 7.5 + JUMP_EPSILON]


def test_timers_fire_in_deadline_order_and_ties_in_scheduling_order() -> None:
    delays = [0.9, 0.1, 5.0, 0.5, 0.5, 3.0, 0.1, 0.0, 2.2]

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, int]] = []
        for index, delay in enumerate(delays):
            loop.call_later(delay, lambda i=index: fired.append((loop.time(), i)))
        await asyncio.sleep(10)
        return fired

    fired = run_simulated(main())
    expected = sorted(range(len(delays)), key=lambda i: (delays[i], i))
    assert [i for _, i in fired] == expected
    for at, index in fired:
        assert delays[index] <= at <= delays[index] + JUMP_EPSILON


def test_call_soon_runs_without_moving_the_clock() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1)
        before = loop.time()
        for _ in range(100):
            await asyncio.sleep(0)
        return [before, loop.time()]

    before, after = run_simulated(main())
    assert before == after


def test_asyncio_timeout_and_wait_for_expire_on_the_virtual_clock() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        first = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=2.5)
        return [first, loop.time()]

    first, second = run_simulated(main())
    assert 5 <= first <= 5 + 2 * JUMP_EPSILON
    assert 7.5 <= second <= 7.5 + 4 * JUMP_EPSILON


def test_waiting_for_what_can_never_come_is_a_deadlock_not_a_hang() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationDeadlock, match="nothing is ready or scheduled"):
        run_simulated(main())


def test_a_time_limit_stops_the_run_at_that_simulated_time() -> None:
    reached: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(1)
        finally:
            reached.append(loop.time())

    with pytest.raises(SimulationTimeLimit) as info:
        run_simulated(main(), time_limit=100.5)
    assert info.value.limit == 100.5
    assert 100.5 <= reached[0] <= 100.5 + JUMP_EPSILON


def test_leftover_tasks_are_cancelled_and_the_loop_closed() -> None:
    cancelled: list[bool] = []
    loop = VirtualLoop()

    async def background() -> None:
        try:
            await asyncio.sleep(1e9)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(1)

    run_simulated(main(), loop=loop)
    assert cancelled == [True]
    assert loop.is_closed()


def test_blocking_work_runs_inline_in_order() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        order: list[int] = []
        futures = [loop.run_in_executor(None, order.append, i) for i in range(5)]
        assert order == [0, 1, 2, 3, 4]  # already ran, before any await
        await asyncio.gather(*futures)
        failing = loop.run_in_executor(None, int, "x")
        with pytest.raises(ValueError, match="invalid literal"):
            await failing
        return order

    assert run_simulated(main()) == [0, 1, 2, 3, 4]


def test_no_real_socket_is_ever_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    from simulations.network import SimNetwork

    class NoSockets(Exception):
        pass

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NoSockets("a real socket was opened")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "socketpair", refuse)
    # The patch bites: what a stock selector loop builds its self-pipe from is refused.
    with pytest.raises(NoSockets):
        socket.socketpair()

    async def main() -> bytes:
        net = SimNetwork()
        net.add_host("10.0.0.1")
        net.add_host("10.0.0.2")
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result(data)

        rx = net.bind("10.0.0.2", 9, Sink())
        tx = net.bind("10.0.0.1", 0, asyncio.DatagramProtocol())
        tx.sendto(b"ping", ("10.0.0.2", 9))
        await asyncio.sleep(1)
        tx.close()
        rx.close()
        with pytest.raises(RealIOError):
            await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
        with pytest.raises(RealIOError):
            await asyncio.get_running_loop().getaddrinfo("example.org", 80)
        return await got

    assert run_simulated(main()) == b"ping"


def test_timer_rate_is_measured() -> None:
    # A floor far under the ~300 k/s measured on a 2-core machine, so it only catches a loop
    # that stopped jumping (which would take real seconds per timer).
    assert timer_rate(count=20_000, concurrent=200) > 10_000


def test_a_callback_re_arming_itself_at_the_same_instant_is_a_livelock() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def again() -> None:
            loop.call_at(loop.time(), again)  # due at once, forever: the clock never moves

        loop.call_soon(again)
        await asyncio.sleep(1)

    with pytest.raises(SimulationLivelock, match="without the clock moving"):
        run_simulated(main(), loop=VirtualLoop(livelock_turns=1_000))
