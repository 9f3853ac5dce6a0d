"""Delivery benchmark: send → shown-at-receiver latency and messages/s, direct and via a relay,
beside a raw QUIC request/response measured in the same run.

Run by hand, never in CI timing::

    .venv/bin/python benchmarks/delivery_bench.py            # a table
    .venv/bin/python benchmarks/delivery_bench.py --json     # one JSON object
    .venv/bin/python benchmarks/delivery_bench.py --profile direct   # cProfile of that path

Everything binds to 127.0.0.1. The nodes are real :class:`~node.app.node.Node` objects opened
from data directories (SQLCipher, MLS state file) in this process, each on a real runtime of
its own; the relay is a real child process (``python -m relay run``).

* raw: two of our own :class:`~node.transport.endpoint.Endpoint` objects (so the very TLS 1.3
  settings, certificates and framing the nodes use) on one warm connection, one stream per
  call: a ``deliver`` of one envelope of the size a chat message has, answered at once by a
  handler that stores and decrypts nothing.
* direct: alice and bob know each other's address; alice sends to their two-member group and
  bob's ``on_message`` fires. Latency: from just before ``send_text`` to that callback.
* relay: carol and dave never learn an address of each other (the Welcome reached carol
  through the relay too), so carol's outbox hands every envelope to the relay and dave's long
  poll picks it up.
* per_s: ``--burst`` messages with ``--window`` sends in flight, divided by the time from the
  first send to the last message shown.

The relay runs with its per-caller rate limits raised for the run: what is measured is the
path, not the allowance. (A default relay lets one caller put 5 envelopes/s into a mailbox after
a burst of 100, and counts a mailbox that its owner's acks emptied as a new one, so a reader who
keeps up costs the sender one "new mailbox" per message: 1/s after a burst of 60.)

``--waiting N`` has a stranger park N envelopes of groups nobody joins in each receiver's inbox
first (through the relay, which takes mail for anyone's mailbox; the receiver keeps at most
``max_deferred_per_sender``, 200, of groups it does not know): what every later message pays
for what waits there.

``--data-root DIR`` puts the data directories there (``/dev/shm`` shows what the code costs
without the disk: every step of the path is a synchronous write, ``docs/architecture.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.app.node import ChatMessage, Node
from node.app.profile import open_node
from node.app.router import RelayInfo
from node.core import wire
from node.core.identity import Identity
from node.core.keyfile import FAST_KDF
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint
from node.transport.runtime import RealRuntime

LOOPBACK = "127.0.0.1"
DEADLINE = 30.0  # seconds for any one message to show up before the run is called broken
CHAT_PAYLOAD = 300  # bytes: about the MLS ciphertext of a short text message
RELAY_LIMITS = """\
calls_per_second = 100000.0
call_burst = 100000
envelopes_per_mailbox_per_second = 100000.0
envelope_burst_per_mailbox = 100000
new_mailboxes_per_second = 100000.0
new_mailbox_burst = 100000
"""


class BenchError(Exception):
    """The run could not measure what it set out to (a message never arrived, say)."""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class PathResult:
    p50_ms: float
    p99_ms: float
    per_s: float

    def as_dict(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "per_s": round(self.per_s, 1),
        }


# --- raw QUIC round trip ----------------------------------------------------------------------


async def raw_rtt(count: int, warmup: int) -> list[float]:
    """Round trips (ms) of one-envelope ``deliver`` calls between two bare endpoints."""

    async def echo(caller: Caller, request: wire.Request) -> wire.Response:
        assert isinstance(request, wire.Deliver)
        return wire.DeliverResult(tuple(env.id for env in request.envelopes))

    server_id, client_id = Identity.generate(), Identity.generate()
    rt_server, rt_client = RealRuntime("bench-raw-s"), RealRuntime("bench-raw-c")
    server = Endpoint(server_id, echo, rt_server)
    client = Endpoint(client_id, None, rt_client)
    try:
        address = await server.start(LOOPBACK, 0)
        await client.start(LOOPBACK, 0)
        conn = await client.dial(address, server_id.public_key)
        samples = []
        for n in range(warmup + count):
            env = wire.Envelope(
                id=os.urandom(wire.ENVELOPE_ID_SIZE),
                recipient=server_id.mailbox,
                kind=wire.EnvelopeKind.APPLICATION,
                payload=os.urandom(CHAT_PAYLOAD),
                group_id=os.urandom(16),
                created_at_ms=n,
            )
            start = time.perf_counter()
            await conn.call(wire.Deliver((env,)))
            if n >= warmup:
                samples.append((time.perf_counter() - start) * 1000)
        return samples
    finally:
        await client.close()
        await server.close()
        rt_client.close()
        rt_server.close()


# --- nodes ------------------------------------------------------------------------------------


class Shown:
    """Records when each benchmark message reached the receiver's ``on_message``."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._changed = asyncio.Event()

    def __call__(self, message: ChatMessage) -> None:
        self.at.setdefault(message.text, time.perf_counter())
        self._changed.set()

    async def wait_for(self, texts: list[str]) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                while not all(t in self.at for t in texts):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            missing = sum(1 for t in texts if t not in self.at)
            raise BenchError(f"{missing} message(s) never showed up") from None


