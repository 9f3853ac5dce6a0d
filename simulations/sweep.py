"""Sweeps: seeds by parameter points, each run in a worker of a Dask cluster.

One code path for both cases: without an address a ``LocalCluster`` of one single-threaded
worker process per core is started on 127.0.0.1 (a simulation uses one core); with one, the
runs go to that cluster's scheduler. A worker imports this package, so a remote cluster needs
quicnprotochat installed on its machines.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from simulations.engine import run_scenario
from simulations.report import peak_rss_mb, report_object
from simulations.scenario import ScenarioError, load_scenario

__all__ = ["Job", "parse_seeds", "points", "run_job", "run_sweep"]

Job = tuple[str, int, tuple[tuple[str, Any], ...]]  # (scenario name or path, seed, params)


def parse_seeds(text: str) -> list[int]:
    """``1..5`` (inclusive) or ``1,4,9``."""
    try:
        if ".." in text:
            low, high = (int(x) for x in text.split("..", 1))
            if high < low:
                raise ValueError
            return list(range(low, high + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ScenarioError(f"--seeds takes FIRST..LAST or a comma list, got {text!r}") from None


def points(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the swept values (one empty point when nothing is swept)."""
    names = [name for name, _ in grid]
    return [
        tuple(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))
    ]


def run_job(job: Job) -> dict[str, Any]:
    """One run, in whichever process executes it; returns its report object."""
    name, seed, params = job
    scenario = load_scenario(name, [*params, ("seed", seed)])
    started = time.perf_counter()
    result = run_scenario(scenario)
    return report_object(
        result,
        wall_s=time.perf_counter() - started,
        rss_mb=peak_rss_mb(),
        params=dict(params),
    )


def run_sweep(
    jobs: Sequence[Job],
    *,
    address: str | None,
    workers: int | None = None,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` on a Dask cluster (a local one on loopback without ``address``)."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # Each worker is a fresh interpreter: simulation state never leaks between runs.
            worker_dashboard_address=None,
        )
    try:
        with Client(cluster if cluster is not None else address) as client:
            futures = client.map(run_job, list(jobs), pure=False)
            reports = []
            for future in as_completed(futures):
                report: dict[str, Any] = future.result()
                reports.append(report)
                if done is not None:
                    done(report)
    finally:
        if cluster is not None:
            cluster.close()
    reports.sort(key=lambda r: (sorted(r["params"].items()), r["seed"]))
    return reports
