"""A data directory that tells the truth: every damage is refused by the file's name, nothing
is recreated or rolled back to make a node start, and ``mls.state`` and ``node.db`` must be of
one moment.

The directories are real: two nodes on loopback form a group and talk, stop, and the test
damages a copy of bob's directory as a user (or a disk) would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from node.app.datadir import DataDirError
from node.app.node import Node
from node.app.profile import open_node
from node.app.store import NodeStore, read_salt, store_keys
from node.core.keyfile import FAST_KDF
from node.core.mls_state_file import Mark, parse
from tests.conftest import LOOPBACK
from tests.node_support import wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


async def _open(root: Path, name: str, runtimes: Runtimes, port: int = 0) -> Node:
    node, _ = await open_node(root / name, name.encode(), runtimes(name), name=name, kdf=FAST_KDF)
    await node.start(LOOPBACK, port)
    return node


async def _talk(alice: Node, bob: Node, group_id: bytes, rounds: int) -> None:
    for i in range(rounds):
        seen_bob, seen_alice = len(bob.inbox), len(alice.inbox)
        await alice.send_text(group_id, f"alice {i}")
        await bob.wait_for_messages(seen_bob + 1, DEADLINE)
        await bob.send_text(group_id, f"bob {i}")
        await alice.wait_for_messages(seen_alice + 1, DEADLINE)


async def _build(root: Path) -> None:
    """``root/bob``: bob's directory after a group and some talk; ``root/bob-early``: a copy
    of it taken while bob was stopped, before the last messages."""
    runtimes = Runtimes()
    try:
        alice = await _open(root, "alice", runtimes)
        bob = await _open(root, "bob", runtimes)
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        group_id = await alice.create_group()
        await alice.invite(group_id, [bob.public_key])
        await wait_until(lambda: group_id in bob.groups, DEADLINE, "bob joined")
        await _talk(alice, bob, group_id, 2)
        port = bob.address[1]
        await bob.stop()
        shutil.copytree(root / "bob", root / "bob-early")
        bob = await _open(root, "bob", runtimes, port)
        await _talk(alice, bob, group_id, 3)
        await alice.stop()
        await bob.stop()
    finally:
        runtimes.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datadir")
    asyncio.run(_build(root))
    return root


@pytest.fixture
def bob_dir(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template / "bob", tmp_path / "bob")
    return tmp_path / "bob"


def listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


async def refused(data_dir: Path, runtimes: Runtimes) -> str:
    """Open ``data_dir`` as bob's node; it must be refused, and nothing in it may change."""
    before = listing(data_dir)
    with pytest.raises(DataDirError) as caught:
        await open_node(data_dir, b"bob", runtimes("bob"), name="bob", kdf=FAST_KDF)
    after = listing(data_dir)
    assert after == before, "a refused data directory was changed"
    message = str(caught.value)
    assert "\n" not in message
    return message


def mls_ends(data_dir: Path) -> tuple[int, ...]:
    _, mls_key = store_keys(b"bob", read_salt(data_dir / "store.salt"), FAST_KDF)
    return parse((data_dir / "mls.state").read_bytes(), mls_key).ends


async def test_an_intact_directory_opens_with_its_group_and_messages(
    bob_dir: Path, runtimes: Runtimes
) -> None:
    node, created = await open_node(bob_dir, b"bob", runtimes("bob"), name="bob", kdf=FAST_KDF)
    try:
        await node.start(LOOPBACK, 0)
        assert not created
        assert len(node.groups) == 1
        assert [m.text for m in node.inbox] == [f"alice {i}" for i in (0, 1, 0, 1, 2)]
    finally:
        await node.stop()


@pytest.mark.parametrize("name", ["identity.key", "store.salt", "node.db", "mls.state"])
async def test_a_missing_state_file_is_refused_by_name_and_not_recreated(
    bob_dir: Path, runtimes: Runtimes, name: str
) -> None:
    (bob_dir / name).unlink()
    for extra in ("node.db-wal", "node.db-shm"):
        if name == "node.db":
            (bob_dir / extra).unlink(missing_ok=True)
    message = await refused(bob_dir, runtimes)
    assert f"{bob_dir / name} is missing" in message
    assert not (bob_dir / name).exists()


def cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(offset_of: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        at = offset_of(len(data))
        data[at : at + 100] = bytes(b ^ 0x5A for b in data[at : at + 100])
        path.write_bytes(bytes(data))

    return damage


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("mls.state", cut_half, "mls.state"),
        ("mls.state", flip(lambda n: n // 3), "mls.state is corrupted"),
        ("node.db", cut_half, "node.db"),
        ("node.db", flip(lambda n: n // 2), "node.db"),
        ("node.db", flip(lambda n: 200), "node.db"),
        ("identity.key", flip(lambda n: 20), "identity.key"),
        ("store.salt", lambda p: p.write_bytes(bytes(16)), "store.salt is damaged"),
        ("store.salt", lambda p: p.write_bytes(b"short"), "store.salt is damaged"),
    ],
    ids=[
        "mls-half",
        "mls-bytes",
        "db-half",
        "db-bytes",
        "db-header",
        "identity-bytes",
        "salt-replaced",
        "salt-short",
    ],
)
async def test_a_truncated_or_corrupted_file_is_refused_by_name(
    bob_dir: Path, runtimes: Runtimes, name: str, damage: Callable[[Path], None], why: str
) -> None:
    # The database's last writes may sit in its write-ahead log; a clean stop folds it in.
    assert not (bob_dir / "node.db-wal").exists()
    damage(bob_dir / name)
    message = await refused(bob_dir, runtimes)
    assert why in message


async def test_mls_state_cut_at_a_record_boundary_is_refused(
    bob_dir: Path, runtimes: Runtimes
) -> None:
    ends = mls_ends(bob_dir)
    assert len(ends) >= 3, "the template's mls.state should hold records"
    for cut in (ends[-2], ends[0]):
        path = bob_dir / "mls.state"
        data = path.read_bytes()
        path.write_bytes(data[:cut])
        message = await refused(bob_dir, runtimes)
        assert "mls.state is older than node.db, or was cut short" in message
        path.write_bytes(data)


async def test_an_older_copy_of_mls_state_is_refused(
    bob_dir: Path, template: Path, runtimes: Runtimes
) -> None:
    shutil.copy(template / "bob-early" / "mls.state", bob_dir / "mls.state")
    message = await refused(bob_dir, runtimes)
    assert "mls.state is older than node.db" in message


async def test_an_older_copy_of_node_db_is_refused(
    bob_dir: Path, template: Path, runtimes: Runtimes
) -> None:
    shutil.copy(template / "bob-early" / "node.db", bob_dir / "node.db")
    message = await refused(bob_dir, runtimes)
    assert "node.db is older than mls.state" in message


async def test_a_wrong_passphrase_is_refused_and_nothing_changes(
    bob_dir: Path, runtimes: Runtimes
) -> None:
    before = listing(bob_dir)
    with pytest.raises(DataDirError, match=r"identity\.key: wrong passphrase"):
        await open_node(bob_dir, b"not bob", runtimes("bob"), name="bob", kdf=FAST_KDF)
    assert listing(bob_dir) == before


async def test_a_new_directory_is_created_whole(tmp_path: Path, runtimes: Runtimes) -> None:
    for data_dir in (tmp_path / "absent", tmp_path / "empty"):
        if data_dir.name == "empty":
            data_dir.mkdir()
        node, created = await open_node(data_dir, b"pw", runtimes("new"), name="new", kdf=FAST_KDF)
        await node.stop()
        assert created
        assert {"identity.key", "store.salt", "node.db", "mls.state"} <= set(os.listdir(data_dir))
        again, created = await open_node(data_dir, b"pw", runtimes("new"), name="new", kdf=FAST_KDF)
        await again.stop()
        assert not created
        assert again.identity.public_key == node.identity.public_key


async def test_a_data_directory_that_is_a_file_is_refused(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DataDirError, match="is not a directory"):
        await open_node(tmp_path / "file", b"pw", runtimes("x"), name="x", kdf=FAST_KDF)


async def test_mls_state_one_call_ahead_opens_and_two_calls_ahead_is_refused(
    bob_dir: Path, template: Path, runtimes: Runtimes
) -> None:
    """A crash between writing mls.state and recording it in node.db leaves the file one call
    ahead: that opens. Two calls ahead cannot come from a crash: node.db is an older copy."""
    early = template / "bob-early"
    db_key, mls_key = store_keys(b"bob", read_salt(early / "store.salt"), FAST_KDF)
    store = NodeStore(early / "node.db", db_key, create=False)
    try:
        raw, _ = store.mls_mark()
    finally:
        store.close()
    assert raw is not None
    mark = Mark.from_bytes(raw)
    final = (bob_dir / "mls.state").read_bytes()
    image = parse(final, mls_key)
    assert image.salt == mark.salt, "the template's mls.state was rewritten: cannot cut it"
    at = image.ends.index(mark.length)
    assert len(image.ends) > at + 2
    shutil.copy(early / "node.db", bob_dir / "node.db")

    (bob_dir / "mls.state").write_bytes(final[: image.ends[at + 2]])
    assert "node.db is older than mls.state (2 MLS changes behind it)" in await refused(
        bob_dir, runtimes
    )

    (bob_dir / "mls.state").write_bytes(final[: image.ends[at + 1]])
    node, _ = await open_node(bob_dir, b"bob", runtimes("bob"), name="bob", kdf=FAST_KDF)
    try:
        await node.start(LOOPBACK, 0)
        await node.run(node.mls.key_package)  # one more MLS call: node.db catches up first
    finally:
        await node.stop()
    again, _ = await open_node(bob_dir, b"bob", runtimes("bob"), name="bob", kdf=FAST_KDF)
    await again.stop()


async def test_a_directory_whose_state_files_were_all_removed_is_not_made_new(
    bob_dir: Path, runtimes: Runtimes
) -> None:
    (bob_dir / "mls.state.lock").touch()  # left by every node that ran here
    for name in ("identity.key", "store.salt", "node.db", "mls.state"):
        (bob_dir / name).unlink()
    message = await refused(bob_dir, runtimes)
    assert "holds traces of a node (mls.state.lock)" in message
    assert not (bob_dir / "identity.key").exists()