@dataclass
class Pair:
    sender: Node
    receiver: Node
    group_id: bytes
    shown: Shown


class Cast:
    """Nodes opened from their own data directories, each on its own real runtime."""

    def __init__(self, root: Path, relay: RelayInfo) -> None:
        self.root, self.relay = root, relay
        self.nodes: list[Node] = []
        self.runtimes: list[RealRuntime] = []

    async def open(self, name: str) -> Node:
        runtime = RealRuntime(f"bench-{name}")
        self.runtimes.append(runtime)
        node, _ = await open_node(
            self.root / name,
            secrets.token_bytes(16),
            runtime,
            name=name,
            relay=self.relay,
            kdf=FAST_KDF,
        )
        self.nodes.append(node)
        await node.start(LOOPBACK, 0)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
        for runtime in self.runtimes:
            runtime.close()


async def direct_pair(cast: Cast) -> Pair:
    alice, bob = await cast.open("alice"), await cast.open("bob")
    await alice.remember_peer(bob.public_key, "bob", bob.address)
    await bob.remember_peer(alice.public_key, "alice", alice.address)
    group_id = await alice.create_group()
    report = await alice.invite(group_id, [bob.public_key])
    if report.failed:
        raise BenchError(f"the invitation failed: {report.failed}")
    await wait_joined(bob, group_id)
    shown = Shown()
    bob.on_message = shown
    return Pair(alice, bob, group_id, shown)


async def relay_pair(cast: Cast) -> Pair:
    """carol sends, dave receives; neither ever has an address of the other."""
    carol, dave = await cast.open("carol"), await cast.open("dave")
    await carol.remember_peer(dave.public_key, "dave", None)
    await dave.remember_peer(carol.public_key, "carol", None)
    group_id = await dave.create_group()
    # Handed over out of band (as a directory would): fetching it from carol would be a direct
    # call, and each side would then know where the other listens.
    key_package = await carol.run(carol.mls.key_package)
    report = await dave.membership.add(group_id, [key_package])
    if report.failed:
        raise BenchError(f"the invitation failed: {report.failed}")
    await wait_joined(carol, group_id)
    shown = Shown()
    dave.on_message = shown
    return Pair(carol, dave, group_id, shown)


async def park_strangers_envelopes(receiver: Node, relay: RelayInfo, count: int) -> None:
    """A stranger leaves ``count`` envelopes of made-up groups in ``receiver``'s mailbox at the
    relay, and they wait in its inbox."""
    if count == 0:
        return
    stranger = Identity.generate()
    runtime = RealRuntime("bench-stranger")
    endpoint = Endpoint(stranger, None, runtime)
    try:
        await endpoint.start(LOOPBACK, 0)
        conn = await endpoint.dial(relay.address, relay.identity)
        now_ms = receiver.clock_ms()
        for n in range(0, count, 50):
            batch = tuple(
                wire.Envelope(
                    id=os.urandom(wire.ENVELOPE_ID_SIZE),
                    recipient=receiver.identity.mailbox,
                    kind=wire.EnvelopeKind.APPLICATION,
                    payload=os.urandom(CHAT_PAYLOAD),
                    group_id=os.urandom(16),
                    created_at_ms=now_ms,
                )
                for _ in range(min(50, count - n))
            )
            answer = await conn.call(wire.Deliver(batch))
            if not isinstance(answer, wire.DeliverResult):
                raise BenchError(f"the relay refused the stranger's envelopes: {answer}")
    finally:
        await endpoint.close()
        runtime.close()
    store, kept = receiver.store, min(count, receiver.limits.max_deferred_per_sender)
    try:
        async with asyncio.timeout(DEADLINE):
            while len(await receiver.run(store.pending_incoming)) < kept:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the node's long poll brings them, with no event
    except TimeoutError:
        raise BenchError("the stranger's envelopes did not reach the inbox") from None


async def wait_joined(node: Node, group_id: bytes) -> None:
    # Joining happens inside the node's own tasks, with nothing to await from outside.
    try:
        async with asyncio.timeout(DEADLINE):
            while group_id not in node.groups:  # noqa: ASYNC110 - a join sets no event
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise BenchError(f"{node.name} did not join the group") from None


