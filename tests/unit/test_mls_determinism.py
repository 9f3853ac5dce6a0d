"""The binding's clock and randomness are the caller's.

A seeded run repeats bit for bit (same identity seeds, ``rng_seed``, clock and calls: the same
KeyPackages, commits, Welcomes and application messages), another seed changes every message,
and every lifetime the binding makes or checks follows ``clock_ms``. OpenMLS still checks
lifetimes against the system clock in some places (``openmls-bindings/src/clock.rs``); a client
on a simulated clock in the past passes those with a long ``key_package_lifetime_s``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openmls_bindings import (
    CIPHERSUITE_X25519_AES128GCM,
    CIPHERSUITE_XWING,
    Client,
    InvalidInputError,
    InvalidMessageError,
    key_package_identity,
)

from tests.mls_support import new_client, seed, wall_clock_ms

# 2026-01-01T00:00:00Z: the simulator's epoch, in the past of the system clock.
SIM_MS = 1_767_225_600_000
# 2001-09-09T01:46:40Z: long before the system clock.
PAST_MS = 1_000_000_000_000
HOUR_MS = 3600 * 1000
WEEK_MS = 7 * 24 * HOUR_MS
LIFETIME_MS = 12 * WEEK_MS  # the default: 12 weeks
# The longest lifetime a client makes: 100 years of 365.25 days. A KeyPackage made at SIM_MS
# with it is also valid by the system clock, which OpenMLS checks.
LONG_S = 36525 * 24 * 3600
LONG_MS = LONG_S * 1000


def sim_client(n: int, clock: Callable[[], int], rng_seed: bytes | None = None) -> Client:
    """A client as a simulation builds it: simulated clock, 100-year lifetimes."""
    return Client(seed(n), clock_ms=clock, rng_seed=rng_seed, key_package_lifetime_s=LONG_S)


class Clock:
    """A clock a test sets; counts how often it is read."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now_ms


def fixed(now_ms: int) -> Callable[[], int]:
    """A clock that stays at ``now_ms``."""
    return lambda: now_ms


def rng(n: int) -> bytes:
    return bytes([0xA0 + n]) * 32


def run(
    clock: Clock,
    rng_base: int | None,
    suite: int,
    state_dir: Path | None = None,
) -> list[bytes]:
    """Three members' group life; returns every message it produced, in order."""

    def client(n: int) -> Client:
        rng_seed = None if rng_base is None else rng(rng_base + n)
        if state_dir is None:
            return sim_client(n, clock, rng_seed)
        return Client(
            seed(n),
            clock_ms=clock,
            rng_seed=rng_seed,
            storage_path=state_dir / f"{n}.mls",
            storage_key=bytes([n]) * 32,
            key_package_lifetime_s=LONG_S,
        )

    alice, bob, carol = client(1), client(2), client(3)
    out: list[bytes] = []
    group = alice.create_group(b"room", suite)
    kps = [bob.key_package(suite), carol.key_package(suite)]
    commit, welcome = group.add_members(kps)
    out += [*kps, commit, welcome]
    bob_g, carol_g = bob.join(welcome), carol.join(welcome)
    clock.now_ms += 1000
    hi = group.encrypt(b"hi")
    assert bob_g.process(hi).plaintext == carol_g.process(hi).plaintext == b"hi"
    reply = bob_g.encrypt(b"hello")
    assert group.process(reply).plaintext == carol_g.process(reply).plaintext == b"hello"
    proposal = carol_g.propose_update()
    group.process(proposal)
    bob_g.process(proposal)
    update, _ = group.commit()
    assert bob_g.process(update).epoch == carol_g.process(update).epoch == 2
    # One Remove per commit: OpenMLS lists a commit's Remove/Update proposals in HashMap order,
    # which varies between processes, so only commits with at most one of them repeat.
    removal = group.remove_members([bob.identity])
    assert carol_g.process(removal).removed == [bob.identity]
    last_resort = carol.last_resort_key_package(suite)
    out += [hi, reply, proposal, update, removal, last_resort, group.export_group_info()]
    return out


