"""The node's limits file: strict, one line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.app.limits import NodeLimits
from node.app.node_config import LimitsFileError, load_limits


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


def test_given_limits_replace_the_defaults_and_the_rest_stay(tmp_path: Path) -> None:
    limits = load_limits(write(tmp_path, "[limits]\nmax_seen = 5000\ndeliver_rate_known = 20\n"))
    assert (limits.max_seen, limits.deliver_rate_known) == (5000, 20.0)
    assert limits.max_outbox == NodeLimits().max_outbox


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[limits]\nmax_seens = 1\n", "unknown limit 'max_seens' (did you mean 'max_seen'?)"),
        ("[limits]\nmax_seen = 1.5\n", "limits.max_seen must be a whole number"),
        ("[limits]\nmax_seen = true\n", "limits.max_seen must be a number"),
        ("[limits]\nmax_seen = 0\n", "limits.max_seen must be positive, not 0"),
        ("[limit]\nmax_seen = 1\n", "unknown table or key 'limit'"),
        ("limits = 3\n", "limits must be a table"),
        ("[limits\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(LimitsFileError, match=None) as caught:
        load_limits(write(tmp_path, text))
    assert says in str(caught.value) and str(tmp_path) in str(caught.value)
