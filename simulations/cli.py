"""``quicnprotochat sim``: run, sweep, list and compare network simulation runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from simulations.engine import run_scenario
from simulations.loop import SimulationError
from simulations.report import (
    compare_table,
    peak_rss_mb,
    report_object,
    summarize_sweep,
    write_run,
    write_sweep,
)
from simulations.scenario import ScenarioError, load_scenario, parse_param, shipped_scenarios
from simulations.sweep import parse_seeds, points, run_sweep


def _fail(message: str) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(1)


@click.group("sim")
def sim_group() -> None:
    """Network simulation runs: the real node, relay and DHT code on a virtual clock."""


@sim_group.command("list")
def list_command() -> None:
    """The shipped scenarios."""
    for name in shipped_scenarios():
        scenario = load_scenario(name)
        click.echo(f"{name:<16} {scenario.network.nodes:>6} nodes  {scenario.description}")


def _params(values: tuple[str, ...]) -> list[tuple[str, Any]]:
    try:
        return [parse_param(v) for v in values]
    except ScenarioError as exc:
        raise ScenarioError(f"--param: {exc}") from None


@sim_group.command("run")
@click.argument("scenario")
@click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a field.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where CSV, JSON and plots go [./sim-results/SCENARIO-sSEED].",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
def run_command(
    scenario: str, seed: int | None, params: tuple[str, ...], out: Path | None, as_json: bool
) -> None:
    """Run SCENARIO (a shipped name or a TOML file) once."""
    try:
        overrides = _params(params)
        loaded = load_scenario(
            scenario, [*overrides, *([("seed", seed)] if seed is not None else [])]
        )
    except ScenarioError as exc:
        _fail(str(exc))
        return
    started = time.perf_counter()
    bar = tqdm(
        total=round(loaded.duration_s),
        unit="sim s",
        desc=loaded.name,
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a log gets a line now and then
    )

    def progress(simulated: float) -> None:
        wall = time.perf_counter() - started
        bar.update(round(simulated) - bar.n)
        bar.set_postfix_str(f"{simulated / max(wall, 1e-9):.1f} sim s/s, {peak_rss_mb():.0f} MB")

    try:
        result = run_scenario(loaded, progress)
    except SimulationError as exc:
        bar.close()
        _fail(f"the run of {loaded.name} stopped: {exc}")
        return
    bar.close()
    report = report_object(
        result, wall_s=time.perf_counter() - started, rss_mb=peak_rss_mb(), params=dict(overrides)
    )
    target = out or Path("sim-results") / f"{loaded.name}-s{loaded.seed}"
    written = write_run(target, result, report)
    if not as_json:
        _print_summary(report)
        click.echo(f"wrote {len(written)} files to {target}")
    click.echo(json.dumps(report, sort_keys=True) if as_json else "", nl=as_json)


def _print_summary(report: dict[str, Any]) -> None:
    m = report["metrics"]
    click.echo(
        f"{report['scenario']} seed {report['seed']}: {report['simulated_s']:.0f} simulated s "
        f"in {report['wall_s']:.1f} s wall, peak {report['peak_rss_mb']:.0f} MB"
    )
    rows = [
        ("delivery ratio", m["delivery_ratio"]),
        (
            "latency p50 / p95 / p99 (ms)",
            "/".join(_s(m["latency_ms"][k]) for k in ("p50", "p95", "p99")),
        ),
        ("direct share", m["direct_share"]),
        (
            "relay envelopes / peak stored",
            f"{_s(m['relay_envelopes'])} / {_s(m['relay_peak_stored'])}",
        ),
        ("lookup success / mean hops", f"{_s(m['lookup_success'])} / {_s(m['lookup_hops_mean'])}"),
        ("bytes on the wire per delivery", m["bytes_per_delivered_message"]),
        (
            "convergence p50 / max (s)",
            f"{_s(m['convergence_s']['p50'])} / {_s(m['convergence_s']['max'])}",
        ),
        ("MLS forks", m["forks"]),
        ("lost, by cause", m["lost_by_cause"] or m["lost"]),
    ]
    for label, value in rows:
        click.echo(f"  {label:<32} {_s(value)}")
    for key, value in report["fidelity"].items():
        click.echo(f"  fidelity: {key:<22} {value}")


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


@sim_group.command("compare")
@click.argument("run_a", type=click.Path(exists=True, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, path_type=Path))
def compare_command(run_a: Path, run_b: Path) -> None:
    """A table of the differences between two runs (their --out directories or report.json)."""
    reports = []
    for path in (run_a, run_b):
        file = path / "report.json" if path.is_dir() else path
        try:
            reports.append(json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            _fail(f"cannot read the run report {file}: {exc}")
    rows = compare_table(reports[0], reports[1])
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'metric':<{width}}  {'A':>14}  {'B':>14}  {'B - A':>14}")
    for name, a, b, diff in rows:
        if a != b:
            click.echo(f"{name:<{width}}  {a:>14}  {b:>14}  {diff:>14}")
    same = sum(1 for r in rows if r[1] == r[2])
    click.echo(f"({same} metrics equal in both runs)")


@sim_group.command("sweep")
@click.argument("scenario")
@click.option("--seeds", default="1..3", show_default=True, help="FIRST..LAST or a comma list.")
@click.option("--param", "params", multiple=True, metavar="NAME=V1,V2", help="Swept values.")
@click.option("--dask", "address", default=None, help="A Dask scheduler's address (tcp://…).")
@click.option("--workers", type=int, default=None, help="Local workers [one per core].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
def sweep_command(
    scenario: str,
    seeds: str,
    params: tuple[str, ...],
    address: str | None,
    workers: int | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Run SCENARIO for every seed and parameter point; merge with 95% intervals."""
    try:
        seed_list = parse_seeds(seeds)
        grid = []
        for text in params:
            name, _, values = text.partition("=")
            if not name or not values:
                raise ScenarioError(f"--param: expected NAME=V1,V2,..., got {text!r}")
            grid.append((name, [parse_param(f"{name}={v}")[1] for v in values.split(",")]))
        jobs = [(scenario, s, p) for p in points(grid) for s in seed_list]
        for _, _, point in jobs[:: len(seed_list)]:
            load_scenario(scenario, list(point))  # refuse a bad point before starting a cluster
    except ScenarioError as exc:
        _fail(str(exc))
        return
    bar = tqdm(total=len(jobs), unit="run", desc=f"sweep {scenario}", file=sys.stderr, disable=None)
    try:
        reports = run_sweep(jobs, address=address, workers=workers, done=lambda _r: bar.update(1))
    except (ValueError, OSError) as exc:
        # Dask's own words for an address it cannot use (an unknown scheme, nothing there).
        bar.close()
        _fail(f"--dask {address}: {exc}" if address else f"the sweep could not start: {exc}")
        return
    bar.close()
    rows = summarize_sweep(reports)
    target = out or Path("sim-results") / f"{Path(scenario).stem}-sweep"
    written = write_sweep(target, reports, rows)
    if as_json:
        click.echo(json.dumps({"scenario": scenario, "points": rows}, sort_keys=True))
        return
    for row in rows:
        cells = [f"{k}={v}" for k, v in row["params"].items()] or ["(scenario as shipped)"]
        click.echo(f"{' '.join(cells)}  ({row['seeds']} seeds)")
        for metric, value in row.items():
            if isinstance(value, dict) and "mean" in value:
                ci = "" if value["ci95"] is None else f" ± {value['ci95']:.4g}"
                click.echo(f"  {metric:<30} {value['mean']:.6g}{ci}")
    click.echo(f"wrote {len(written)} files to {target}")


