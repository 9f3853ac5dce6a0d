"""Real QUIC (the node's Endpoint, aioquic, mutual identity TLS, one-stream-per-call RPC) over
the simulated network on the virtual clock: durations that follow the RTT, partitions, NAT,
crashes, and runs that repeat bit for bit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node.core import wire
from node.core.errors import PeerUnreachableError
from node.core.identity import Identity
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint, EndpointConfig
from simulations.determinism import seeded_libraries
from simulations.loop import JUMP_EPSILON, VirtualLoop, run_simulated
from simulations.network import DropCause, Fixed, LinkProfile, NatConfig, SimNetwork
from simulations.runtime import SimRuntime

T = TypeVar("T")
A, B = "10.0.0.1", "10.0.0.2"
REPO = Path(__file__).resolve().parents[2]


async def echo_caller(caller: Caller, request: wire.Request) -> wire.Response:
    """Answers with the caller's proven key, so a test sees both ends authenticated."""
    return wire.FetchKeyPackageResult(caller.identity)


def run_checked(main: Coroutine[Any, Any, T], **kwargs: Any) -> T:
    """run_simulated, failing on anything the loop would only have logged (task exceptions
    never retrieved, callbacks that raised)."""
    loop = VirtualLoop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    result = run_simulated(main, loop=loop, **kwargs)
    assert errors == []
    return result


@dataclass
class Pair:
    net: SimNetwork
    ra: SimRuntime
    rb: SimRuntime
    alice: Identity
    bob: Identity
    ea: Endpoint
    eb: Endpoint


@contextlib.asynccontextmanager
async def pair(net: SimNetwork, seed: int = 1, config: EndpointConfig | None = None) -> Any:
    ra, rb = SimRuntime(net, A, seed=seed), SimRuntime(net, B, seed=seed)
    alice = Identity.from_seed(ra.random_bytes(32))
    bob = Identity.from_seed(rb.random_bytes(32))
    # Today's call sites take the datagram factory; the Runtime-taking ones come with the merge.
    ea = Endpoint(alice, echo_caller, ra, config)
    eb = Endpoint(bob, echo_caller, rb, config)
    await ea.start(A, 4433)
    await eb.start(B, 4433)
    try:
        yield Pair(net, ra, rb, alice, bob, ea, eb)
    finally:
        await ea.close()
        await eb.close()


