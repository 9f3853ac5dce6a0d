"""``quicnprotochat sim``: runs of small scenarios through the real node, relay and DHT code,
reports a researcher can read, and the numbers a seed fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from node.app.cli import main
from simulations.engine import run_scenario
from simulations.scenario import load_scenario

CHAT = """
name = "chat"
seed = 3
duration_s = 150
[network]
nodes = 6
unreachable_share = 0.34
[relays]
count = 1
[workload]
groups = 2
group_size = 3
message_interval_s = 10
"""

LOOKUPS = """
name = "lookups"
seed = 5
duration_s = 600
[network]
nodes = 30
wan = { latency = { kind = "lognormal", median_ms = 30, sigma = 0.5 }, loss_share = 0.01 }
[dht]
enabled = true
only = true
lookups = 60
[params]
crashed = "dht.crashed_share"
"""


def scenario_file(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_run_reports_every_metric_and_writes_csv_json_and_plots(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, CHAT, "chat")
    out = tmp_path / "run"
    code, stdout, _ = run_cli("sim", "run", str(path), "--json", "--out", str(out))
    assert code == 0
    report = json.loads(stdout.strip().splitlines()[-1])
    assert {"scenario", "seed", "wall_s", "peak_rss_mb", "simulated_s", "metrics"} <= set(report)
    assert report["scenario"] == "chat" and report["simulated_s"] >= 150
    metrics = report["metrics"]
    assert metrics["messages_sent"] > 10
    assert metrics["delivery_ratio"] == 1.0 and metrics["lost"] == 0
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"]
    assert metrics["latency_ms"]["p95"] <= metrics["latency_ms"]["p99"]
    assert 0 < metrics["direct_share"] <= 1
    assert metrics["forks"] == 0 and metrics["duplicates"] == 0
    # Not exercised by this scenario: null, not a made-up number.
    assert metrics["lookup_success"] is None and metrics["lookup_hops_mean"] is None
    assert metrics["convergence_s"]["p50"] is None
    assert metrics["bytes_per_delivered_message"] > 200  # at least the message itself
    for name in ("report.json", "metrics.csv", "latencies.csv", "lost.csv", "lookups.csv"):
        assert (out / name).stat().st_size > 0
    latencies = (out / "latencies.csv").read_text().splitlines()
    assert len(latencies) == 1 + metrics["deliveries"]
    with Image.open(out / "latency_cdf.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_a_node_nobody_can_reach_loses_messages_and_the_report_says_why(tmp_path: Path) -> None:
    # Everyone behind NAT and no relay: nothing can be delivered, and every loss is explained.
    text = CHAT.replace("unreachable_share = 0.34", "unreachable_share = 0.9").replace(
        "count = 1", "count = 0"
    )
    result = run_scenario(load_scenario(str(scenario_file(tmp_path, text, "stranded"))))
    metrics = result.metrics
    assert metrics["delivery_ratio"] is not None and metrics["delivery_ratio"] < 1
    assert metrics["lost"] == len(result.lost) > 0
    assert sum(metrics["lost_by_cause"].values()) == metrics["lost"]
    assert all(x["cause"] for x in result.lost)


def test_the_same_seed_gives_the_same_numbers_and_another_seed_others(tmp_path: Path) -> None:
    path = str(scenario_file(tmp_path, LOOKUPS, "lookups"))
    first = run_scenario(load_scenario(path))
    again = run_scenario(load_scenario(path))
    other = run_scenario(load_scenario(path, [("seed", 6)]))
    assert first.metrics == again.metrics
    assert first.network == again.network
    assert first.network != other.network
    assert first.wire_digest == again.wire_digest != other.wire_digest
    assert first.metrics["lookup_success"] == 1.0
    assert first.metrics["wire_bytes"] == first.network["sent_bytes"] > 0
    assert "mls" not in first.fidelity  # a DHT-only run says it ran no messenger nodes
    assert first.metrics["lookup_hops_max"] <= 5  # ⌈log2 30⌉


def test_crashed_nodes_are_a_parameter_and_lookups_still_succeed(tmp_path: Path) -> None:
    path = str(scenario_file(tmp_path, LOOKUPS, "lookups"))
    result = run_scenario(load_scenario(path, [("crashed", 0.3)]))
    assert result.metrics["lookups"] == 60
    assert result.metrics["lookup_success"] >= 0.95


def test_a_bad_scenario_is_one_error_line(tmp_path: Path) -> None:
    code, _, stderr = run_cli("sim", "run", "nowhere")
    assert code == 1
    assert stderr.startswith("ERROR: no scenario 'nowhere'") and "Traceback" not in stderr
    code, _, stderr = run_cli("sim", "run", "lan-party", "--param", "network.nodes=-1")
    assert code == 1 and stderr.count("\n") == 1 and "network.nodes" in stderr


def test_list_names_the_shipped_scenarios() -> None:
    code, stdout, _ = run_cli("sim", "list")
    assert code == 0
    names = [line.split()[0] for line in stdout.splitlines()]
    assert names == ["calibration", "city", "dht-scale", "lan-party", "partition-heal"]


def test_compare_shows_what_differs_between_two_runs(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, LOOKUPS, "lookups")
    for name, lookups in (("a", "60"), ("b", "30")):
        out = str(tmp_path / name)
        code, _, _ = run_cli(
            "sim", "run", str(path), "--param", f"dht.lookups={lookups}", "--out", out
        )
        assert code == 0
    code, stdout, _ = run_cli("sim", "compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:-1]}
    assert rows["lookups"] == ["60", "30", "-30"]
    assert "lookup_success" not in rows  # equal (1.0 both), so not listed
    assert stdout.splitlines()[-1].endswith("metrics equal in both runs)")


@pytest.mark.slow
def test_a_sweep_runs_on_a_local_dask_cluster_and_merges_with_intervals(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, LOOKUPS.replace("lookups = 60", "lookups = 20"), "lookups")
    out = tmp_path / "sweep"
    code, stdout, _ = run_cli(
        "sim", "sweep", str(path), "--seeds", "1..2", "--param", "crashed=0,0.2",
        "--workers", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    points = result["points"]
    assert [p["params"] for p in points] == [{"crashed": 0}, {"crashed": 0.2}]
    assert all(p["seeds"] == 2 for p in points)
    assert points[0]["lookup_success"]["mean"] == 1.0
    assert points[0]["lookup_success"]["ci95"] is not None
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 4
    with Image.open(out / "lookup_success_vs_crashed.png") as image:
        assert image.format == "PNG"


def test_a_seeded_run_with_mls_repeats_exactly_in_other_processes(tmp_path: Path) -> None:
    # Real MLS (X-Wing), QUIC and the relay: every byte comes from the seed, so two processes
    # with different hash seeds (set orders) print the same numbers.
    path = scenario_file(tmp_path, CHAT, "chat")
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [str(Path(sys.executable).with_name("quicnprotochat")), "sim", "run", str(path), "--json",
             "--out", str(tmp_path / f"run{hash_seed}")],
            capture_output=True, text=True, env=env, timeout=300, check=True,
        )  # fmt: skip
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1])["metrics"])
    assert outputs[0] == outputs[1]
    assert outputs[0]["deliveries"] > 20 and outputs[0]["relay_envelopes"] > 0