@pytest.mark.parametrize("suite", [CIPHERSUITE_X25519_AES128GCM, CIPHERSUITE_XWING])
def test_a_seeded_run_repeats_bit_for_bit(suite: int) -> None:
    first = run(Clock(SIM_MS), 1, suite)
    second = run(Clock(SIM_MS), 1, suite)
    assert len(first) == len(second) == 11
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a == b, f"message {i} differs between two seeded runs"
    other = run(Clock(SIM_MS), 2, suite)
    for i, (a, b) in enumerate(zip(first, other, strict=True)):
        assert a != b, f"message {i} is the same under another rng_seed"


def path_updates(rng_base: int) -> list[bytes]:
    """Commits updating the paths of a 12-member group. OpenMLS encrypts a commit's path
    secrets on several threads at once, in an order that varies from run to run."""
    clock = Clock(SIM_MS)
    clients = [sim_client(n, clock, rng(rng_base + n)) for n in range(1, 13)]
    group = clients[0].create_group(b"big", interop=True)  # any member may commit
    _commit, welcome = group.add_members([c.key_package() for c in clients[1:]])
    groups = [group] + [c.join(welcome, interop=True) for c in clients[1:]]
    commits = []
    for updater in groups[1::3]:
        commit = updater.self_update()
        for other in groups:
            if other is not updater:
                other.process(commit)
        commits.append(commit)
    return commits


def test_commits_encrypting_path_secrets_in_parallel_repeat() -> None:
    first = path_updates(1)
    assert path_updates(1) == first
    assert path_updates(1) == first
    assert all(a != b for a, b in zip(first, path_updates(2), strict=True))


def test_without_a_seed_randomness_is_the_systems() -> None:
    first, second = run(Clock(SIM_MS), None, 1), run(Clock(SIM_MS), None, 1)
    for a, b in zip(first, second, strict=True):
        assert a != b


