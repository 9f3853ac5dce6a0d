"""Scenarios: what a simulation run builds and drives, read from TOML and validated.

A scenario names the network (nodes, LANs, unreachable share, latency and loss), the relays,
the churn, the workload (groups, messages, membership changes), DHT lookups, partitions, the
duration and the seed. Every field has a unit in its name (``_s``, ``_ms``, ``_share``) and
every value is checked: an unknown key, a share outside 0 to 1 or a group larger than the network
is an error naming the field. The same scenario and seed always build the same run.

``--param NAME=VALUE`` overrides a field: ``NAME`` is a dotted path (``churn.crash_share``) or
one of the scenario's own aliases from its ``[params]`` table (``crashed = "dht.crashed_share"``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "SCENARIO_DIR",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_param",
    "shipped_scenarios",
]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

Share = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class ScenarioError(ValueError):
    """A scenario that cannot be run, with every reason, each naming its field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedLatency(_Strict):
    kind: Literal["fixed"] = "fixed"
    ms: Annotated[float, Field(ge=0.0)]


class UniformLatency(_Strict):
    kind: Literal["uniform"]
    low_ms: Annotated[float, Field(ge=0.0)]
    high_ms: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _ordered(self) -> UniformLatency:
        if self.high_ms < self.low_ms:
            raise ValueError("high_ms must be at least low_ms")
        return self


class LognormalLatency(_Strict):
    kind: Literal["lognormal"]
    median_ms: Positive
    sigma: Annotated[float, Field(ge=0.0, le=3.0)]


Latency = Annotated[FixedLatency | UniformLatency | LognormalLatency, Field(discriminator="kind")]


class Link(_Strict):
    """One class of links: one-way latency and independent loss per datagram."""

    latency: Latency
    loss_share: Share = 0.0


class Network(_Strict):
    nodes: Annotated[int, Field(ge=1, le=100_000)]
    # Behind NAT: can dial out, cannot be dialed (RFC 4787 address-dependent filtering).
    unreachable_share: Share = 0.0
    nat_timeout_s: Positive = 30.0
    lans: Annotated[int, Field(ge=0)] = 0  # nodes split round-robin into this many LANs
    lan_share: Share = 1.0  # of the nodes, how many sit on a LAN (only with lans > 0)
    lan: Link = Link(latency=UniformLatency(kind="uniform", low_ms=0.2, high_ms=1.0))
    wan: Link = Link(latency=LognormalLatency(kind="lognormal", median_ms=40.0, sigma=0.4))
    uplink_kbps: Positive | None = None  # per host; None: unlimited


class Relays(_Strict):
    count: Annotated[int, Field(ge=0, le=16)] = 0


class Session(_Strict):
    """A length drawn from a distribution with this median (lognormal, or exponential)."""

    kind: Literal["lognormal", "exponential"] = "lognormal"
    median_s: Positive
    sigma: Annotated[float, Field(ge=0.0, le=3.0)] = 1.0


class Churn(_Strict):
    share: Share = 1.0  # of the nodes, how many come and go (the rest stay up throughout)
    session: Session  # how long a node stays up
    downtime: Session  # how long it stays away
    crash_share: Share = 0.5  # of departures, how many are crashes (the rest leave gracefully)


class Workload(_Strict):
    groups: Annotated[int, Field(ge=0)] = 0
    group_size: Annotated[int, Field(ge=2, le=1000)] = 2
    # Each member sends on average one message per this many seconds (Poisson).
    message_interval_s: Positive = 60.0
    message_bytes: Annotated[int, Field(ge=1, le=200_000)] = 200
    # Each group's committer adds or removes a member about this often (0: never).
    membership_change_interval_s: Annotated[float, Field(ge=0.0)] = 0.0
    start_s: Annotated[float, Field(ge=0.0)] = 5.0  # messages start once groups are formed


class Dht(_Strict):
    enabled: bool = False
    ksize: Annotated[int, Field(ge=2, le=64)] = 20
    alpha: Annotated[int, Field(ge=1, le=16)] = 3
    lookups: Annotated[int, Field(ge=0)] = 0  # lookups of random nodes' records
    crashed_share: Share = 0.0  # crashed after publishing, before the lookups
    lookup_deadline_s: Positive = 10.0
    only: bool = False  # DHT nodes alone: no messenger nodes (large lookup studies)


