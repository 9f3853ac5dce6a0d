"""How long the command line takes to answer before it does any work.

Run by hand, never in CI timing::

    .venv/bin/python benchmarks/cli_startup_bench.py              # 21 runs of each
    .venv/bin/python benchmarks/cli_startup_bench.py --runs 51 --json

Each row is a fresh interpreter running the ``quicnprotochat`` entry point (as the console
script does) with the given arguments, timed from spawn to exit; the table shows the median,
the fastest and the slowest of ``--runs``. For reference the first row is an interpreter that
only starts and exits. Target (issue 9): ``quicnprotochat --help`` <= 100 ms. On a shared
machine background load only ever adds time: read the median and the minimum together.
To see what a command imports and what each import costs::

    .venv/bin/python -X importtime -c "from node.app.cli import main; main(['--help'])"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from node.app.cli import main; sys.argv[0] = 'quicnprotochat'; main()"
CASES: list[tuple[str, list[str]]] = [
    ("python -c pass (baseline)", ["-c", "pass"]),
    ("quicnprotochat --help", ["-c", ENTRY, "--help"]),
    ("quicnprotochat --version", ["-c", ENTRY, "--version"]),
    ("quicnprotochat doctor --help", ["-c", ENTRY, "doctor", "--help"]),
    ("quicnprotochat node run --help", ["-c", ENTRY, "node", "run", "--help"]),
    ("quicnprotochat relay run --help", ["-c", ENTRY, "relay", "run", "--help"]),
]
TARGET_MS = {"quicnprotochat --help": 100.0}


def time_once(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT
    )
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each case")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    results: dict[str, dict[str, float]] = {}
    for label, args in CASES:
        time_once(args, env)  # warm the page cache and the bytecode cache
        samples = [time_once(args, env) for _ in range(opts.runs)]
        results[label] = {
            "median_ms": statistics.median(samples),
            "min_ms": min(samples),
            "max_ms": max(samples),
        }
    if opts.json:
        print(json.dumps({"runs": opts.runs, "cases": results}))
        return
    print(f"{'command':<34} {'median ms':>10} {'min ms':>8} {'max ms':>8}  target")
    for label, row in results.items():
        target = TARGET_MS.get(label)
        verdict = "" if target is None else f"<= {target:.0f}: "
        if target is not None:
            verdict += "ok" if row["median_ms"] <= target else "MISSED"
        print(
            f"{label:<34} {row['median_ms']:>10.1f} {row['min_ms']:>8.1f} {row['max_ms']:>8.1f}"
            f"  {verdict}"
        )
    print(f"({opts.runs} runs each, {sys.executable})")


if __name__ == "__main__":
    main()
