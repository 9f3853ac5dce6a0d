"""Reports of simulation runs: the JSON object, CSV files, PNG plots and comparison tables.

This is the front end's side of a run (``quicnprotochat sim``): it measures wall time and
memory, which the simulated code never sees, and writes what a researcher keeps.
"""

from __future__ import annotations

import csv
import json
import math
import resource
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulations.engine import RunResult

__all__ = [
    "compare_table",
    "flatten",
    "peak_rss_mb",
    "report_object",
    "summarize_sweep",
    "write_run",
    "write_sweep",
]

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (then the normal's 1.96).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def report_object(
    result: RunResult, *, wall_s: float, rss_mb: float, params: Mapping[str, Any]
) -> dict[str, Any]:
    """The object ``sim run --json`` prints last: keys fixed, unexercised metrics ``None``."""
    s = result.scenario
    return {
        "scenario": s.name,
        "seed": s.seed,
        "params": dict(params),
        "wall_s": round(wall_s, 2),
        "peak_rss_mb": rss_mb,
        "simulated_s": round(result.simulated_s, 3),
        "nodes": s.network.nodes,
        "fidelity": result.fidelity,
        "wire_digest": result.wire_digest,
        "metrics": result.metrics,
    }


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as ``a.b`` keys (for CSV rows and comparisons)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def write_run(out: Path, result: RunResult, report: Mapping[str, Any]) -> list[Path]:
    """Every metric as JSON and CSV, the raw samples as CSV, and the plots; returns paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "metrics.csv"]
    written[0].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    with written[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        for key, value in sorted(flatten(report["metrics"]).items()):
            writer.writerow([key, "" if value is None else value])
    written.append(_csv(out / "latencies.csv", ["latency_ms"], [[v] for v in result.latencies_ms]))
    written.append(
        _csv(
            out / "lost.csv",
            ["message", "recipient", "cause"],
            [[x["message"], x["recipient"], x["cause"]] for x in result.lost],
        )
    )
    written.append(
        _csv(
            out / "lookups.csv",
            ["ok", "hops", "queried", "duration_s"],
            [[int(x.ok), x.hops, x.queried, round(x.duration_s, 6)] for x in result.lookups],
        )
    )
    name = result.scenario.name
    if result.latencies_ms:
        written.append(_latency_cdf(out / "latency_cdf.png", result.latencies_ms, name))
    if result.lookups:
        written.append(_hops_histogram(out / "lookup_hops.png", result, name))
    return written


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _pyplot() -> Any:
    """matplotlib, loaded only when a plot is drawn (it is slow to import), writing files only."""
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _latency_cdf(path: Path, latencies: Sequence[float], name: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ordered = sorted(latencies)
    ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.step(ordered, ys, where="post")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("share of deliveries")
    ax.set_title(f"{name}: latency CDF ({len(ordered)} deliveries)")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _hops_histogram(path: Path, result: RunResult, name: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    hops = [x.hops for x in result.lookups if x.ok]
    n = result.scenario.network.nodes
    bound = math.ceil(math.log2(n)) if n > 1 else 1
    if hops:
        ax.hist(hops, bins=range(0, max(max(hops), bound) + 2), align="left", rwidth=0.8)
    ax.axvline(bound, color="tab:red", linestyle="--", label=f"⌈log2 N⌉ = {bound}")
    ax.set_xlabel("lookup hops (crawl rounds)")
    ax.set_ylabel("successful lookups")
    ax.set_title(f"{name}: DHT lookup hops, N = {n:,}")
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


# --- comparing and sweeping ------------------------------------------------------------------


def compare_table(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, A, B, B - A) for every metric either run has."""
    fa, fb = flatten(a.get("metrics", {})), flatten(b.get("metrics", {}))
    for key in ("wall_s", "peak_rss_mb", "simulated_s", "wire_digest"):
        fa[key], fb[key] = a.get(key), b.get(key)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, dict) or isinstance(vb, dict):
            continue
        diff = ""
        if isinstance(va, int | float) and isinstance(vb, int | float):
            diff = _fmt(vb - va)
        rows.append((key, _fmt(va), _fmt(vb), diff))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    df = len(values) - 1
    t = _T95[df - 1] if df <= len(_T95) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


