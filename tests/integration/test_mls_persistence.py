"""The binding's encrypted state file (real files): restarts, damage, locking, rollback,
and a crash test that SIGKILLs a process at random points while it commits and processes.
"""

from __future__ import annotations

import gc
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openmls_bindings import (
    Group,
    InvalidInputError,
    NotMemberError,
    StorageError,
)

from tests.mls_support import new_client


def seed(n: int) -> bytes:
    return bytes([n]) * 32


ALICE, BOB, CAROL = seed(1), seed(2), seed(3)
KEY_A, KEY_B = b"A" * 32, b"B" * 32


def collect() -> None:
    """Drop unreferenced clients and groups now, so their file locks are released."""
    gc.collect()


@pytest.fixture
def two_members(tmp_path: Path) -> tuple[Path, Path]:
    """alice (committer) and bob, each with a state file, in group b"room" at epoch 1."""
    path_a, path_b = tmp_path / "alice.mls", tmp_path / "bob.mls"
    alice, bob = new_client(ALICE, path_a, KEY_A), new_client(BOB, path_b, KEY_B)
    group = alice.create_group(b"room")
    _commit, welcome = group.add_members([bob.key_package()])
    bob_group = bob.join(welcome)
    assert bob_group.process(group.encrypt(b"before")).plaintext == b"before"
    del alice, bob, group, bob_group
    collect()
    return path_a, path_b


def reopen(path_a: Path, path_b: Path) -> tuple[Group, Group]:
    alice, bob = new_client(ALICE, path_a, KEY_A), new_client(BOB, path_b, KEY_B)
    assert alice.group_ids() == bob.group_ids() == [b"room"]
    return alice.load_group(b"room"), bob.load_group(b"room")


# --- restarts ---------------------------------------------------------------------------------


def test_groups_resume_at_their_epoch_after_a_restart(two_members: tuple[Path, Path]) -> None:
    path_a, path_b = two_members
    alice, bob = reopen(path_a, path_b)
    assert alice.epoch == bob.epoch == 1
    assert alice.committer == bob.committer == new_client(ALICE).identity
    assert bob.process(alice.encrypt(b"after restart")).plaintext == b"after restart"
    assert alice.process(bob.encrypt(b"me too")).plaintext == b"me too"
    commit = alice.self_update()
    del alice, bob
    collect()
    alice, bob = reopen(path_a, path_b)
    assert (alice.epoch, bob.epoch) == (2, 1)
    assert alice.last_commit() == (commit, None)  # so it can be sent again
    assert bob.process(commit).epoch == 2
    assert alice.process(bob.encrypt(b"epoch 2")).plaintext == b"epoch 2"


def test_a_welcome_that_arrives_after_a_restart_still_joins(tmp_path: Path) -> None:
    path = tmp_path / "bob.mls"
    bob = new_client(BOB, path, KEY_B)
    pool = bob.key_packages(2)
    last_resort = bob.last_resort_key_package()
    del bob
    collect()
    alice = new_client(ALICE)
    first = alice.create_group(b"first")
    second = alice.create_group(b"second")
    _commit, welcome_1 = first.add_members([pool[1]])
    _commit, welcome_2 = second.add_members([last_resort])

    bob = new_client(BOB, path, KEY_B)
    assert bob.unused_key_packages() == 2
    assert bob.last_resort_key_package() == last_resort  # stable across restarts
    bob.join(welcome_1)
    bob.join(welcome_2)
    del bob
    collect()
    bob = new_client(BOB, path, KEY_B)
    assert bob.group_ids() == [b"first", b"second"]
    assert bob.unused_key_packages() == 1
    assert bob.load_group(b"first").process(first.encrypt(b"1")).plaintext == b"1"
    assert bob.load_group(b"second").process(second.encrypt(b"2")).plaintext == b"2"
    with pytest.raises(NotMemberError):
        bob.load_group(b"third")


def test_forgetting_a_group_is_persistent(two_members: tuple[Path, Path]) -> None:
    path_a, _path_b = two_members
    alice = new_client(ALICE, path_a, KEY_A)
    alice.forget_group(b"room")
    with pytest.raises(NotMemberError):
        alice.forget_group(b"room")
    del alice
    collect()
    assert new_client(ALICE, path_a, KEY_A).group_ids() == []


# --- keys, damage and locking -------------------------------------------------------------


def test_a_wrong_storage_key_is_a_storage_error(two_members: tuple[Path, Path]) -> None:
    path_a, _ = two_members
    with pytest.raises(StorageError, match="wrong storage key"):
        new_client(ALICE, path_a, KEY_B)
    with pytest.raises(StorageError, match="another identity"):
        new_client(BOB, path_a, KEY_A)
    assert new_client(ALICE, path_a, KEY_A).group_ids() == [b"room"]


HEADER_LEN = 78  # magic, version, suite, salt, nonce, key check, base length
TAG_LEN = 16


def base_end(state: bytes) -> int:
    """Where the base image ends and the records of later calls begin."""
    return HEADER_LEN + int.from_bytes(state[70:78], "big") + TAG_LEN


