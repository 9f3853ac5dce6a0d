"""Discovery benchmarks: mDNS discovery time, DHT lookups at several sizes, record validation.

Run by hand, never in CI timing::

    .venv/bin/python benchmarks/discovery_bench.py                 # sizes 20,100
    .venv/bin/python benchmarks/discovery_bench.py --sizes 20,100,1000 --json
    .venv/bin/python benchmarks/discovery_bench.py --no-lan --replay   # under a replay attack

Everything binds to 127.0.0.1 only; mDNS is pinned to it. Each DHT size runs in a fresh child
process so its peak memory (max RSS) is its own.

* LAN: time from an advertiser's ``start()`` to a browser's ADDED event (registration probes for
  about a second first, RFC 6762 §8.1), median and p95 over ``--lan-trials``.
* DHT: N in-process nodes (k = ``--ksize``, default 20; alpha = 3) bootstrap through random
  earlier nodes; records are published from random nodes and looked up from others; latency,
  crawl rounds ("hops") next to ⌈log2 N⌉, find_value RPCs sent ("asked"), and success. Records
  are published by random nodes on behalf of other identities, so every lookup crawls (only a
  node's own record is answered without asking; "local %" would count those at 0 hops).
  ``--replay``: before each record is published, a stock kademlia node stores an older, validly
  signed record of the same identity on every node; "stale %" counts lookups that return it.
* Validation: :func:`discovery.records.validate` calls per second on a typical signed record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kademlia.network import Server as StockServer

from discovery.dht import DhtConfig, DhtNode, dht_key
from discovery.lan import LanEventKind, compact_fingerprint
from discovery.mdns import MdnsService
from discovery.records import OwnRecord, RelayHint, validate
from node.core.hybrid_kem import generate_keypair
from node.core.identity import Identity
from node.transport.runtime import RealRuntime

LOOPBACK = "127.0.0.1"


class SeededRuntime(RealRuntime):
    """Real sockets and clocks; node ids and refresh targets from one seeded generator, so
    a benchmark's DHT has the same shape from run to run."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__("qpc-bench")
        self._rng = rng

    def random_bytes(self, n: int, /) -> bytes:
        return self._rng.randbytes(n)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- LAN ------------------------------------------------------------------------------------


async def lan_bench(trials: int) -> dict[str, Any]:
    observer_key = Identity.generate().public_key
    observer = MdnsService(
        RealRuntime(),
        interfaces=[LOOPBACK],
        identity_key=observer_key,
        display_name="observer",
        port=1,
        advertise=False,
    )
    await observer.start()
    times = []
    try:
        for trial in range(trials):
            key = Identity.generate().public_key
            fp = compact_fingerprint(key)
            advertiser = MdnsService(
                RealRuntime(),
                interfaces=[LOOPBACK],
                identity_key=key,
                display_name=f"bench{trial}",
                port=2,
            )
            started = time.perf_counter()
            await advertiser.start()
            async with asyncio.timeout(15):
                while True:
                    event = await observer.events.get()
                    if event.kind is LanEventKind.ADDED and event.peer.fingerprint == fp:
                        break
            times.append(time.perf_counter() - started)
            await advertiser.stop()
            async with asyncio.timeout(15):
                while True:
                    event = await observer.events.get()
                    if event.kind is LanEventKind.REMOVED and event.peer.fingerprint == fp:
                        break
    finally:
        await observer.stop()
    return {
        "trials": trials,
        "median_s": statistics.median(times),
        "p95_s": percentile(times, 0.95),
        "min_s": min(times),
    }


# --- DHT ------------------------------------------------------------------------------------


async def replay_everywhere(
    attacker: StockServer, nodes: list[DhtNode], key: bytes, signed: bytes
) -> None:
    """The stock kademlia ``attacker`` (no validation) stores ``signed`` on every node."""
    await asyncio.gather(
        *(attacker.protocol.store(n.address, attacker.node.id, key, signed) for n in nodes)
    )


async def dht_bench(
    size: int, lookups: int, records: int, seed: int, ksize: int, replay: bool = False
) -> dict[str, Any]:
    rng = random.Random(seed)
    config = DhtConfig(ksize=ksize)  # alpha = 3, 1 s RPC timeout
    runtime = SeededRuntime(rng)
    nodes = [DhtNode(runtime, config=config) for _ in range(size)]
    started = time.perf_counter()
    for node in nodes:
        await node.start(LOOPBACK, 0)
    for i, node in enumerate(nodes[1:], start=1):
        # Bootstrap through a random earlier node, as real joins would.
        await node.bootstrap([nodes[rng.randrange(i)].address], deadline=10.0)
    join_s = time.perf_counter() - started
    attacker = StockServer() if replay else None  # stays up: it answers lookups too
    if attacker is not None:
        await attacker.listen(0, interface=LOOPBACK)
        await attacker.bootstrap([nodes[0].address])

    _, envelope_key = generate_keypair()
    people = [Identity.from_seed(rng.randbytes(32)) for _ in range(records)]
    publish_times, stored, newest = [], [], {}
    for person in people:
        own = OwnRecord(person, envelope_key, addresses=[(LOOPBACK, rng.randrange(1024, 65535))])
        if attacker is not None:  # an older record, replayed to every node before publishing
            older = own.sign(int(time.time() * 1000))
            await replay_everywhere(attacker, nodes, dht_key(person.public_key), older)
        publisher = rng.choice(nodes)
        signed = own.sign(int(time.time() * 1000))
        assert own.current is not None
        newest[person.public_key] = own.current.record.sequence
        t0 = time.perf_counter()
        stored.append(await publisher.publish(signed))
        publish_times.append(time.perf_counter() - t0)

    latencies, hops, queried, found, local, stale = [], [], [], 0, 0, 0
    for _ in range(lookups):
        person = rng.choice(people)
        asker = rng.choice(nodes)
        t0 = time.perf_counter()
        result = await asker.lookup_detailed(person.public_key, deadline=5.0)
        latencies.append(time.perf_counter() - t0)
        found += result.record is not None
        stale += result.record is not None and (
            result.record.record.sequence != newest[person.public_key]
        )
        local += result.hops == 0 and result.record is not None
        hops.append(result.hops)
        queried.append(result.queried)
    remote_hops = [h for h in hops if h > 0] or [0]
    malformed = sum(n.stats().malformed_datagrams for n in nodes)
    for node in nodes:
        await node.stop()
    if attacker is not None:
        attacker.stop()
    return {
        "nodes": size,
        "ksize": ksize,
        "join_s": join_s,
        "records": records,
        "stored_on_median": statistics.median(stored),
        "publish_median_ms": 1000 * statistics.median(publish_times),
        "lookups": lookups,
        "replayed_older": replay,
        "success_pct": 100 * found / lookups,
        "stale_pct": 100 * stale / lookups,
        "local_pct": 100 * local / lookups,
        "latency_median_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * percentile(latencies, 0.95),
        "hops_mean": statistics.mean(remote_hops),
        "hops_max": max(hops),
        "log2_n": math.ceil(math.log2(size)),
        "queried_mean": statistics.mean(queried),
        "queried_max": max(queried),
        "malformed_datagrams": malformed,
        "peak_rss_mb": max_rss_mb(),
    }


