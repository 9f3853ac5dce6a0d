"""The simulator against the real thing: one small scenario as real processes on loopback
(a relay process and six node processes) and simulated; they must tell the same story."""

from __future__ import annotations

import json

from click.testing import CliRunner

from node.app.cli import main
from simulations.cli import agreement


def test_the_simulator_agrees_with_real_processes_on_delivery_and_path_latency() -> None:
    result = CliRunner().invoke(main, ["sim", "calibrate", "calibration", "--json"])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    simulated, real = report["simulated"], report["real"]
    assert real["delivery_ratio"] == simulated["delivery_ratio"] == 1.0
    for metrics in (simulated, real):
        by_path = metrics["latency_ms_by_path"]
        assert by_path["direct"]["count"] > 0 and by_path["relay"]["count"] > 0
        assert by_path["direct"]["p50"] < by_path["relay"]["p50"]
    assert report["agree"] is True and result.exit_code == 0


def test_a_disagreement_is_named() -> None:
    simulated = {
        "delivery_ratio": 1.0,
        "latency_ms_by_path": {"direct": {"p50": 1.0}, "relay": {"p50": 9.0}},
    }
    real = {
        "delivery_ratio": 0.5,
        "latency_ms_by_path": {"direct": {"p50": 9.0}, "relay": {"p50": 1.0}},
    }
    verdict = agreement(simulated, real)
    assert verdict["agree"] is False
    assert verdict["why"] == [
        "delivery ratios differ",
        "the real run delivered through the relay faster than direct",
    ]