def test_a_seeded_run_with_state_files_sends_the_same_messages(tmp_path: Path) -> None:
    """The messages repeat (the state file's salts and nonces come from the same generator);
    the state files do not have to: OpenMLS stamps each epoch's secrets in the stored group
    state with the system time."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = run(Clock(SIM_MS), 1, CIPHERSUITE_XWING, tmp_path / "one")
    second = run(Clock(SIM_MS), 1, CIPHERSUITE_XWING, tmp_path / "two")
    assert first == second


def test_a_seeded_client_reopened_resumes_its_groups(tmp_path: Path) -> None:
    clock = Clock(SIM_MS)
    run(clock, 1, CIPHERSUITE_X25519_AES128GCM, tmp_path)
    alice = Client(
        seed(1),
        clock_ms=clock,
        rng_seed=rng(9),  # never the seed it ran under before
        storage_path=tmp_path / "1.mls",
        storage_key=bytes([1]) * 32,
        key_package_lifetime_s=LONG_S,
    )
    assert alice.load_group(b"room").epoch == 3


# --- the clock ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made_at", "lifetime_s"),
    [
        (SIM_MS + 123_456, LONG_S),  # a simulation's clock, in the past
        (wall_clock_ms(), None),  # a real node: the system clock, the default 12 weeks
    ],
)
def test_key_package_lifetime_follows_the_clock(made_at: int, lifetime_s: int | None) -> None:
    if lifetime_s is None:
        maker = Client(seed(2), clock_ms=lambda: made_at, rng_seed=None)
        lifetime_ms = LIFETIME_MS
    else:
        maker = Client(
            seed(2), clock_ms=lambda: made_at, rng_seed=None, key_package_lifetime_s=lifetime_s
        )
        lifetime_ms = lifetime_s * 1000
    kp = maker.key_package()
    identity = maker.identity
    not_before = made_at // 1000 * 1000 - HOUR_MS
    not_after = made_at // 1000 * 1000 + lifetime_ms
    for now_ms, valid in [
        (not_before - 1, False),
        (not_before, True),
        (made_at, True),
        (not_after - 1, True),
        (not_after, False),
    ]:
        if valid:
            assert key_package_identity(kp, now_ms=now_ms) == identity
        else:
            with pytest.raises(InvalidMessageError, match="Lifetime is in the"):
                key_package_identity(kp, now_ms=now_ms)
        # The same check before a group adds it, by the verifier's clock.
        verifier = Client(seed(1), clock_ms=fixed(now_ms), rng_seed=None)
        group = verifier.create_group(b"room")
        if valid:
            assert group.propose_add(kp)
            group.add_members([kp])
            assert group.epoch == 1
        else:
            with pytest.raises(InvalidMessageError, match="Lifetime is in the"):
                group.propose_add(kp)
            with pytest.raises(InvalidMessageError, match="Lifetime is in the"):
                group.add_members([kp])
            with pytest.raises(InvalidMessageError, match="Lifetime is in the"):
                group.commit(add=[kp])
            assert group.epoch == 0


def test_openmls_still_checks_key_packages_against_the_system_clock() -> None:
    """Made in 2001 with the default 12 weeks: valid by the verifier's clock (also 2001), but
    OpenMLS checks the lifetime against the system clock too, and refuses it."""
    kp = Client(seed(2), clock_ms=lambda: PAST_MS, rng_seed=None).key_package()
    with pytest.raises(InvalidMessageError, match="Lifetime is in the past"):
        key_package_identity(kp, now_ms=PAST_MS)


def test_a_group_lives_at_a_simulated_clock_in_the_past() -> None:
    """At 2026-01-01 by the clients' clock, with 100-year lifetimes: create, add (our commit,
    the Welcome's ratchet tree, a received Add proposal and a commit adding by value),
    messages, a removal and an update all work."""
    clock = Clock(SIM_MS)
    alice, bob, carol = (sim_client(n, clock) for n in (1, 2, 3))
    group = alice.create_group(b"room", CIPHERSUITE_XWING)
    bob_g = bob.join(group.add_members([bob.key_package(CIPHERSUITE_XWING)])[1])
    group.process(bob_g.propose_add(carol.key_package(CIPHERSUITE_XWING)))
    clock.now_ms += HOUR_MS
    commit, welcome = group.commit()
    assert welcome is not None
    assert bob_g.process(commit).added == [carol.identity]
    carol_g = carol.join(welcome)
    assert carol_g.process(group.encrypt(b"hi")).plaintext == b"hi"
    assert group.process(carol_g.encrypt(b"hello")).plaintext == b"hello"
    removal = group.remove_members([bob.identity])
    assert carol_g.process(removal).removed == [bob.identity]
    assert carol_g.process(group.self_update()).epoch == group.epoch == 4


def test_the_pool_expires_by_the_clock() -> None:
    clock = Clock(SIM_MS)
    bob = sim_client(2, clock)
    bob.key_packages(3)
    last_resort = bob.last_resort_key_package()
    assert bob.unused_key_packages() == 3
    clock.now_ms = SIM_MS + LONG_MS - WEEK_MS - 1000
    assert bob.unused_key_packages() == 3
    assert bob.last_resort_key_package() == last_resort
    clock.now_ms = SIM_MS + LONG_MS - 1000
    assert bob.unused_key_packages() == 3
    assert bob.last_resort_key_package() != last_resort  # renewed within a week of expiry
    clock.now_ms = SIM_MS + LONG_MS
    assert bob.unused_key_packages() == 0


def test_a_call_reads_the_clock_once_and_reads_need_none() -> None:
    clock = Clock(SIM_MS)
    alice = sim_client(1, clock)
    assert clock.reads == 0
    group = alice.create_group(b"room")
    assert clock.reads == 1
    alice.key_packages(5)
    assert clock.reads == 2
    group.encrypt(b"x")
    assert clock.reads == 3
    _ = (group.epoch, group.members(), alice.group_ids(), alice.identity)
    assert clock.reads == 3


def test_the_clock_is_called_from_worker_threads() -> None:
    threads: set[int] = set()

    def clock_ms() -> int:
        threads.add(threading.get_ident())
        return SIM_MS

    alice = sim_client(1, clock_ms)
    group = alice.create_group(b"room")
    bob = sim_client(2, clock_ms)
    bob_g = bob.join(group.add_members([bob.key_package()])[1])
    threads.clear()
    # Fewer messages than the receiver's out-of-order tolerance (32): the threads encrypt
    # them in any order, and bob processes them in the order they were submitted.
    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda i: group.encrypt(b"m%d" % i), range(30)))
        # Calls that take the lock while holding the GIL, mixed in.
        ids = list(pool.map(lambda _: alice.group_ids(), range(40)))
    assert ids == [[b"room"]] * 40
    assert threading.get_ident() not in threads and len(threads) >= 1
    assert {bob_g.process(m).plaintext for m in sent} == {b"m%d" % i for i in range(30)}


# --- required and wrong arguments ---------------------------------------------------------------


def test_clock_and_rng_seed_are_required() -> None:
    with pytest.raises(TypeError, match="clock_ms"):
        Client(seed(1), rng_seed=None)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="rng_seed"):
        Client(seed(1), clock_ms=wall_clock_ms)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Client(seed(1))  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # both are keyword-only
        Client(seed(1), wall_clock_ms, None)  # type: ignore[call-arg]
    kp = new_client(seed(2)).key_package()
    with pytest.raises(TypeError, match="now_ms"):
        key_package_identity(kp)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        key_package_identity(kp, wall_clock_ms())  # type: ignore[call-arg]


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33])
def test_an_rng_seed_has_32_bytes(bad: bytes) -> None:
    with pytest.raises(InvalidInputError, match="rng_seed must be 32 bytes"):
        Client(seed(1), clock_ms=wall_clock_ms, rng_seed=bad)


@pytest.mark.parametrize("bad", [0, -1, LONG_S + 1, 1 << 70])
def test_a_bad_key_package_lifetime_is_refused(bad: int) -> None:
    with pytest.raises(InvalidInputError, match="key_package_lifetime_s"):
        Client(seed(1), clock_ms=wall_clock_ms, rng_seed=None, key_package_lifetime_s=bad)


def test_key_package_lifetime_has_the_openmls_default_and_bounds() -> None:
    for good in (1, 12 * 7 * 24 * 3600, LONG_S):
        Client(seed(1), clock_ms=wall_clock_ms, rng_seed=None, key_package_lifetime_s=good)
    default = inspect.signature(Client).parameters["key_package_lifetime_s"].default
    assert default == LIFETIME_MS // 1000


def test_clock_ms_must_be_callable() -> None:
    with pytest.raises(InvalidInputError, match="callable"):
        Client(seed(1), clock_ms=PAST_MS, rng_seed=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "clock_ms",
    [lambda: 1.5e12, lambda: -1, lambda: True, lambda: None, lambda: "1000", lambda: 1 << 64],
)
def test_a_clock_must_return_a_non_negative_int(clock_ms: Callable[[], object]) -> None:
    client = Client(seed(1), clock_ms=clock_ms, rng_seed=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="non-negative int"):
        client.key_package()
    with pytest.raises(InvalidInputError):
        client.create_group(b"room")
    assert client.group_ids() == []


def test_an_exception_in_the_clock_fails_the_call_and_changes_nothing() -> None:
    def broken() -> int:
        raise RuntimeError("clock stopped")

    client = Client(seed(1), clock_ms=broken, rng_seed=None)
    with pytest.raises(InvalidInputError, match="clock stopped"):
        client.create_group(b"room")
    assert client.group_ids() == []
