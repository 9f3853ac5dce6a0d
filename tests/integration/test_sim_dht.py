"""The real peer-record DHT (discovery.dht over kademlia 2.2.3 and rpcudp) on the simulated
network: 50 nodes bootstrap, publish signed records and find each other's, repeatably."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from discovery.dht import DhtConfig, DhtNode
from discovery.records import OwnRecord
from node.core.identity import Identity
from simulations.determinism import seeded_libraries
from simulations.loop import VirtualLoop, run_simulated
from simulations.network import LinkProfile, SimNetwork, Uniform
from simulations.runtime import SimRuntime
from tests.discovery_support import ENVELOPE_KEY

REPO = Path(__file__).resolve().parents[2]
DHT_PORT = 7400
NODE_PORT = 4433


@dataclass(frozen=True)
class DhtRun:
    lookups: int
    found: int  # lookups that returned the right record (the one the owner published)
    min_stored: int  # fewest nodes that accepted any one publish
    mean_hops: float
    bootstrapped_at: float
    end_time: float
    counters: dict[str, int]
    trace_digest: str
    loop_errors: int
    wall_seconds: float


def host_of(i: int) -> str:
    return f"10.{i // 250}.{i % 250}.1"


def dht_scenario(
    size: int = 50, *, seed: int = 3, lookups_per_node: int | None = 5, ksize: int = 20
) -> DhtRun:
    """``size`` nodes on a 10 to 50 ms network with no loss: each bootstraps through node 0,
    publishes its signed record, then looks up ``lookups_per_node`` others (None: all)."""

    async def main(net: SimNetwork) -> tuple[int, int, int, float, float]:
        loop = asyncio.get_running_loop()
        runtimes = [SimRuntime(net, host_of(i), seed=seed) for i in range(size)]
        people = [Identity.from_seed(rt.random_bytes(32)) for rt in runtimes]
        nodes = [DhtNode(rt, config=DhtConfig(ksize=ksize)) for rt in runtimes]
        try:
            for rt, node in zip(runtimes, nodes, strict=True):
                await rt.spawn(node.start(rt.host, DHT_PORT))
            for rt, node in zip(runtimes[1:], nodes[1:], strict=True):
                assert await rt.spawn(node.bootstrap([nodes[0].address])) == 1
            bootstrapped_at = loop.time()
            stored = []
            for rt, node, person in zip(runtimes, nodes, people, strict=True):
                own = OwnRecord(person, ENVELOPE_KEY, addresses=[(rt.host, NODE_PORT)])
                stored.append(await rt.spawn(node.publish(own.sign(rt.wall_ms()))))
            found = 0
            asked = 0
            hops: list[int] = []

            async def look_up(i: int) -> None:
                nonlocal found, asked
                others = [j for j in range(size) if j != i]
                if lookups_per_node is not None:
                    others = [(i + 1 + 7 * k) % size for k in range(lookups_per_node)]
                for j in others:
                    result = await nodes[i].lookup_detailed(people[j].public_key, deadline=10.0)
                    asked += 1
                    hops.append(result.hops)
                    if result.record is not None and result.record.record.dial_addresses == (
                        (host_of(j), NODE_PORT),
                    ):
                        found += 1

            await asyncio.gather(*(runtimes[i].spawn(look_up(i)) for i in range(size)))
            return asked, found, min(stored), sum(hops) / len(hops), bootstrapped_at
        finally:
            for node in nodes:
                await node.stop()

    net = SimNetwork(seed=seed, default_link=LinkProfile(Uniform(0.01, 0.05)), trace=True)
    loop = VirtualLoop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    started = time.perf_counter()
    with seeded_libraries(seed):
        asked, found, min_stored, mean_hops, bootstrapped_at = run_simulated(
            main(net), loop=loop, time_limit=3600
        )
    return DhtRun(
        asked,
        found,
        min_stored,
        mean_hops,
        bootstrapped_at,
        loop.time(),
        net.totals.as_dict(),
        net.trace_digest,
        len(errors),
        time.perf_counter() - started,
    )


@pytest.fixture(scope="module")
def fifty() -> DhtRun:
    return dht_scenario(50)


def test_fifty_nodes_find_every_record_they_look_up(fifty: DhtRun) -> None:
    assert fifty.lookups == 250
    assert fifty.found == fifty.lookups  # 100% with no loss
    assert fifty.min_stored >= 10  # every record reached many of its k = 20 nearest
    assert fifty.mean_hops > 0  # lookups walked the DHT, not only local storage
    assert fifty.loop_errors == 0
    assert fifty.counters["dropped_datagrams_no-listener"] == 0
    assert fifty.counters["delivered_datagrams"] == fifty.counters["sent_datagrams"]


def test_the_same_seeded_dht_run_repeats_exactly(fifty: DhtRun) -> None:
    again = dht_scenario(50)
    assert (again.counters, again.end_time, again.trace_digest) == (
        fifty.counters,
        fifty.end_time,
        fifty.trace_digest,
    )


@pytest.mark.slow
def test_fifty_nodes_find_all_of_each_others_records() -> None:
    run = dht_scenario(50, lookups_per_node=None)
    assert run.lookups == 50 * 49
    assert run.found == run.lookups


@pytest.mark.slow
def test_the_seeded_dht_run_repeats_across_processes_and_hash_seeds(fifty: DhtRun) -> None:
    code = (
        "from tests.integration.test_sim_dht import dht_scenario\n"
        "r = dht_scenario(50)\n"
        "print(r.end_time, r.trace_digest)\n"
    )
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
            check=True,
        )
        assert done.stdout.split() == [repr(fifty.end_time), fifty.trace_digest]
