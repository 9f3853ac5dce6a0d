"""Reading the binding's ``mls.state`` from outside it, on files the binding really wrote; and
the table that judges ``mls.state`` against what ``node.db`` recorded (ADR 0004)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.core.identity import Identity
from node.core.mls_state_file import (
    Mark,
    StateFileError,
    WrongStateKeyError,
    extend,
    pairing_problem,
    parse,
)
from node.mls import MlsClient
from node.transport.runtime import RealRuntime

KEY = bytes(range(32))
# Never asked for blocking work here: the calls below run on the test's own thread.
RUNTIME = RealRuntime("qpc-state-file-test")


def state_after(tmp_path: Path, calls: int) -> tuple[Path, list[bytes]]:
    """An mls.state the binding wrote, and its bytes after creation and after each call."""
    path = tmp_path / "mls.state"
    client = MlsClient(Identity.from_seed(bytes(32)), RUNTIME, path, KEY)
    history = [path.read_bytes()]
    for _ in range(calls):
        client.key_package()
        history.append(path.read_bytes())
    del client
    return path, history


def test_each_call_appends_one_record_with_a_checked_tag(tmp_path: Path) -> None:
    _, history = state_after(tmp_path, 3)
    images = [parse(data, KEY) for data in history]
    assert [image.records for image in images] == [0, 1, 2, 3]
    assert len({image.salt for image in images}) == 1
    assert all(not image.torn for image in images)
    # Reading only what was appended gives the same as reading it all.
    first = images[0]
    assert extend(first, history[3][first.ends[-1] :], first.ends[-1]) == images[3]
    assert images[3].mark_at(images[1].ends[-1]) == images[1].mark


def test_a_torn_last_record_is_left_out_and_damage_before_the_end_is_refused(
    tmp_path: Path,
) -> None:
    _, history = state_after(tmp_path, 2)
    full = history[-1]
    image = parse(full, KEY)
    # An append cut short: the binding drops it, and so does the reader.
    torn = parse(full[:-5], KEY)
    assert torn.torn
    assert torn.ends == image.ends[:-1]
    flipped = bytearray(full)
    flipped[image.ends[0] + 20] ^= 1  # inside the first record, with a record after it
    with pytest.raises(StateFileError, match="is corrupted"):
        parse(bytes(flipped), KEY)
    flipped = bytearray(full)
    flipped[100] ^= 1  # inside the base
    with pytest.raises(StateFileError, match="is corrupted"):
        parse(bytes(flipped), KEY)
    with pytest.raises(WrongStateKeyError):
        parse(full, bytes(32))
    with pytest.raises(StateFileError, match="not an MLS state file"):
        parse(b"SQLite format 3\x00" + full[16:], KEY)
    with pytest.raises(StateFileError, match="truncated"):
        parse(full[:60], KEY)
    with pytest.raises(StateFileError, match="truncated"):
        parse(full[: image.ends[0] - 1], KEY)


def test_the_pairing_table(tmp_path: Path) -> None:
    _, history = state_after(tmp_path, 4)
    images = [parse(data, KEY) for data in history]
    now = images[4]
    salts = {now.salt}
    assert pairing_problem(now, now.mark, salts) is None
    assert pairing_problem(now, images[3].mark, salts) is None  # one call ahead
    assert pairing_problem(now, images[2].mark, salts) == (
        "node.db is older than mls.state (2 MLS changes behind it)"
    )
    assert pairing_problem(now, images[0].mark, salts, live=True) is None
    assert pairing_problem(images[2], now.mark, salts) == (
        "mls.state is older than node.db, or was cut short"
    )
    forged = Mark(now.salt, now.mark.length, bytes(16))
    assert pairing_problem(now, forged, salts) == (
        "mls.state does not continue the state node.db last recorded"
    )
    # Another base: one node.db saw before, or one it never saw.
    other = Mark(bytes(32), 500, bytes(16))
    assert pairing_problem(now, other, salts | {other.salt}) == (
        "mls.state is older than node.db (an earlier copy of the file)"
    )
    assert pairing_problem(images[0], other, {other.salt}) is None  # rewritten by one call
    assert pairing_problem(now, other, {other.salt}) == (
        "node.db is older than mls.state, or mls.state belongs to another node.db"
    )
    assert pairing_problem(now, None, set()) is None
    assert Mark.from_bytes(now.mark.to_bytes()) == now.mark
