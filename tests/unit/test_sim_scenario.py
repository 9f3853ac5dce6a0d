"""Scenarios: every shipped one loads, bad ones are refused with the field named, and
--param reaches the field it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.scenario import (
    ScenarioError,
    load_scenario,
    parse_param,
    scenario_from_dict,
    shipped_scenarios,
)
from simulations.sweep import parse_seeds, points

MINIMAL = {"name": "t", "duration_s": 10, "network": {"nodes": 3}}


def test_the_four_scenarios_of_the_results_page_are_shipped() -> None:
    assert {"lan-party", "city", "dht-scale", "partition-heal"} <= set(shipped_scenarios())
    city = load_scenario("city")
    assert (city.network.nodes, city.relays.count, city.network.unreachable_share) == (
        1000,
        2,
        0.2,
    )
    assert city.churn is not None and city.churn.session.median_s == 600
    assert load_scenario("dht-scale").network.nodes == 10_000


def test_a_param_alias_and_a_dotted_path_override_fields() -> None:
    assert load_scenario("dht-scale", [parse_param("crashed=0.3")]).dht.crashed_share == 0.3
    city = load_scenario("city", [parse_param("churn.crash_share=1"), ("seed", 7)])
    assert city.churn is not None and city.churn.crash_share == 1.0
    assert city.seed == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"network": {"nodes": 0}}, "network.nodes: Input should be greater than or equal to 1"),
        ({"network": {"nodes": 3, "unreachable_share": 2}}, "network.unreachable_share"),
        ({"duration_s": -1}, "duration_s: Input should be greater than 0"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"workload": {"groups": 1, "group_size": 9}}, "group_size is larger than network.nodes"),
        ({"partitions": [{"at_s": 5, "heal_s": 2}]}, "heal_s must be after at_s"),
        ({"params": {"x": "network.bogus"}}, "params.x names 'network.bogus'"),
        (
            {
                "network": {
                    "nodes": 3,
                    "wan": {"latency": {"kind": "uniform", "low_ms": 5, "high_ms": 1}},
                }
            },
            "high_ms must be at least low_ms",
        ),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ScenarioError, match=r"^t\.toml: ") as info:
        scenario_from_dict({**MINIMAL, **change}, source="t.toml")
    assert message in str(info.value)


def test_an_unknown_param_or_scenario_is_refused() -> None:
    with pytest.raises(ScenarioError, match="bogus"):
        load_scenario("lan-party", [parse_param("bogus=1")])
    with pytest.raises(ScenarioError, match=r"no scenario 'nowhere' .shipped: .*lan-party"):
        load_scenario("nowhere")


def test_a_file_that_is_not_toml_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ScenarioError, match=r"^broken\.toml: not valid TOML"):
        load_scenario(str(path))


def test_param_values_are_read_as_toml() -> None:
    assert parse_param("a=0.3") == ("a", 0.3)
    assert parse_param("a=true") == ("a", True)
    assert parse_param("a=word") == ("a", "word")
    with pytest.raises(ScenarioError):
        parse_param("novalue")


def test_seeds_and_points() -> None:
    assert parse_seeds("1..4") == [1, 2, 3, 4]
    assert parse_seeds("3,5") == [3, 5]
    with pytest.raises(ScenarioError):
        parse_seeds("5..1")
    assert points([("a", [1, 2]), ("b", ["x"])]) == [(("a", 1), ("b", "x")), (("a", 2), ("b", "x"))]
    assert points([]) == [()]
