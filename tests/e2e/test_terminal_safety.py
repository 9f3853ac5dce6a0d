"""A peer's escape sequences reach another node's terminal as visible text, never as control."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from tests.e2e.test_node_chat import node_process

HOSTILE = (
    "\x1b[31mred\x1b[0m"  # CSI colours
    " \x1b]52;c;aGk=\x07"  # OSC 52: write 'hi' to the clipboard
    " bell\x07"
    " paid\runpaid"  # a bare CR would overwrite 'paid'
    " evil\u202etxt.exe"  # right-to-left override
    " \x9b2J"  # an 8-bit CSI (clear screen)
)


def raw_controls(line: str) -> list[str]:
    return [
        f"U+{ord(c):04X}"
        for c in line
        if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or unicodedata.category(c) == "Cf"
    ]


async def test_a_peers_escape_sequences_print_inert(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        address = (await alice.expect(r"listening on (\S+)")).group(1)
        async with node_process(tmp_path, "bob", "--invite", f"alice={key}@{address}") as bob:
            await bob.expect(r"group created with alice")
            await bob.type_line(HOSTILE)
            # bob is a stranger to alice: she accepts his invitation first.
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            line = (await alice.expect(r"^\[[^\]]+\] .*red")).string
    assert raw_controls(line) == []
    # Shown, not stripped: click drops CSI sequences on a pipe by itself, so these prove that
    # the node made them visible (and kept OSC, BEL and CR from reaching the terminal).
    assert "␛[31mred␛[0m" in line
    assert "␛]52;c;aGk=␇" in line
    assert "bell␇" in line
    assert "paid␍unpaid" in line
    assert "evil<U+202E>txt.exe" in line
    assert "<U+009B>2J" in line
