"""Shared pieces of the MLS binding tests: deterministic keys, clients on a clock, and a member
with its group."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from openmls_bindings import Client, Group


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def wall_clock_ms() -> int:
    """The system clock in milliseconds since the Unix epoch: the clock of a real node.

    The binding never reads the system clock itself; tests that do not care about time
    give their clients this one.
    """
    return time.time_ns() // 1_000_000


def new_client(
    signing_key: bytes,
    storage_path: str | os.PathLike[str] | None = None,
    storage_key: bytes | None = None,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    rng_seed: bytes | None = None,
) -> Client:
    """A client on ``clock_ms`` (the system clock unless given) and ``rng_seed`` (none: the
    system's randomness)."""
    return Client(
        signing_key,
        clock_ms=clock_ms,
        rng_seed=rng_seed,
        storage_path=storage_path,
        storage_key=storage_key,
    )


@dataclass
class Member:
    client: Client
    group: Group | None = None

    @property
    def identity(self) -> bytes:
        return self.client.identity

    @property
    def g(self) -> Group:
        assert self.group is not None
        return self.group
