"""SimRuntime: the Runtime seam over the virtual clock, seeded randomness, the simulated network,
inline blocking work, and crashes that take every task of a node down."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from node.core.runtime import Runtime
from simulations.determinism import (
    AMBIENT_RNG,
    InsertionOrderedSet,
    ambient_bytes,
    seeded_libraries,
)
from simulations.loop import run_simulated
from simulations.network import LinkProfile, SimNetwork, Uniform
from simulations.runtime import SimRuntime, derive_seed

A, B = "10.0.0.1", "10.0.0.2"


def test_sim_runtime_is_a_runtime() -> None:
    runtime: Runtime = SimRuntime(SimNetwork(), A, seed=1)  # mypy checks the Protocol here
    assert runtime.mls_rng_seed() is not None


def test_clocks_follow_the_virtual_loop() -> None:
    async def main() -> tuple[int, float, int, float]:
        rt = SimRuntime(SimNetwork(), A, seed=1, epoch_ms=1_000_000)
        before = (rt.wall_ms(), rt.monotonic())
        await asyncio.sleep(90)
        return (*before, rt.wall_ms(), rt.monotonic())

    wall0, mono0, wall1, mono1 = run_simulated(main(), start=10.0)
    assert (wall0, mono0) == (1_010_000, 10.0)
    assert wall1 == 1_100_000
    assert mono1 == pytest.approx(100.0, abs=1e-5)


def test_randomness_is_per_node_and_repeats() -> None:
    def draws(hosts: list[str], seed: int) -> dict[str, tuple[bytes, bytes | None]]:
        net = SimNetwork()
        runtimes = [SimRuntime(net, h, seed=seed) for h in hosts]
        return {rt.host: (rt.random_bytes(16), rt.mls_rng_seed()) for rt in runtimes}

    alone = draws([A], seed=7)
    together = draws(["10.9.9.9", A, B], seed=7)
    assert alone[A] == together[A]  # adding nodes does not perturb a node's stream
    assert together[A] != together[B]
    assert draws([A], seed=8)[A] != alone[A]
    seed = alone[A][1]
    assert seed is not None and len(seed) == 32
    assert derive_seed(7, A, "runtime") != derive_seed(7, B, "runtime")


def test_open_datagram_binds_on_the_nodes_host() -> None:
    async def main() -> None:
        net = SimNetwork(default_link=LinkProfile(Uniform(0.01, 0.02)))
        ra, rb = SimRuntime(net, A, seed=1), SimRuntime(net, B, seed=1)
        got: asyncio.Future[tuple[bytes, Any]] = asyncio.get_running_loop().create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result((data, addr))

        tb = await rb.open_datagram(Sink, ("0.0.0.0", 7400))
        ta = await ra.open_datagram(asyncio.DatagramProtocol, (A, 0))
        assert tb.get_extra_info("sockname") == (B, 7400)
        ta.sendto(b"hi", (B, 7400))
        assert await got == (b"hi", ta.get_extra_info("sockname"))
        with pytest.raises(OSError, match="this node's host is"):
            await ra.open_datagram(asyncio.DatagramProtocol, ("127.0.0.1", 0))
        ta.close()
        tb.close()

    run_simulated(main())


def test_resolve_host_uses_the_simulated_name_table() -> None:
    async def main() -> None:
        net = SimNetwork()
        net.add_name("relay.example", ["10.0.0.9", "fd00::9"])
        rt = SimRuntime(net, A, seed=1)
        assert await rt.resolve_host("relay.example", 7000, ipv6=False) == [("10.0.0.9", 7000)]
        assert await rt.resolve_host("relay.example", 7000, ipv6=True) == [("fd00::9", 7000)]
        with pytest.raises(OSError, match="does not resolve"):
            await rt.resolve_host("nowhere.example", 1, ipv6=False)

    run_simulated(main())


def test_run_blocking_runs_inline_in_order_and_propagates_errors() -> None:
    async def main() -> None:
        rt = SimRuntime(SimNetwork(), A, seed=1)
        order: list[int] = []
        pending = [rt.run_blocking(lambda i=i: order.append(i) or i) for i in range(4)]
        assert order == [0, 1, 2, 3]
        assert await asyncio.gather(*pending) == [0, 1, 2, 3]
        with pytest.raises(ZeroDivisionError):
            await rt.run_blocking(lambda: 1 // 0)

    run_simulated(main())


def test_a_blocking_cost_model_occupies_one_virtual_worker() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        rt = SimRuntime(SimNetwork(), A, seed=1, blocking_cost=lambda fn: 0.25)
        finished: list[float] = []

        async def one() -> None:
            await rt.run_blocking(lambda: None)
            finished.append(loop.time())

        await asyncio.gather(one(), one(), one())
        return finished

    assert run_simulated(main()) == pytest.approx([0.25, 0.5, 0.75], abs=1e-5)


def test_crash_cancels_every_task_of_the_node_and_aborts_its_transports() -> None:
    async def main() -> None:
        net = SimNetwork()
        rt, other = SimRuntime(net, A, seed=1), SimRuntime(net, B, seed=1)
        lost: list[str] = []

        class Watch(asyncio.DatagramProtocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.append("lost")

        transport = await rt.open_datagram(Watch, (A, 0))
        indirect: list[asyncio.Task[None]] = []

        async def worker() -> None:
            # A task the node's code creates itself, not through spawn: still the node's.
            indirect.append(asyncio.get_running_loop().create_task(asyncio.sleep(1e6)))
            await asyncio.sleep(1e6)

        direct = rt.spawn(worker())
        survivor = other.spawn(asyncio.sleep(5))
        await asyncio.sleep(1)
        assert rt.tasks == {direct, indirect[0]}
        rt.crash()
        await asyncio.sleep(0)
        assert direct.cancelled() and indirect[0].cancelled()
        assert transport.is_closing() and lost == ["lost"]
        assert net.host(A).crashed
        assert not survivor.done()
        await survivor
        with pytest.raises(RuntimeError, match="crashed"):
            rt.spawn(asyncio.sleep(0))
        with pytest.raises(OSError, match="crashed"):
            await rt.open_datagram(asyncio.DatagramProtocol, (A, 0))

    run_simulated(main())


def test_seeded_libraries_patch_only_the_library_modules_and_only_while_active() -> None:
    import aioquic.quic.connection as quic_connection
    import aioquic.tls as tls
    import rpcudp.protocol as rpcudp_protocol

    assert quic_connection.os is os
    with seeded_libraries(3):
        assert quic_connection.os.urandom is ambient_bytes
        assert rpcudp_protocol.os.urandom is ambient_bytes
        assert os.urandom is not ambient_bytes  # the real module is untouched
        assert quic_connection.os.path is os.path  # everything else passes through
        assert quic_connection.set is InsertionOrderedSet  # type: ignore[attr-defined]
        outside = ambient_bytes(8)
        key = tls.x25519.X25519PrivateKey.generate()
        ec_key = tls.ec.generate_private_key(tls.ec.SECP256R1())
        rt = SimRuntime(SimNetwork(), A, seed=1)
        in_node = rt.run(ambient_bytes, 8)
        assert rt.run(AMBIENT_RNG.get) is not None
    assert quic_connection.os is os and tls.x25519.X25519PrivateKey.generate is not None
    assert "set" not in vars(quic_connection)  # the builtin again
    with seeded_libraries(3):
        assert ambient_bytes(8) == outside  # the fallback stream repeats
        assert tls.x25519.X25519PrivateKey.generate().private_bytes_raw() == (
            key.private_bytes_raw()
        )
        assert tls.ec.generate_private_key(tls.ec.SECP256R1()).private_numbers() == (
            ec_key.private_numbers()
        )
        assert SimRuntime(SimNetwork(), A, seed=1).run(ambient_bytes, 8) == in_node
        assert in_node != outside
    with pytest.raises(RuntimeError, match="outside seeded_libraries"):
        ambient_bytes(1)


def test_the_ordered_set_iterates_in_insertion_order_whatever_the_hashes() -> None:
    class Keyed:
        def __init__(self, h: int) -> None:
            self.h = h

        def __hash__(self) -> int:
            return self.h

    items = [Keyed(h) for h in (7, 3, 12, 0, 5)]  # a set would iterate by hash slot
    ordered = InsertionOrderedSet(items[:3])
    ordered.add(items[3])
    ordered.update([items[4], items[0]])
    assert list(ordered) == items and len(ordered) == 5 and items[2] in ordered
    ordered.discard(items[1])
    ordered.add(items[1])
    assert list(ordered) == [items[0], items[2], items[3], items[4], items[1]]
    assert InsertionOrderedSet([1, 2]) == InsertionOrderedSet([2, 1]) != InsertionOrderedSet([1])


def test_a_crashed_nodes_timers_no_longer_fire() -> None:
    async def main() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        net = SimNetwork()
        rt, other = SimRuntime(net, A, seed=1), SimRuntime(net, B, seed=1)
        mine: list[float] = []
        theirs: list[float] = []

        def tick(log: list[float]) -> None:
            log.append(loop.time())
            loop.call_later(1.0, tick, log)  # re-armed in the same (node's) context

        rt.run(loop.call_soon, tick, mine)
        other.run(loop.call_soon, tick, theirs)
        await asyncio.sleep(2.5)
        rt.crash()
        await asyncio.sleep(3)
        return mine, theirs

    mine, theirs = run_simulated(main())
    assert len(mine) == 3  # t = 0, 1, 2, then nothing
    assert len(theirs) == 6


def test_a_restarted_node_is_a_new_life_on_the_same_host() -> None:
    async def main() -> None:
        net = SimNetwork()
        first = SimRuntime(net, A, seed=1)
        drawn = first.random_bytes(8)
        await first.open_datagram(asyncio.DatagramProtocol, (A, 7400))
        with pytest.raises(RuntimeError, match="crash the node"):
            first.restarted()
        first.crash()
        second = first.restarted()
        assert second.incarnation == 1 and not net.host(A).crashed
        transport = await second.open_datagram(asyncio.DatagramProtocol, (A, 7400))
        assert transport.get_extra_info("sockname") == (A, 7400)  # the old port is free again
        redrawn = second.random_bytes(8)
        assert redrawn != drawn  # fresh randomness, yet as repeatable as the first life's
        assert SimRuntime(SimNetwork(), A, seed=1, incarnation=1).random_bytes(8) == redrawn
        transport.close()

    run_simulated(main())
