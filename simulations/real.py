"""Calibration: a small scenario run as real processes on loopback, to check the simulator.

A relay process (``python -m relay run``) and one process per node
(:mod:`simulations.real_node`) run on 127.0.0.1 in real time. Groups form the way the simulator
forms them (KeyPackages handed over out of band), members send on the same kind of Poisson
schedule, and arrivals are timed with the machine's one clock. A node the scenario puts
behind NAT filters its inbound datagrams as the simulator's NAT does (``real_node --nat``):
it can dial out, and it can be reached only from where it sent recently.

Only small scenarios run this way: at most 12 nodes and one relay, no churn, no partitions, no
DHT. The metrics are the simulator's (:class:`~simulations.metrics.Metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.engine import drain_seconds
from simulations.metrics import Metrics, Sent
from simulations.runtime import derive_seed
from simulations.scenario import Scenario, ScenarioError

__all__ = ["MAX_REAL_NODES", "RealResult", "run_real"]

MAX_REAL_NODES = 12
READY_DEADLINE = 60.0


@dataclass
class RealResult:
    metrics: dict[str, Any]
    latencies_by_path: dict[str, list[float]]


@dataclass
class _Process:
    name: str
    proc: asyncio.subprocess.Process
    key: str = ""
    address: str = ""
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    async def order(self, **order: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(order) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, deadline: float = READY_DEADLINE) -> dict[str, Any]:
        async with asyncio.timeout(deadline):
            while True:
                item = await self.events.get()
                if item["event"] == event:
                    return item


def check_real(scenario: Scenario) -> None:
    problems = []
    if scenario.network.nodes > MAX_REAL_NODES:
        problems.append(f"at most {MAX_REAL_NODES} nodes")
    if scenario.relays.count > 1:
        problems.append("at most one relay")
    if scenario.churn is not None or scenario.partitions or scenario.dht.enabled:
        problems.append("no churn, partitions or DHT")
    if scenario.workload.membership_change_interval_s:
        problems.append("no membership changes")
    if problems:
        raise ScenarioError(f"{scenario.name}: a real-process run takes " + ", ".join(problems))


@contextlib.asynccontextmanager
async def _relay(workdir: Path) -> AsyncIterator[tuple[str, str]]:
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=secrets.token_hex(16))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "run", "--listen", "127.0.0.1:0",
        "--data-dir", str(workdir / "relay"), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(READY_DEADLINE):
            ready = json.loads(await proc.stdout.readline())
        yield ready["address"], ready["identity"]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _start_node(name: str, relay: tuple[str, str] | None, nat: float | None) -> _Process:
    args = [sys.executable, "-m", "simulations.real_node", name]
    if relay is not None:
        args += ["--relay", *relay]
    if nat is not None:
        args += ["--nat", str(nat)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    node = _Process(name, proc)

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            await node.events.put(json.loads(line))

    node.reader = asyncio.get_running_loop().create_task(read())
    ready = await node.expect("ready")
    node.key, node.address = ready["key"], ready["address"]
    return node


async def _run(scenario: Scenario, workdir: Path) -> RealResult:
    rng = random.Random(derive_seed(scenario.seed, "engine"))  # noqa: S311 - a seeded schedule
    n = scenario.network.nodes
    unreachable = set(rng.sample(range(n), round(scenario.network.unreachable_share * n)))
    metrics = Metrics()
    latencies: dict[str, list[float]] = {"direct": [], "relay": []}
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(_relay(workdir)) if scenario.relays.count else None
        nat = scenario.network.nat_timeout_s
        nodes = [
            await _start_node(f"n{i}", relay, nat if i in unreachable else None) for i in range(n)
        ]
        stack.push_async_callback(_stop_all, nodes)
        relay_order = [relay[0], relay[1]] if relay else None
        for node in nodes:
            for other in nodes:
                if other is not node:
                    await node.order(
                        cmd="peer", key=other.key, name=other.name, address=other.address,
                        relay=relay_order,
                    )  # fmt: skip
        groups: list[tuple[str, list[int]]] = []
        for _ in range(scenario.workload.groups):
            chosen = rng.sample(range(n), scenario.workload.group_size)
            kps = []
            for i in chosen[1:]:
                await nodes[i].order(cmd="key_package")
                kps.append((await nodes[i].expect("key_package"))["data"])
            await nodes[chosen[0]].order(cmd="create_group", key_packages=kps)
            group_id = (await nodes[chosen[0]].expect("group"))["id"]
            for i in chosen[1:]:
                await _joined(nodes[i], group_id)
            groups.append((group_id, chosen))
        loop = asyncio.get_running_loop()
        log = _EventLog()
        collectors = [loop.create_task(log.collect(node, i)) for i, node in enumerate(nodes)]
        sent = 0
        stop_s = scenario.duration_s - drain_seconds(scenario.duration_s)
        schedule = []
        for g, (_, chosen) in enumerate(groups):
            for member in chosen:
                # The simulator's own per-member stream, so both runs send on one schedule.
                sends = random.Random(derive_seed(scenario.seed, "sends", str(member), str(g)))  # noqa: S311
                t = scenario.workload.start_s
                while True:
                    t += sends.expovariate(1.0 / scenario.workload.message_interval_s)
                    if t >= stop_s:
                        break
                    schedule.append((t, g, member))
        started = loop.time()
        for t, g, member in sorted(schedule):
            await asyncio.sleep(max(0.0, started + t - loop.time()))
            group_id, chosen = groups[g]
            message_id = f"m{sent}"
            sent += 1
            text = (message_id + "|").ljust(scenario.workload.message_bytes, "x")
            recipients = frozenset(i for i in chosen if i != member)
            metrics.message_sent(Sent(message_id, g, member, 0.0, recipients))
            await nodes[member].order(cmd="send", group=group_id, text=text)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, started + scenario.duration_s - loop.time())):
                await log.wait_for(metrics.expected())
        for task in collectors:
            task.cancel()
    log.apply(metrics, latencies)
    for message_id, recipient in metrics.undelivered():
        metrics.lost[(message_id, recipient)] = "not shown within the run"
    return RealResult(metrics.summary(), latencies)


async def _joined(node: _Process, group_id: str) -> None:
    while (await node.expect("joined"))["id"] != group_id:
        pass


class _EventLog:
    """What the node processes reported; matched up once the run is over (a sender's "sent"
    line and the recipients' arrivals come on different pipes, in any order)."""

    def __init__(self) -> None:
        self.sent_at: dict[str, float] = {}
        self.arrivals: list[tuple[str, int, float, str]] = []
        self._seen: set[tuple[str, int]] = set()
        self._changed = asyncio.Event()

    async def collect(self, node: _Process, index: int) -> None:
        while True:
            event = await node.events.get()
            if event["event"] == "sent":
                self.sent_at[event["id"]] = event["at_ms"] / 1000
            elif event["event"] == "message":
                self.arrivals.append((event["id"], index, event["at_ms"] / 1000, event["path"]))
                self._seen.add((event["id"], index))
                self._changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self._seen) < count:
            self._changed.clear()
            await self._changed.wait()

    def apply(self, metrics: Metrics, latencies: dict[str, list[float]]) -> None:
        for message_id, at in self.sent_at.items():
            sent = metrics.sent.get(message_id)
            if sent is not None:
                metrics.sent[message_id] = Sent(
                    sent.message_id, sent.group, sent.sender, at, sent.recipients
                )
        for message_id, index, at, path in sorted(self.arrivals, key=lambda a: a[2]):
            if message_id not in self.sent_at:
                continue
            before = len(metrics.arrived)
            metrics.message_arrived(message_id, index, at, path)
            if len(metrics.arrived) > before:
                latencies.setdefault(path, []).append((at - self.sent_at[message_id]) * 1000)


async def _stop_all(nodes: list[_Process]) -> None:
    for node in nodes:
        with contextlib.suppress(ConnectionError):
            await node.order(cmd="stop")
    for node in nodes:
        try:
            async with asyncio.timeout(10):
                await node.proc.wait()
        except TimeoutError:
            node.proc.kill()
            await node.proc.wait()
        if node.reader is not None:
            node.reader.cancel()


def run_real(scenario: Scenario) -> RealResult:
    """Run ``scenario`` as real processes on loopback (in real time)."""
    check_real(scenario)
    with tempfile.TemporaryDirectory(prefix="qpc-real-") as tmp:
        return asyncio.run(_run(scenario, Path(tmp)))
