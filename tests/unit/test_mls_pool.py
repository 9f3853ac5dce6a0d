"""The KeyPackages a node serves to whoever asks: one per suite it offers, from a bounded pool,
in the real encrypted state file. However many peers ask, the state stays bounded, and a Welcome
to any KeyPackage that was served still joins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node.core import suites
from node.core.identity import Identity
from node.mls import GroupError, MlsClient, key_package_info
from node.transport.runtime import RealRuntime
from tests.mls_support import wall_clock_ms
from tests.runtime_support import ClockedRuntime

RUNTIME = RealRuntime("qpc-mls-pool-test")
BOTH = (suites.XWING, suites.X25519_AES128GCM)


def persistent(path: Path, runtime: RealRuntime = RUNTIME, **kwargs: Any) -> MlsClient:
    return MlsClient(
        Identity.generate(), runtime, state_file=path, state_key=os.urandom(32), **kwargs
    )


def join_with(key_package: bytes, joiner: MlsClient) -> None:
    """A stranger's group of the KeyPackage's suite adds its owner; the owner joins."""
    _identity, suite = key_package_info(key_package, now_ms=wall_clock_ms())
    group = MlsClient(Identity.generate(), RUNTIME).create_group(os.urandom(8), suite)
    _commit, welcome = group.commit([key_package])
    assert welcome is not None
    joined = joiner.join(welcome)
    assert joined.ciphersuite == suite
    assert joined.members() == [group.members()[0], joiner.identity]


def test_serving_answers_one_key_package_per_offered_suite(tmp_path: Path) -> None:
    bob = persistent(tmp_path / "mls.state")
    served = bob.serve_key_packages()
    assert [key_package_info(kp, now_ms=wall_clock_ms()) for kp in served] == [
        (bob.identity, suites.XWING),
        (bob.identity, suites.X25519_AES128GCM),
    ]
    only_classic = MlsClient(Identity.generate(), RUNTIME, ciphersuites=[0x0001])
    [kp] = only_classic.serve_key_packages()
    assert key_package_info(kp, now_ms=wall_clock_ms())[1] == suites.X25519_AES128GCM


def test_two_thousand_fetches_keep_the_state_bounded_and_every_served_key_package_joins(
    tmp_path: Path,
) -> None:
    state = tmp_path / "mls.state"
    bob = persistent(state, key_package_pool=32)
    served = [bob.serve_key_packages() for _ in range(40)]
    # The pool filled with distinct single-use KeyPackages, then the last-resort ones went out.
    assert len({tuple(answer) for answer in served[:32]}) == 32
    last_resort = [bob.last_resort_key_package(suite) for suite in BOTH]
    assert served[32:] == [last_resort] * 8
    full_size = state.stat().st_size

    for _ in range(2000):
        assert bob.serve_key_packages() == last_resort
    assert state.stat().st_size == full_size
    # ~5 KB per X-Wing and ~1 KB per 0x0001 KeyPackage kept: nowhere near 2,000 of them.
    assert full_size < 32 * (6 + 2) * 1024 + 64 * 1024
    assert [bob.unused_key_packages(suite) for suite in BOTH] == [32, 32]

    # A Welcome to any of them joins: pooled ones of both suites, and the last-resort ones twice.
    for key_package in [*served[0], *served[31], *last_resort, *last_resort]:
        join_with(key_package, bob)
    # The two used pooled KeyPackages of each suite left the pool; the next fetches refill it.
    assert [bob.unused_key_packages(suite) for suite in BOTH] == [30, 30]
    refill = [bob.serve_key_packages() for _ in range(3)]
    assert refill[0] != last_resort and refill[1] != last_resort
    assert refill[2] == last_resort
    # A used single-use KeyPackage cannot be used twice.
    with pytest.raises(GroupError):
        join_with(served[0][1], bob)


def test_expired_key_packages_leave_the_pool_and_fresh_ones_replace_them(
    tmp_path: Path,
) -> None:
    now = [wall_clock_ms()]
    runtime = ClockedRuntime(lambda: now[0])
    try:
        state = tmp_path / "mls.state"
        bob = persistent(state, runtime, key_package_pool=4, key_package_lifetime_s=3 * 3600)
        first = [bob.serve_key_packages() for _ in range(4)]
        full_size = state.stat().st_size
        assert [bob.unused_key_packages(suite) for suite in BOTH] == [4, 4]
        sizes = []
        for _ in range(24):
            now[0] += 4 * 3600 * 1000
            assert [bob.unused_key_packages(suite) for suite in BOTH] == [0, 0]
            again = [bob.serve_key_packages() for _ in range(4)]
            assert not {tuple(a) for a in again} & {tuple(a) for a in first}
            assert [bob.unused_key_packages(suite) for suite in BOTH] == [4, 4]
            first = again
            sizes.append(state.stat().st_size)
        # The expired ones' private keys were deleted, so 24 pools' worth (~530 KB) never piled
        # up. The file is a base image and a log of changes since, which is folded into a new
        # base once it outgrows the base or 256 KiB: the file stays within that of the state.
        assert max(sizes) < 2 * full_size + 256 * 1024 + 32 * 1024
        assert sizes[-1] < max(sizes)
    finally:
        runtime.close()


def test_a_bad_pool_configuration_is_refused() -> None:
    identity = Identity.generate()
    with pytest.raises(ValueError, match="key_package_pool"):
        MlsClient(identity, RUNTIME, key_package_pool=-1)
    with pytest.raises(ValueError, match="ciphersuites"):
        MlsClient(identity, RUNTIME, ciphersuites=[0x0003])
    with pytest.raises(ValueError, match="ciphersuites"):
        MlsClient(identity, RUNTIME, ciphersuites=[])
