"""Shared pieces of the discovery tests: a fixed wall clock and an envelope key."""

from __future__ import annotations

from node.core.hybrid_kem import generate_keypair

NOW = 1_800_000_000_000
ENVELOPE_KEY = generate_keypair(bytes(32))[1]


class Clock:
    """One wall clock (ms) shared by everything under test, moved by the test."""

    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> int:
        return self.ms
