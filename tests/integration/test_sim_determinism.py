"""A seeded simulation run repeats bit for bit: in one process whatever sits where in memory,
and in other processes whatever their hash seeds (the order of sets of str and bytes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from node.core import wire
from simulations.determinism import seeded_libraries
from simulations.loop import VirtualLoop, run_simulated
from simulations.network import LinkProfile, LogNormal, SimNetwork
from tests.integration.test_sim_quic import in_node, pair

REPO = Path(__file__).resolve().parents[2]

# Big messages through one relay to members behind NAT, and membership changes: several
# multi-packet calls in flight on one connection at once, which is where the order of
# aioquic's streams showed (seen first in a 200-node city).
BURST = """
name = "burst"
seed = 1
duration_s = 120
[network]
nodes = 12
unreachable_share = 0.5
wan = { latency = { kind = "lognormal", median_ms = 30, sigma = 0.5 }, loss_share = 0.01 }
[relays]
count = 1
[workload]
groups = 3
group_size = 6
message_interval_s = 6
message_bytes = 4000
start_s = 1
membership_change_interval_s = 20
"""


def calls_together(seed: int, ballast: int) -> str:
    """Three 6 KB calls at once on one connection, three times, on a lossy jittery link;
    the trace digest of every datagram. ``ballast`` objects are kept alive meanwhile, so the
    streams' objects land at other addresses (their default hash)."""
    kept = [bytearray(40) for _ in range(ballast)]

    async def main(net: SimNetwork) -> None:
        async with pair(net, seed=seed) as p:
            conn = await in_node(p.ra, p.ea.dial(p.eb.local_address, p.bob.public_key))
            for _ in range(3):
                calls = [
                    in_node(p.ra, conn.call(wire.FetchKeyPackage(bytes([i]) * 6000)))
                    for i in range(3)
                ]
                await asyncio.gather(*calls)

    link = LinkProfile(LogNormal(0.03, 0.4, floor=0.01), loss=0.05)
    net = SimNetwork(seed=seed, default_link=link, trace=True)
    with seeded_libraries(seed):
        run_simulated(main(net), loop=VirtualLoop())
    assert len(kept) == ballast
    return net.trace_digest


def test_calls_sent_together_leave_in_one_order_wherever_their_streams_sit_in_memory() -> None:
    # aioquic requeues the streams one transmit served in the order of a set of them, that
    # is by address; that order decided which call's bytes went first.
    digests = {calls_together(4, ballast) for ballast in range(0, 64, 7)}
    assert len(digests) == 1
    assert calls_together(5, 0) not in digests  # the digest does see the seed


def _run(scenario: Path, out: Path, hash_seed: str) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=path)
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("quicnprotochat")), "sim", "run", str(scenario), "--json",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


def test_a_seeded_run_repeats_exactly_in_processes_with_other_hash_seeds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "burst.toml"
    path.write_text(BURST)
    runs = [_run(path, tmp_path / f"run{seed}", seed) for seed in ("1", "2", "3")]
    reports: list[dict[str, Any]] = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
        report = json.loads(stdout.strip().splitlines()[-1])
        # Only the cost of a run may differ between runs (the check says so).
        del report["wall_s"], report["peak_rss_mb"]
        reports.append(report)
    assert reports[0] == reports[1] == reports[2]
    metrics = reports[0]["metrics"]
    # The run exercised what made runs differ: the relay, changes, big multi-packet calls.
    assert metrics["relay_envelopes"] > 10 and metrics["membership_changes"] >= 5
    assert metrics["deliveries"] > 500
    # The digest covers every datagram of the run, not a sample.
    assert int(reports[0]["wire_digest"].split(":")[0]) > 5 * metrics["deliveries"]