def dht_in_child(
    size: int, lookups: int, records: int, seed: int, ksize: int, replay: bool
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one-dht", str(size), "--lookups", str(lookups),
         "--records", str(records), "--seed", str(seed), "--ksize", str(ksize)]
        + (["--replay"] if replay else []),
        capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- validation -----------------------------------------------------------------------------


def validation_bench(seconds: float = 1.0) -> dict[str, Any]:
    identity = Identity.generate()
    _, envelope_key = generate_keypair()
    own = OwnRecord(
        identity,
        envelope_key,
        addresses=[("192.0.2.1", 4433), ("2001:db8::1", 4433)],
        relay_hints=[RelayHint("relay.example.org", 7000, bytes(32))],
    )
    now = int(time.time() * 1000)
    signed = own.sign(now)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            validate(signed, now)
        count += 100
    elapsed = time.perf_counter() - started
    return {"record_bytes": len(signed), "per_second": count / elapsed}


# --- output ---------------------------------------------------------------------------------


def print_tables(report: dict[str, Any]) -> None:
    if "lan" in report:
        lan = report["lan"]
        print(f"\nLAN discovery (mDNS on {LOOPBACK}, advertise -> seen, {lan['trials']} trials)")
        print(f"  median {lan['median_s']:.3f} s   p95 {lan['p95_s']:.3f} s", end="")
        print(f"   min {lan['min_s']:.3f} s")
    if report.get("dht"):
        replayed = (
            ", older records replayed everywhere" if report["dht"][0]["replayed_older"] else ""
        )
        print(f"\nDHT on loopback (k={report['dht'][0]['ksize']}, alpha=3{replayed})")
        header = (
            f"{'nodes':>6} {'join s':>7} {'lookups':>7} {'ok %':>6} {'stale %':>7} {'local %':>7} "
            f"{'med ms':>7} {'p95 ms':>7} {'hops':>5} {'max':>4} {'⌈log2N⌉':>8} "
            f"{'asked':>6} {'max':>4} {'RSS MB':>7}"
        )
        print(header)
        print("-" * len(header))
        for row in report["dht"]:
            print(
                f"{row['nodes']:>6} {row['join_s']:>7.1f} {row['lookups']:>7} "
                f"{row['success_pct']:>6.1f} {row['stale_pct']:>7.1f} {row['local_pct']:>7.1f} "
                f"{row['latency_median_ms']:>7.2f} {row['latency_p95_ms']:>7.2f} "
                f"{row['hops_mean']:>5.2f} {row['hops_max']:>4} {row['log2_n']:>8} "
                f"{row['queried_mean']:>6.1f} {row['queried_max']:>4} {row['peak_rss_mb']:>7.0f}"
            )
        print("  stale = lookups that found a record older than the newest published;")
        print("  hops = crawl rounds of lookups that left the asker (mean), max over all; the")
        print("  last round asks the rest of the k nearest for a newer record (RecordCrawl);")
        print("  asked = find_value RPCs per lookup (mean, max); a lookup of a record the asker")
        print("  holds crawls too: only a node's own record is answered locally (local %)")
    val = report["validation"]
    print(f"\nRecord validation: {val['per_second']:,.0f} records/s ({val['record_bytes']} B each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,100", help="DHT sizes, comma-separated")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--lan-trials", type=int, default=10)
    parser.add_argument("--no-lan", action="store_true", help="skip the mDNS measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ksize", type=int, default=20, help="Kademlia k (bucket size)")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="a stock kademlia node replays an older record of each person to every node first",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--one-dht", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_dht:
        result = asyncio.run(
            dht_bench(args.one_dht, args.lookups, args.records, args.seed, args.ksize, args.replay)
        )
        print(json.dumps(result))
        return

    report: dict[str, Any] = {"validation": validation_bench()}
    if not args.no_lan:
        report["lan"] = asyncio.run(lan_bench(args.lan_trials))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report["dht"] = [
        dht_in_child(
            size, args.lookups, min(args.records, size), args.seed, args.ksize, args.replay
        )
        for size in sizes
    ]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
