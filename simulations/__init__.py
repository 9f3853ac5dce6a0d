"""Run the real node, DHT and transport code over a simulated network on a virtual clock.

Pieces (DESIGN.md §10):

* :mod:`simulations.loop` — :class:`VirtualLoop`, an asyncio loop whose clock jumps to the next
  timer, and :func:`run_simulated` to run a scenario on one;
* :mod:`simulations.network` — :class:`SimNetwork`, in-memory datagrams with latency, loss,
  bandwidth, partitions, NAT filtering, crashes and traffic counters;
* :mod:`simulations.runtime` — :class:`SimRuntime`, the ``Runtime`` seam for one simulated node;
* :mod:`simulations.determinism` — :func:`seeded_libraries`, seeded randomness inside aioquic and
  rpcudp, so seeded runs repeat bit for bit.

A two-node run::

    net = SimNetwork(seed=1, default_link=LinkProfile(Fixed(0.05)))

    async def scenario() -> None:
        alice_rt, bob_rt = SimRuntime(net, "10.0.0.1", seed=1), SimRuntime(net, "10.0.0.2", seed=1)
        ...  # build Endpoint / DhtNode with the runtimes, await their work

    with seeded_libraries(1):
        run_simulated(scenario(), time_limit=3600)
"""

from __future__ import annotations

from simulations.determinism import seeded_libraries
from simulations.loop import (
    RealIOError,
    SimulationDeadlock,
    SimulationError,
    SimulationLivelock,
    SimulationTimeLimit,
    VirtualLoop,
    run_simulated,
)
from simulations.network import (
    DropCause,
    Fixed,
    LinkProfile,
    LogNormal,
    NatConfig,
    SimNetwork,
    TrafficCounters,
    Uniform,
)
from simulations.runtime import SimRuntime

__all__ = [
    "DropCause",
    "Fixed",
    "LinkProfile",
    "LogNormal",
    "NatConfig",
    "RealIOError",
    "SimNetwork",
    "SimRuntime",
    "SimulationDeadlock",
    "SimulationError",
    "SimulationLivelock",
    "SimulationTimeLimit",
    "TrafficCounters",
    "Uniform",
    "VirtualLoop",
    "run_simulated",
    "seeded_libraries",
]