class Partition(_Strict):
    at_s: Annotated[float, Field(ge=0.0)]
    heal_s: Annotated[float, Field(ge=0.0)]
    split_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # the first side's share

    @model_validator(mode="after")
    def _heals_after(self) -> Partition:
        if self.heal_s <= self.at_s:
            raise ValueError("heal_s must be after at_s")
        return self


class Fidelity(_Strict):
    """What a run replaces with a cheaper stand-in (the report says which)."""

    # Node stores and MLS state in memory; a files mode (real SQLCipher and mls.state on a RAM
    # disk, restarts reopening them) is not built yet.
    disk: Literal["memory"] = "memory"


class Scenario(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    description: str = ""
    seed: int = 1
    duration_s: Positive
    network: Network
    relays: Relays = Relays()
    churn: Churn | None = None
    workload: Workload = Workload()
    dht: Dht = Dht()
    partitions: tuple[Partition, ...] = ()
    fidelity: Fidelity = Fidelity()
    params: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        problems = []
        if self.workload.groups and self.workload.group_size > self.network.nodes:
            problems.append("workload.group_size is larger than network.nodes")
        if self.workload.groups and self.dht.only:
            problems.append("dht.only runs no messenger nodes, so workload.groups must be 0")
        if self.dht.only and not self.dht.enabled:
            problems.append("dht.only needs dht.enabled")
        if self.dht.lookups and not self.dht.enabled:
            problems.append("dht.lookups needs dht.enabled")
        if self.network.unreachable_share == 1.0 and not self.relays.count and self.workload.groups:
            problems.append("with every node unreachable and no relay, nothing can be delivered")
        for partition in self.partitions:
            if partition.heal_s > self.duration_s:
                problems.append("a partition heals after the run ends (partitions.heal_s)")
        for alias, path in self.params.items():
            if not _resolves(self, path.split(".")):
                problems.append(f"params.{alias} names {path!r}, which is not a scenario field")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _resolves(model: BaseModel, path: Sequence[str]) -> bool:
    value: Any = model
    for part in path:
        if not isinstance(value, BaseModel) or part not in type(value).model_fields:
            return False
        value = getattr(value, part)
    return not isinstance(value, BaseModel)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        # A discriminated union reports the variant's tag; the path the user wrote is enough.
        where = where.replace(".fixed", "").replace(".uniform", "").replace(".lognormal", "")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as TOML (a number, true/false, or a string)."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name or not raw:
        raise ScenarioError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return name, value


def _apply(data: dict[str, Any], aliases: Mapping[str, str], name: str, value: Any) -> None:
    path = aliases.get(name, name).split(".")
    target = data
    for part in path[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"--param {name}: {part} is not a table")
        target = child
    target[path[-1]] = value


def scenario_from_dict(
    data: Mapping[str, Any], params: Sequence[tuple[str, Any]] = (), *, source: str = "scenario"
) -> Scenario:
    """Validate ``data`` (as read from TOML) after applying ``params``; raise
    :class:`ScenarioError` listing every problem."""
    merged: dict[str, Any] = _deep_copy(data)
    aliases = merged.get("params", {})
    if not isinstance(aliases, dict):
        raise ScenarioError(f'{source}: params must be a table of NAME = "dotted.path"')
    for name, value in params:
        _apply(merged, aliases, name, value)
    try:
        scenario = Scenario.model_validate(merged)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_describe(exc)}") from None
    for name, _ in params:
        if name not in aliases and not _resolves(scenario, name.split(".")):
            raise ScenarioError(f"{source}: --param {name} is not a scenario field or alias")
    return scenario


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_scenario(name_or_path: str, params: Sequence[tuple[str, Any]] = ()) -> Scenario:
    """A shipped scenario by name (``lan-party``) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        shipped = ", ".join(shipped_scenarios())
        raise ScenarioError(f"no scenario {name_or_path!r} (shipped: {shipped})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from None
    return scenario_from_dict(data, params, source=path.name)


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
