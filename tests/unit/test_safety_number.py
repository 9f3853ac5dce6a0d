"""Safety numbers: symmetric, derived as docs say, different for every other pair."""

from __future__ import annotations

import hashlib

import pytest

from node.core.identity import Identity
from node.core.safety_number import format_safety_number, half_for, safety_number

A = Identity.from_seed(bytes(range(32))).public_key
B = Identity.from_seed(bytes(range(32, 64))).public_key
C = Identity.from_seed(bytes(range(64, 96))).public_key
VECTOR = "961861933294448585369800403791964895803865133822607419438059"


def reference_half(key: bytes) -> str:
    """The derivation as docs/threat-model.md and the module docstring state it."""
    h = hashlib.sha512(b"\x00\x00" + key + b"qpc").digest()
    for _ in range(5199):
        h = hashlib.sha512(h + key).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def test_the_same_on_both_sides() -> None:
    assert safety_number(A, B) == safety_number(B, A)


def test_matches_the_documented_derivation_and_the_vector() -> None:
    assert half_for(A) == reference_half(A)
    assert safety_number(A, B) == "".join(sorted((reference_half(A), reference_half(B))))
    assert safety_number(A, B) == VECTOR


def test_another_key_gives_another_number() -> None:
    numbers = {safety_number(A, B), safety_number(A, C), safety_number(B, C)}
    assert len(numbers) == 3
    # A key that differs in one bit changes its half completely.
    flipped = bytes([B[0] ^ 1]) + B[1:]
    assert half_for(flipped) != half_for(B)


def test_format_is_twelve_groups_of_five() -> None:
    text = format_safety_number(VECTOR)
    assert text.splitlines() == [
        "96186 19332 94448 58536",
        "98004 03791 96489 58038",
        "65133 82260 74194 38059",
    ]
    assert format_safety_number(VECTOR, per_line=12) == " ".join(text.split())


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        safety_number(A[:31], B)
    with pytest.raises(ValueError, match="60 digits"):
        format_safety_number("123")
