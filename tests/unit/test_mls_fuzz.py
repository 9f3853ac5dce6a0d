"""Mutation fuzzing of every binding entry point that takes bytes.

Each entry point gets valid inputs, mutated (bit flips, interesting bytes, truncation,
insertion, deletion, duplication, splicing). Every failure must be an ``MlsError``
subclass, the interpreter never crashes, and the group still works afterwards.

``QPC_FUZZ_ITERATIONS`` sets the inputs per entry point (default 300; run with 10000 by
hand), ``QPC_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from openmls_bindings import (
    CIPHERSUITE_XWING,
    Client,
    Group,
    MlsError,
    StorageError,
    key_package_identity,
)

from tests.mls_support import new_client, wall_clock_ms

ITERATIONS = int(os.environ.get("QPC_FUZZ_ITERATIONS", "300"))
SEED = int(os.environ.get("QPC_FUZZ_SEED", "9420"))
INTERESTING = [0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF]
# A panic inside the binding surfaces with this text; it must never happen.
PANIC_TEXT = "internal error in the MLS library"


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
        op = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rng.choice(INTERESTING)
        elif op == 2:
            del out[at:]
        elif op == 3:
            out[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 4 and out:
            del out[at : at + rng.randrange(1, 33)]
        elif op == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randrange(1, 65)]
        elif op == 6:
            # A long MLS varint length (RFC 9420 §2.1.2) where a short one was.
            out[at:at] = bytes([0x80 | rng.randrange(0x40), 0xFF, 0xFF, rng.randrange(256)])
        elif others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out = out[:at] + bytearray(other[cut:])
    if out == data:  # a no-op mutation (e.g. truncating at the end): change one bit
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        else:
            out.append(rng.randrange(256))
    return bytes(out)


@dataclass
class Tally:
    """Outcomes of one entry point: error class names (and successes)."""

    outcomes: Counter[str] = field(default_factory=Counter)

    def run(self, call: Callable[..., object], *args: object) -> bool:
        """True if ``call(*args)`` succeeded; an MlsError is recorded; anything else fails."""
        error: MlsError | None = None
        try:
            call(*args)
        except MlsError as exc:
            error = exc
        if error is None:
            self.outcomes["ok"] += 1
            return True
        assert PANIC_TEXT not in str(error)
        assert len(str(error)) < 300
        self.outcomes[type(error).__name__] += 1
        return False


@dataclass
class World:
    """alice (committer) with bob and carol; inputs made but not yet delivered to bob."""

    alice: Group
    bob: Group
    carol: Group
    alice_client: Client
    application: bytes
    proposal: bytes
    commit: bytes
    welcome: bytes
    group_info: bytes
    key_packages: list[bytes]

    @property
    def seeds(self) -> list[bytes]:
        return [
            self.application,
            self.proposal,
            self.commit,
            self.welcome,
            self.group_info,
            *self.key_packages,
        ]


def make_world() -> World:
    alice_client, bob_client, carol_client = (
        new_client(seed(1)),
        new_client(seed(2)),
        new_client(seed(3)),
    )
    alice = alice_client.create_group(b"fuzz", external_joins=True)
    _commit, welcome = alice.add_members([bob_client.key_package(), carol_client.key_package()])
    bob, carol = bob_client.join(welcome), carol_client.join(welcome)
    application = alice.encrypt(b"hello bob")
    proposal = carol.propose_update()
    alice.process(proposal)
    # A commit for bob to process (covering carol's proposal, which bob has not seen:
    # the real one is delivered in order at the end).
    outsider = new_client(seed(4))
    commit, welcome_2 = alice.add_members([outsider.key_package()])
    key_packages = [
        new_client(seed(5)).key_package(),
        new_client(seed(6)).key_package(CIPHERSUITE_XWING),
        new_client(seed(7)).last_resort_key_package(),
    ]
    return World(
        alice=alice,
        bob=bob,
        carol=carol,
        alice_client=alice_client,
        application=application,
        proposal=proposal,
        commit=commit,
        welcome=welcome_2,
        group_info=alice.export_group_info(),
        key_packages=key_packages,
    )


def check_group_still_works(w: World) -> None:
    """The real inputs, delivered in order, still work for bob; and messages flow."""
    assert w.bob.process(w.application).plaintext == b"hello bob"
    w.bob.process(w.proposal)
    assert w.bob.process(w.commit).epoch == w.alice.epoch
    assert w.alice.process(w.bob.encrypt(b"still fine")).plaintext == b"still fine"
    assert w.bob.process(w.alice.encrypt(b"and back")).plaintext == b"and back"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(f"{SEED}-{request.node.name}")


def test_fuzz_process(rng: random.Random) -> None:
    w = make_world()
    tally = Tally()
    for _ in range(ITERATIONS):
        data = mutate(rng, rng.choice(w.seeds), w.seeds)
        if tally.run(w.bob.process, data):
            # Only a re-encoding of a real input can pass; it is then used up.
            w = make_world()
    assert w.bob.epoch == 1
    check_group_still_works(w)
    assert tally.outcomes["ok"] <= ITERATIONS // 100, tally.outcomes


def test_fuzz_join(rng: random.Random) -> None:
    alice = new_client(seed(1)).create_group(b"fuzz")
    joiner = new_client(seed(2))
    # A last-resort KeyPackage survives joining, so every mutant meets a live key.
    _commit, welcome = alice.add_members([joiner.last_resort_key_package()])
    seeds = [welcome, alice.export_group_info(), alice.encrypt(b"x")]
    tally = Tally()
    for _ in range(ITERATIONS):
        data = mutate(rng, welcome, seeds)
        if tally.run(joiner.join, data):
            joiner.forget_group(b"fuzz")
    group = joiner.join(welcome)
    assert group.process(alice.encrypt(b"joined")).plaintext == b"joined"


def test_fuzz_join_external(rng: random.Random) -> None:
    w = make_world()
    seeds = [w.group_info, w.welcome, w.commit]
    tally = Tally()
    for n in range(ITERATIONS):
        data = mutate(rng, w.group_info, seeds)
        joiner = new_client(bytes([8, n % 256, n // 256]) + bytes(29))
        tally.run(joiner.join_external, data)
    check_group_still_works(w)
    group, commit = new_client(seed(9)).join_external(w.group_info)
    assert w.bob.process(commit).added == [new_client(seed(9)).identity]
    assert w.bob.process(group.encrypt(b"outsider in")).plaintext == b"outsider in"


def test_fuzz_key_package_identity(rng: random.Random) -> None:
    w = make_world()
    tally = Tally()
    for _ in range(ITERATIONS):
        data = mutate(rng, rng.choice(w.key_packages), w.seeds)
        tally.run(lambda kp: key_package_identity(kp, now_ms=wall_clock_ms()), data)
    assert (
        key_package_identity(w.key_packages[0], now_ms=wall_clock_ms())
        == new_client(seed(5)).identity
    )


@pytest.mark.parametrize("entry", ["add_members", "commit", "propose_add"])
def test_fuzz_key_packages_into_a_group(rng: random.Random, entry: str) -> None:
    w = make_world()
    tally = Tally()
    for _ in range(ITERATIONS):
        data = mutate(rng, rng.choice(w.key_packages), w.seeds)
        if entry == "add_members":
            ok = tally.run(w.alice.add_members, [data])
        elif entry == "commit":
            ok = tally.run(w.alice.commit, [data])
        else:
            ok = tally.run(w.bob.propose_add, data)
        if ok and entry != "propose_add":
            w = make_world()
    epoch = w.alice.epoch
    assert w.alice.pending_proposals == 0  # nothing was stored
    check_group_still_works(w)
    assert w.alice.epoch == epoch


def test_fuzz_member_identities(rng: random.Random) -> None:
    w = make_world()
    identities = [identity for _, identity in w.alice.members()]
    tally = Tally()
    for _ in range(ITERATIONS):
        data = mutate(rng, rng.choice(identities), identities)
        if data in identities:
            continue
        assert not tally.run(w.alice.remove_members, [data])
        assert not tally.run(w.alice.hand_over, data)
        assert not tally.run(w.bob.propose_remove, data)
    check_group_still_works(w)


def test_fuzz_state_file(rng: random.Random, tmp_path: Path) -> None:
    path, key = tmp_path / "state.mls", b"K" * 32
    client = new_client(seed(1), path, key)
    group = client.create_group(b"fuzz")
    group.add_members([new_client(seed(2)).key_package()])
    del client, group
    good = path.read_bytes()
    base = base_end(good)
    for _ in range(ITERATIONS):
        data = mutate(rng, good, [])
        if data == good:
            continue
        path.write_bytes(data)
        try:
            opened = new_client(seed(1), path, key)
        except StorageError:
            continue
        # Opening is allowed only when the base is intact and the damage reads as an append
        # cut short (the file ends inside the damaged record): the store is then as it was
        # after an earlier call, like an older copy of the file.
        assert data[:base] == good[:base], "damage to the base went unnoticed"
        if opened.group_ids():
            earlier = opened.load_group(b"fuzz")
            assert (earlier.epoch, len(earlier.members())) in {(0, 1), (1, 2)}
        del opened
    path.write_bytes(good)
    group = new_client(seed(1), path, key).load_group(b"fuzz")
    assert group.epoch == 1
    assert len(group.members()) == 2


def base_end(state: bytes) -> int:
    """Where a state file's base ends (see openmls-bindings/src/store_file.rs)."""
    return 78 + int.from_bytes(state[70:78], "big") + 16