def test_damage_to_the_base_or_an_earlier_record_is_a_storage_error(
    two_members: tuple[Path, Path],
) -> None:
    path_a, _ = two_members
    good = path_a.read_bytes()
    end = base_end(good)
    assert end < len(good), "the later calls were appended as records"
    rng = random.Random(7)
    cuts = [0, 1, 7, 8, 69, 70, 85, end // 2, end - 1]
    flips = [(i, 1 << rng.randrange(8)) for i in [0, 8, 9, 10, 45, 60, 75, end - 1]]
    flips += [(rng.randrange(end), 1 << rng.randrange(8)) for _ in range(40)]
    # The body of the first record (past its 4-byte length), with records after it.
    flips += [(rng.randrange(end + 4, end + 40), 1 << rng.randrange(8)) for _ in range(10)]
    damaged = [good[:cut] for cut in cuts]
    for at, bit in flips:
        damaged.append(good[:at] + bytes([good[at] ^ bit]) + good[at + 1 :])
    for data in damaged:
        path_a.write_bytes(data)
        with pytest.raises(StorageError):
            new_client(ALICE, path_a, KEY_A)
    path_a.write_bytes(good)
    assert new_client(ALICE, path_a, KEY_A).load_group(b"room").epoch == 1


def test_a_torn_last_record_leaves_the_call_undone(two_members: tuple[Path, Path]) -> None:
    """A process killed while appending a call's record: the call never happened."""
    path_a, _ = two_members
    before = path_a.read_bytes()
    group = new_client(ALICE, path_a, KEY_A).load_group(b"room")
    group.self_update()
    assert group.epoch == 2
    del group
    collect()
    after = path_a.read_bytes()
    assert after.startswith(before), "the commit was appended as one record"
    rng = random.Random(11)
    torn = [after[:cut] for cut in rng.sample(range(len(before) + 1, len(after)), 20)]
    torn.append(after[:-1] + bytes([after[-1] ^ 1]))
    for data in torn:
        path_a.write_bytes(data)
        alice = new_client(ALICE, path_a, KEY_A)
        assert alice.load_group(b"room").epoch == 1
        # The next call writes a clean file again.
        alice.key_package()
        del alice
        collect()
        assert base_end(path_a.read_bytes()) == len(path_a.read_bytes())
    path_a.write_bytes(after)
    assert new_client(ALICE, path_a, KEY_A).load_group(b"room").epoch == 2


def test_nothing_private_is_written_in_cleartext(tmp_path: Path) -> None:
    path = tmp_path / "alice.mls"
    alice, bob = new_client(ALICE, path, KEY_A), new_client(BOB)
    group = alice.create_group(b"cleartext-check")
    _commit, welcome = group.add_members([bob.key_package()])
    secret = group.exporter("probe", b"", 32)
    bob.join(welcome).process(group.encrypt(b"a very private sentence"))
    data = path.read_bytes()
    for needle in (ALICE, secret, b"a very private sentence", b"cleartext-check", alice.identity):
        assert needle not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "alice.mls.tmp").exists()


def open_in_another_process(path: Path) -> str:
    """Try to open ``path`` as alice from a child process; returns what it printed."""
    code = (
        "import sys, time\n"
        "from openmls_bindings import Client, StorageError\n"
        "try:\n"
        "    Client(bytes([1]) * 32, clock_ms=lambda: time.time_ns() // 1_000_000,\n"
        "           rng_seed=None, storage_path=sys.argv[1], storage_key=b'A' * 32)\n"
        "    print('opened')\n"
        "except StorageError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_one_process_and_one_writer_per_file(two_members: tuple[Path, Path]) -> None:
    path_a, _ = two_members
    alice = new_client(ALICE, path_a, KEY_A)
    group = alice.load_group(b"room")
    assert "already open in another client or process" in open_in_another_process(path_a)
    # In this process a newer client takes over (a node restarted in-process); the
    # older one can no longer write, so it never overwrites the newer one's state.
    newer = new_client(ALICE, path_a, KEY_A).load_group(b"room")
    with pytest.raises(StorageError, match="opened again by a newer client"):
        group.self_update()
    with pytest.raises(StorageError, match="opened again by a newer client"):
        group.encrypt(b"from the old client")
    assert group.epoch == 1
    newer.self_update()
    assert newer.epoch == 2
    assert "already open" in open_in_another_process(path_a)
    del alice, group, newer
    collect()
    assert open_in_another_process(path_a) == "opened"


def test_bad_storage_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="32 bytes"):
        new_client(ALICE, tmp_path / "a.mls", b"short")
    with pytest.raises(InvalidInputError, match="together"):
        new_client(ALICE, tmp_path / "a.mls")
    with pytest.raises(StorageError):
        new_client(ALICE, tmp_path / "missing-dir" / "a.mls", KEY_A)
    (tmp_path / "junk.mls").write_bytes(b"hello")
    with pytest.raises(StorageError, match="not an MLS state file"):
        new_client(ALICE, tmp_path / "junk.mls", KEY_A)
    new_client(ALICE, str(tmp_path / "as-str.mls"), KEY_A)  # str works as well as Path