SWEEP_METRICS = (
    "delivery_ratio",
    "latency_ms.p50",
    "latency_ms.p95",
    "latency_ms.p99",
    "direct_share",
    "lookup_success",
    "lookup_hops_mean",
    "bytes_per_delivered_message",
    "forks",
)


def summarize_sweep(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per parameter point: each metric's mean and 95% CI half-width over seeds."""
    points: dict[str, list[Mapping[str, Any]]] = {}
    for report in reports:
        points.setdefault(json.dumps(report["params"], sort_keys=True), []).append(report)
    rows = []
    for key, group in points.items():  # in the order of the reports (sorted by value)
        row: dict[str, Any] = {"params": json.loads(key), "seeds": len(group)}
        for metric in SWEEP_METRICS:
            values = [flatten(r["metrics"]).get(metric) for r in group]
            numbers = [float(v) for v in values if isinstance(v, int | float)]
            if numbers:
                mean, half = _mean_ci(numbers)
                row[metric] = {
                    "mean": round(mean, 6),
                    "ci95": None if math.isnan(half) else round(half, 6),
                }
            else:
                row[metric] = None
        row["wall_s"] = round(sum(r["wall_s"] for r in group), 2)
        rows.append(row)
    return rows


def write_sweep(
    out: Path, reports: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "sweep.json", out / "sweep.csv", out / "runs.csv"]
    written[0].write_text(
        json.dumps({"points": list(rows), "runs": list(reports)}, indent=2) + "\n"
    )
    with written[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["params", "seeds", *(f"{m}{s}" for m in SWEEP_METRICS for s in ("", "_ci95"))]
        )
        for row in rows:
            cells = [json.dumps(row["params"], sort_keys=True), row["seeds"]]
            for metric in SWEEP_METRICS:
                value = row[metric]
                cells += ["", ""] if value is None else [value["mean"], value["ci95"] or ""]
            writer.writerow(cells)
    with written[2].open("w", newline="") as f:
        writer = csv.writer(f)
        keys = sorted({k for r in reports for k in flatten(r["metrics"])})
        writer.writerow(["params", "seed", "wall_s", *keys])
        for r in reports:
            flat = flatten(r["metrics"])
            writer.writerow(
                [
                    json.dumps(r["params"], sort_keys=True),
                    r["seed"],
                    r["wall_s"],
                    *(flat.get(k, "") for k in keys),
                ]
            )
    written += _sweep_plots(out, reports, rows)
    return written


def _sweep_plots(
    out: Path, reports: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[Path]:
    """For a sweep over one parameter: each metric against it, with 95% intervals."""
    names = sorted({k for row in rows for k in row["params"]})
    if len(names) != 1:
        return []
    param = names[0]
    xs = [row["params"][param] for row in rows]
    if not all(isinstance(x, int | float) for x in xs):
        return []
    paths = []
    scenario = reports[0]["scenario"] if reports else ""
    for metric in SWEEP_METRICS:
        points = [(x, row[metric]) for x, row in zip(xs, rows, strict=True) if row[metric]]
        if len(points) < 2:
            continue
        fig, ax = _pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
        ax.errorbar(
            [p[0] for p in points],
            [p[1]["mean"] for p in points],
            yerr=[p[1]["ci95"] or 0.0 for p in points],
            marker="o",
            capsize=4,
        )
        if metric == "lookup_hops_mean" and param.endswith("nodes"):
            bound = [math.ceil(math.log2(max(2, p[0]))) for p in points]
            ax.plot([p[0] for p in points], bound, "r--", label="⌈log2 N⌉")
            ax.legend()
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.set_title(f"{scenario}: {metric} vs {param} (mean, 95% CI)")
        ax.grid(True, alpha=0.3)
        paths.append(
            _save(fig, out / f"{metric.replace('.', '_')}_vs_{param.replace('.', '_')}.png")
        )
    return paths