@sim_group.command("calibrate")
@click.argument("scenario", default="calibration")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object on stdout.")
def calibrate_command(scenario: str, as_json: bool) -> None:
    """Run a small SCENARIO simulated and as real processes on loopback; compare.

    They agree when their delivery ratios match and both deliver direct faster than through
    the relay. Exits 1 when they do not.
    """
    from simulations.real import run_real

    try:
        loaded = load_scenario(scenario)
        real = run_real(loaded)
    except ScenarioError as exc:
        _fail(str(exc))
        return
    simulated = run_scenario(loaded).metrics
    verdict = agreement(simulated, real.metrics)
    if as_json:
        click.echo(json.dumps({"simulated": simulated, "real": real.metrics, **verdict}))
    else:
        click.echo(f"{'':<30} {'simulated':>12} {'real':>12}")
        for label, key in (
            ("delivery ratio", ("delivery_ratio",)),
            ("direct latency p50 (ms)", ("latency_ms_by_path", "direct", "p50")),
            ("relay latency p50 (ms)", ("latency_ms_by_path", "relay", "p50")),
            ("direct share", ("direct_share",)),
        ):
            click.echo(
                f"{label:<30} {_s(_dig(simulated, key)):>12} {_s(_dig(real.metrics, key)):>12}"
            )
        click.echo("agree" if verdict["agree"] else f"DISAGREE: {'; '.join(verdict['why'])}")
    sys.exit(0 if verdict["agree"] else 1)


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def agreement(simulated: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """Whether a simulated and a real run of one scenario tell the same story."""
    why = []
    if simulated["delivery_ratio"] != real["delivery_ratio"]:
        why.append("delivery ratios differ")
    for name, metrics in (("simulated", simulated), ("real", real)):
        direct = _dig(metrics, ("latency_ms_by_path", "direct", "p50"))
        relay = _dig(metrics, ("latency_ms_by_path", "relay", "p50"))
        if direct is None or relay is None:
            why.append(f"the {name} run did not use both paths")
        elif not direct < relay:
            why.append(f"the {name} run delivered through the relay faster than direct")
    return {"agree": not why, "why": why}