def in_node(runtime: SimRuntime, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run a step of a node's work in the node's context (its randomness, its tasks)."""
    return runtime.spawn(coro)


@pytest.mark.parametrize("one_way", [0.05, 0.2])
def test_handshake_and_call_take_one_round_trip_each(one_way: float) -> None:
    async def main() -> tuple[float, float]:
        net = SimNetwork(default_link=LinkProfile(Fixed(one_way)))
        loop = asyncio.get_running_loop()
        async with pair(net) as p:

            async def dial_and_call() -> tuple[float, float]:
                started = loop.time()
                conn = await p.ea.dial(p.eb.local_address, p.bob.public_key)
                dialed = loop.time()
                assert await conn.call(wire.FetchKeyPackage(b"x")) == (
                    wire.FetchKeyPackageResult(p.alice.public_key)
                )
                return dialed - started, loop.time() - dialed

            return await in_node(p.ra, dial_and_call())

    dial, call = run_checked(main())
    rtt = 2 * one_way
    # QUIC's 1-RTT handshake: the client is ready when the server's first flight arrives.
    assert dial == pytest.approx(rtt, abs=20 * JUMP_EPSILON)
    assert call == pytest.approx(rtt, abs=20 * JUMP_EPSILON)


def test_a_dial_across_a_partition_fails_at_its_deadline_and_works_after_healing() -> None:
    async def main() -> tuple[float, int]:
        net = SimNetwork(default_link=LinkProfile(Fixed(0.05)))
        loop = asyncio.get_running_loop()
        async with pair(net) as p:
            net.partition("cut", [A], [B])
            started = loop.time()
            with pytest.raises(PeerUnreachableError, match="no handshake"):
                await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key, deadline=2.0))
            failed_after = loop.time() - started
            dropped = net.totals.dropped_datagrams[DropCause.PARTITION]
            net.heal("cut")
            conn = await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key))
            assert isinstance(
                await conn.call(wire.FetchKeyPackage(b"x")), wire.FetchKeyPackageResult
            )
            return failed_after, dropped

    failed_after, dropped = run_checked(main())
    assert failed_after == pytest.approx(2.0, abs=10 * JUMP_EPSILON)
    assert dropped >= 2  # the Initial and its retransmissions


def test_a_node_behind_nat_can_dial_out_but_cannot_be_dialed() -> None:
    async def main() -> None:
        net = SimNetwork(default_link=LinkProfile(Fixed(0.02)))
        net.add_host(A, nat=NatConfig(timeout=30.0))
        async with pair(net) as p:
            with pytest.raises(PeerUnreachableError):
                await in_node(p.rb, p.eb.dial(p.ea.local_address, p.alice.public_key, deadline=1.0))
            assert net.totals.dropped_datagrams[DropCause.NAT] >= 1
            conn = await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key))
            assert await conn.call(wire.FetchKeyPackage(b"x")) == (
                wire.FetchKeyPackageResult(p.alice.public_key)
            )

    run_checked(main())


def test_calls_to_a_crashed_node_fail_at_their_deadline() -> None:
    async def main() -> None:
        net = SimNetwork(default_link=LinkProfile(Fixed(0.02)))
        loop = asyncio.get_running_loop()
        async with pair(net) as p:
            conn = await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key))
            assert isinstance(
                await conn.call(wire.FetchKeyPackage(b"x")), wire.FetchKeyPackageResult
            )
            p.rb.crash()
            p.eb.abort()
            started = loop.time()
            with pytest.raises(PeerUnreachableError, match="no answer within"):
                await in_node(p.ra, conn.call(wire.FetchKeyPackage(b"x"), deadline=1.5))
            assert loop.time() - started == pytest.approx(1.5, abs=10 * JUMP_EPSILON)
            assert net.totals.dropped_datagrams[DropCause.CRASHED] >= 1

    run_checked(main())


# --- determinism ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuicRun:
    """What a seeded run produced: equal for equal seeds if the run is deterministic."""

    end_time: float
    dial_done: float
    counters: dict[str, int]
    trace_digest: str


def quic_scenario(seed: int = 1, *, seeded_libs: bool = True, lossy: bool = True) -> QuicRun:
    """Two nodes on a lossy, jittery network (or a clean 30 ms one): a handshake and five
    calls each way, then a graceful close."""
    from simulations.network import LogNormal

    async def main(net: SimNetwork) -> float:
        loop = asyncio.get_running_loop()
        async with pair(net, seed=seed) as p:
            conn = await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key))
            dial_done = loop.time()
            back = await in_node(p.rb, p.eb.dial(p.ea.local_address, p.alice.public_key))
            for _ in range(5):
                await in_node(p.ra, conn.call(wire.FetchKeyPackage(b"a" * 300)))
                await in_node(p.rb, back.call(wire.FetchKeyPackage(b"b" * 300)))
        return dial_done

    link = (
        LinkProfile(LogNormal(0.03, 0.4, floor=0.01), loss=0.05)
        if lossy
        else LinkProfile(Fixed(0.03))
    )
    net = SimNetwork(seed=seed, default_link=link, trace=True)
    wrap: Callable[[], Any] = (
        (lambda: seeded_libraries(seed)) if seeded_libs else contextlib.nullcontext
    )
    with wrap():
        loop = VirtualLoop()
        dial_done = run_simulated(main(net), loop=loop)
        end_time = loop.time()
    return QuicRun(end_time, dial_done, net.totals.as_dict(), net.trace_digest)


def test_a_seeded_quic_run_repeats_bit_for_bit() -> None:
    first, second = quic_scenario(seed=4), quic_scenario(seed=4)
    assert first == second
    assert first.counters["dropped_datagrams_loss"] > 0  # the loss path was exercised
    assert quic_scenario(seed=5).trace_digest != first.trace_digest


def test_without_seeded_libraries_the_bytes_differ() -> None:
    # aioquic's own randomness (connection ids, TLS randoms, key shares) changes every byte
    # but no size: on a clean fixed-latency link counters and times still repeat, the byte
    # trace does not. (On a lossy or jittery link the runs diverge entirely, since each
    # datagram's fate is keyed by its bytes.)
    first = quic_scenario(seed=4, seeded_libs=False, lossy=False)
    second = quic_scenario(seed=4, seeded_libs=False, lossy=False)
    assert first.counters == second.counters
    assert (first.end_time, first.dial_done) == (second.end_time, second.dial_done)
    assert first.trace_digest != second.trace_digest
    seeded = quic_scenario(seed=4, lossy=False)
    assert seeded == quic_scenario(seed=4, lossy=False)
    assert seeded.counters == first.counters


def test_a_seeded_quic_run_repeats_across_processes_and_hash_seeds() -> None:
    # Set iteration order of str/bytes differs between processes with other hash seeds; a run
    # that depended on it would differ here.
    code = (
        "import json, dataclasses\n"
        "from tests.integration.test_sim_quic import quic_scenario\n"
        "print(json.dumps(dataclasses.asdict(quic_scenario(seed=4))))\n"
    )
    outcomes = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outcomes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outcomes[0] == outcomes[1] == json.loads(json.dumps(asdict(quic_scenario(seed=4))))