async def measure(
    pair: Pair, label: str, count: int, warmup: int, burst: int, window: int
) -> PathResult:
    """Latencies one message at a time, then a windowed burst for messages/s."""
    latencies = []
    for n in range(warmup + count):
        text = f"{label} {n}"
        start = time.perf_counter()
        await pair.sender.send_text(pair.group_id, text)
        await pair.shown.wait_for([text])
        if n >= warmup:
            latencies.append((pair.shown.at[text] - start) * 1000)
    texts = [f"{label} burst {n}" for n in range(burst)]
    gate = asyncio.Semaphore(window)

    async def one(text: str) -> None:
        async with gate:
            await pair.sender.send_text(pair.group_id, text)

    start = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    await pair.shown.wait_for(texts)
    elapsed = max(pair.shown.at[t] for t in texts) - start
    return PathResult(statistics.median(latencies), percentile(latencies, 0.99), burst / elapsed)


# --- the relay --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_process(data_dir: Path) -> AsyncIterator[RelayInfo]:
    config = data_dir.parent / "relay.toml"

    def prepare() -> None:
        data_dir.mkdir(parents=True)
        config.write_text(RELAY_LIMITS)

    await asyncio.to_thread(prepare)
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=secrets.token_hex(16))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        "--config",
        str(config),
        "--listen",
        f"{LOOPBACK}:0",
        "--data-dir",
        str(data_dir),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        async with asyncio.timeout(DEADLINE):
            line = await proc.stdout.readline()
        if not line:
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            raise BenchError(f"the relay did not start: {err[-500:]}")
        ready = json.loads(line)
        host, _, port = ready["address"].rpartition(":")
        yield RelayInfo((host, int(port)), bytes.fromhex(ready["identity"]))
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raw = await raw_rtt(args.count, args.warmup)
    result: dict[str, Any] = {"raw_rtt_p50_ms": round(statistics.median(raw), 3)}
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="qpc-bench-", dir=args.data_root) as tmp:
        root = Path(tmp)
        async with relay_process(root / "relay") as relay:
            cast = Cast(root, relay)
            try:
                pairs = {"direct": await direct_pair(cast), "relay": await relay_pair(cast)}
                for label, pair in pairs.items():
                    await park_strangers_envelopes(pair.receiver, relay, args.waiting)
                    profiling = profiler is not None and args.profile == label
                    if profiling:
                        assert profiler is not None
                        profiler.enable()
                    measured = await measure(
                        pair, label, args.count, args.warmup, args.burst, args.window
                    )
                    if profiling:
                        assert profiler is not None
                        profiler.disable()
                    result[label] = measured.as_dict()
            finally:
                await cast.close()
    result["raw_rtt_p99_ms"] = round(percentile(raw, 0.99), 3)
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
    return result


def table(result: dict[str, Any], say: Callable[[str], None]) -> None:
    raw = result["raw_rtt_p50_ms"]
    say(
        f"raw QUIC request/response (our Endpoint, echo): p50 {raw:.2f} ms, "
        f"p99 {result['raw_rtt_p99_ms']:.2f} ms"
    )
    say(f"{'path':<8}{'p50 ms':>10}{'p99 ms':>10}{'msg/s':>10}{'p50/raw':>10}")
    for label in ("direct", "relay"):
        row = result[label]
        say(
            f"{label:<8}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['per_s']:>10.1f}"
            f"{row['p50_ms'] / raw:>9.1f}x"
        )
    direct = result["direct"]
    verdict = "met" if direct["p50_ms"] <= 2 * raw and direct["p99_ms"] <= 15 else "MISSED"
    say(f"target (direct p50 <= 2x raw, p99 <= 15 ms): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--count", type=int, default=300, help="messages timed one at a time")
    parser.add_argument("--warmup", type=int, default=20, help="untimed messages first")
    parser.add_argument("--burst", type=int, default=300, help="messages for messages/s")
    parser.add_argument("--window", type=int, default=16, help="sends in flight in the burst")
    parser.add_argument(
        "--waiting", type=int, default=0, help="envelopes a stranger parks in each inbox first"
    )
    parser.add_argument("--data-root", type=Path, help="where the data directories go [$TMPDIR]")
    parser.add_argument(
        "--profile", choices=("direct", "relay"), help="cProfile that path (to stderr)"
    )
    args = parser.parse_args()
    if min(args.count, args.burst, args.window) < 1 or min(args.warmup, args.waiting) < 0:
        print("ERROR: --count, --burst, --window must be positive", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args))
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = {k: result[k] for k in ("raw_rtt_p50_ms", "direct", "relay")}
        print(json.dumps(out))
    else:
        table(result, print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