def test_a_failed_write_undoes_the_call(two_members: tuple[Path, Path]) -> None:
    path_a, path_b = two_members
    alice, bob = reopen(path_a, path_b)
    before = path_a.read_bytes()
    last_commit = alice.last_commit()  # the commit that added bob
    assert last_commit is not None
    # A directory where the file was: neither an append nor a new file can be written
    # (permissions would not stop a test running as root).
    aside = path_a.with_name("aside")
    path_a.rename(aside)
    path_a.mkdir()
    with pytest.raises(StorageError, match="MLS state file"):
        alice.self_update()
    with pytest.raises(StorageError):
        alice.encrypt(b"lost")
    assert alice.epoch == 1
    assert alice.last_commit() == last_commit
    path_a.rmdir()
    aside.rename(path_a)
    assert path_a.read_bytes() == before
    commit = alice.self_update()
    assert bob.process(commit).epoch == alice.epoch == 2


# --- crash test -------------------------------------------------------------------------------

CHILD = r"""
import sys
import time
from openmls_bindings import Client, MlsError


def new_client(signing_key, storage_path=None, storage_key=None):
    return Client(signing_key, clock_ms=lambda: time.time_ns() // 1_000_000, rng_seed=None,
                  storage_path=storage_path, storage_key=storage_key)


path_a, path_b = sys.argv[1], sys.argv[2]
alice = new_client(bytes([1]) * 32, path_a, b"A" * 32).load_group(b"room")
bob = new_client(bytes([2]) * 32, path_b, b"B" * 32).load_group(b"room")
carol_seed = bytes([3]) * 32
carol = None
print("ready", flush=True)
tick = 0
while True:
    tick += 1
    step = tick % 4
    if step == 0:
        bob.process(alice.self_update())
    elif step == 1:
        alice.process(bob.propose_update())
        bob.process(alice.commit()[0])
    elif step == 2:
        members = [identity for _, identity in alice.members()]
        carol_client = new_client(carol_seed)
        if carol_client.identity in members:
            bob.process(alice.remove_members([carol_client.identity]))
        else:
            commit, welcome = alice.add_members([carol_client.key_package()])
            bob.process(commit)
            carol = carol_client.join(welcome)
            bob.process(carol.encrypt(b"carol"))
    else:
        for n in range(3):
            assert bob.process(alice.encrypt(b"a%d" % n)).plaintext == b"a%d" % n
            assert alice.process(bob.encrypt(b"b%d" % n)).plaintext == b"b%d" % n
    print("tick", tick, flush=True)
"""


def run_until_killed(path_a: Path, path_b: Path, rng: random.Random) -> int:
    """Start the child, let it run a random number of steps, SIGKILL it mid-step."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path_a), str(path_b)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        target = rng.randint(1, 12)
        ticks = 0
        while ticks < target:
            line = proc.stdout.readline()
            assert line.startswith("tick"), proc.stderr.read() if proc.stderr else line
            ticks += 1
        time.sleep(rng.uniform(0, 0.02))  # lands anywhere inside the next step
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode == -9
        return ticks
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_killed_at_any_moment_the_group_stays_consistent(
    two_members: tuple[Path, Path],
) -> None:
    path_a, path_b = two_members
    rng = random.Random(int(os.environ.get("QPC_CRASH_SEED", "2024")))
    rounds = int(os.environ.get("QPC_CRASH_ROUNDS", "12"))
    for _ in range(rounds):
        run_until_killed(path_a, path_b, rng)
        alice, bob = reopen(path_a, path_b)
        # Each file holds the state before or after every call: bob can be at most
        # the one commit behind that alice made just before the kill, and alice
        # still has that commit to send again.
        assert alice.epoch - bob.epoch in (0, 1), (alice.epoch, bob.epoch)
        if alice.epoch > bob.epoch:
            last = alice.last_commit()
            assert last is not None
            assert bob.process(last[0]).epoch == alice.epoch
        assert alice.members() == bob.members()
        # The NEXT message from the other member decrypts, both ways.
        assert alice.process(bob.encrypt(b"next from bob")).plaintext == b"next from bob"
        assert bob.process(alice.encrypt(b"next from alice")).plaintext == b"next from alice"
        del alice, bob
        collect()


def test_a_delivery_is_remembered_across_a_restart(two_members: tuple[Path, Path]) -> None:
    """The outcome is written with the message's effect: a caller that died before recording
    it gets it again after the restart."""
    path_a, path_b = two_members
    alice, bob = reopen(path_a, path_b)
    message = alice.encrypt(b"before the crash")
    assert bob.process(message, delivery_id=b"envelope").plaintext == b"before the crash"
    del bob
    collect()
    _, bob = reopen(path_a, path_b)
    again = bob.process(message, delivery_id=b"envelope")
    assert (again.plaintext, again.repeated) == (b"before the crash", True)
