"""``quicnprotochat doctor``, ``backup`` and ``restore`` on real data directories.

The directories come from real nodes on loopback (with the real Argon2 cost, as the command
line uses it); ``backup`` also runs as its own process while the node it copies keeps
receiving messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.app.backup import make_backup, take_restore_notice
from node.app.cli import main
from node.app.node import Node
from node.app.profile import open_node
from node.core import wire
from node.core.identity import Identity
from node.core.keyfile import DEFAULT_KDF
from tests.conftest import LOOPBACK, running_endpoint
from tests.node_support import wait_until
from tests.runtime_support import Runtimes

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
DEADLINE = 20.0
PASS = "bob passphrase"


async def _open(root: Path, name: str, runtimes: Runtimes, port: int = 0) -> Node:
    node, _ = await open_node(
        root / name, f"{name} passphrase".encode(), runtimes(name), name=name, kdf=DEFAULT_KDF
    )
    await node.start(LOOPBACK, port)
    return node


async def _pair(root: Path, runtimes: Runtimes) -> tuple[Node, Node, bytes]:
    alice = await _open(root, "alice", runtimes)
    bob = await _open(root, "bob", runtimes)
    await alice.remember_peer(bob.public_key, "bob", bob.address)
    await bob.remember_peer(alice.public_key, "alice", alice.address)
    group_id = await alice.create_group()
    await alice.invite(group_id, [bob.public_key])
    await wait_until(lambda: group_id in bob.groups, DEADLINE, "bob joined")
    return alice, bob, group_id


async def _build(root: Path) -> None:
    runtimes = Runtimes()
    try:
        alice, bob, group_id = await _pair(root, runtimes)
        await bob.stop()
        shutil.copytree(root / "bob", root / "bob-early")
        bob = await _open(root, "bob", runtimes, 0)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        await bob.send_text(group_id, "bob is back")  # alice learns his new address
        await alice.wait_for_messages(1, DEADLINE)
        for i in range(3):
            await alice.send_text(group_id, f"hello {i}")
        await bob.wait_for_messages(3, DEADLINE)
        # A stranger asks for more KeyPackages than it may: bob counts the refusals and
        # saves the counts when he stops.
        async with running_endpoint(Identity.generate(), None) as stranger:
            conn = await stranger.dial(bob.address, bob.public_key, DEADLINE)
            for _ in range(5):
                await conn.call(wire.FetchKeyPackage(bob.public_key), DEADLINE)
        await alice.stop()
        await bob.stop()
    finally:
        runtimes.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tools")
    asyncio.run(_build(root))
    return root


@pytest.fixture
def bob_dir(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template / "bob", tmp_path / "bob")
    return tmp_path / "bob"


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def cli(*args: str, passphrase: str = PASS) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"QUICNPROTOCHAT_PASSPHRASE": passphrase})
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_doctor_finds_an_intact_directory_well_and_changes_nothing(bob_dir: Path) -> None:
    before = snapshot(bob_dir)
    code, out, err = cli("doctor", "--data-dir", str(bob_dir))
    assert (code, err) == (0, "")
    assert out.startswith(f"ok: {bob_dir}: identity ")
    assert "3 messages" in out
    assert "refused: key_package_rate_limited 2" in out
    code, out, _ = cli("doctor", "--data-dir", str(bob_dir), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["messages"] == 3
    assert report["refused"] == {"key_package_rate_limited": 2}
    assert report["invitations"] == 0
    assert snapshot(bob_dir) == before, "doctor changed the data directory"


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / "mls.state").unlink(), "mls.state is missing"),
        (lambda d: (d / "store.salt").unlink(), "store.salt is missing"),
        (lambda d: (d / "node.db").write_bytes((d / "node.db").read_bytes()[:5000]), "node.db"),
        (
            lambda d: shutil.copy(d.parent / "early" / "mls.state", d / "mls.state"),
            "mls.state is older than node.db",
        ),
        (
            lambda d: shutil.copy(d.parent / "early" / "node.db", d / "node.db"),
            "node.db is older than mls.state",
        ),
        (lambda d: (d / "identity.key").chmod(0o644), "identity.key is open to other users"),
    ],
    ids=["no-mls", "no-salt", "db-cut", "old-mls", "old-db", "mode"],
)
def test_doctor_names_each_problem_and_changes_nothing(
    bob_dir: Path, template: Path, damage: object, named: str
) -> None:
    shutil.copytree(template / "bob-early", bob_dir.parent / "early")
    damage(bob_dir)  # type: ignore[operator]
    before = snapshot(bob_dir)
    code, out, err = cli("doctor", "--data-dir", str(bob_dir))
    assert code == 1
    lines = err.splitlines()
    assert lines, out
    assert all(line.startswith("ERROR: ") for line in lines)
    assert any(named in line for line in lines), err
    code, out, _ = cli("doctor", "--data-dir", str(bob_dir), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert any(named in problem for problem in report["problems"])
    assert snapshot(bob_dir) == before, "doctor changed the data directory"
    assert not (bob_dir / "store.salt").exists() or named != "store.salt is missing"


def test_doctor_on_a_directory_without_a_node_and_with_a_wrong_passphrase(
    bob_dir: Path, tmp_path: Path
) -> None:
    code, _, err = cli("doctor", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1
    assert "holds no node" in err
    assert not (tmp_path / "nothing").exists()
    code, _, err = cli("doctor", "--data-dir", str(bob_dir), passphrase="wrong")
    assert code == 1
    assert err.count("\n") == 1
    assert "identity.key: wrong passphrase" in err


def test_peers_never_creates_a_salt(bob_dir: Path) -> None:
    (bob_dir / "store.salt").unlink()
    code, _, err = cli("peers", "--data-dir", str(bob_dir))
    assert code == 1
    assert "store.salt is missing" in err
    assert not (bob_dir / "store.salt").exists()


def test_backup_and_restore_round_trip_into_an_empty_directory(
    bob_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bob.backup"
    code, text, err = cli("backup", "--data-dir", str(bob_dir), "--out", str(out))
    assert (code, err) == (0, ""), err
    assert "3 messages" in text
    sealed = out.read_bytes()
    assert sealed.startswith(b"QPCE")
    assert b"hello" not in sealed
    assert out.stat().st_mode & 0o777 == 0o600
    # Never over an existing file or into a directory that holds anything.
    code, _, err = cli("backup", "--data-dir", str(bob_dir), "--out", str(out))
    assert code == 1
    assert "exists" in err
    code, _, err = cli("restore", "--from", str(out), "--data-dir", str(bob_dir))
    assert code == 1
    assert "is not empty" in err
    code, _, err = cli(
        "restore", "--from", str(out), "--data-dir", str(tmp_path / "r"), passphrase="x"
    )
    assert code == 1
    assert "wrong passphrase" in err
    assert not (tmp_path / "r").exists()

    code, text, err = cli("restore", "--from", str(out), "--data-dir", str(tmp_path / "r"))
    assert (code, err) == (0, ""), err
    assert "at the epochs they had then" in text
    code, _, err = cli("doctor", "--data-dir", str(tmp_path / "r"))
    assert code == 0, err


async def test_a_backup_of_a_running_node_is_consistent_and_restores_behind(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """bob keeps receiving while ``quicnprotochat backup`` (its own process) copies his
    directory; the restored directory opens, holds a prefix of his messages, and warns once
    that it is behind."""
    alice, bob, group_id = await _pair(tmp_path, runtimes)
    try:
        sent: list[str] = []

        async def keep_sending() -> None:
            while True:
                sent.append(f"flowing {len(sent)}")
                await alice.send_text(group_id, sent[-1])

        sender = asyncio.get_running_loop().create_task(keep_sending())
        try:
            await wait_until(lambda: len(bob.inbox) >= 3, DEADLINE, "messages flow")
            proc = await asyncio.create_subprocess_exec(
                str(SCRIPT),
                "backup",
                "--data-dir",
                str(tmp_path / "bob"),
                "--out",
                str(tmp_path / "bob.backup"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=PASS),
            )
            async with asyncio.timeout(60):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            seen_at_backup = len(bob.inbox)
            # doctor on the running node: a consistent snapshot, not a false alarm.
            doctor = await asyncio.create_subprocess_exec(
                *(str(SCRIPT), "doctor", "--data-dir", str(tmp_path / "bob")),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=PASS),
            )
            async with asyncio.timeout(60):
                doctor_out, doctor_err = await doctor.communicate()
            assert doctor.returncode == 0, doctor_err.decode()
            assert doctor_out.decode().startswith("note: a node is running on this directory")
            await wait_until(lambda: len(bob.inbox) >= seen_at_backup + 3, DEADLINE, "more")
        finally:
            sender.cancel()
        code, _, err_text = cli(
            "restore", "--from", str(tmp_path / "bob.backup"), "--data-dir", str(tmp_path / "r")
        )
        assert code == 0, err_text
        restored, created = await open_node(
            tmp_path / "r", PASS.encode(), runtimes("r"), name="bob", kdf=DEFAULT_KDF
        )
        try:
            assert not created
            texts = [m.text for m in await restored.run(restored.store.messages)]
            live = [m.text for m in bob.inbox]
            assert texts == live[: len(texts)], "the backup is not a moment of bob's history"
            assert 3 <= len(texts) < len(live)
            assert len(await restored.run(restored.mls.group_ids)) == 1
            assert take_restore_notice(restored.store) is not None
            assert take_restore_notice(restored.store) is None
        finally:
            await restored.stop()
    finally:
        await alice.stop()
        await bob.stop()


def test_a_backup_cuts_mls_state_where_node_db_recorded_it(
    bob_dir: Path, template: Path, tmp_path: Path
) -> None:
    """node.db of one moment, mls.state appended to since: a stopped node's directory in that
    state is refused by backup as by doctor; for a running node (which writes during the
    backup) the backup holds mls.state only up to the record node.db names."""
    shutil.copy(template / "bob-early" / "node.db", bob_dir / "node.db")
    out = tmp_path / "b.backup"
    code, _, err = cli("backup", "--data-dir", str(bob_dir), "--out", str(out))
    assert code == 1
    assert "node.db is older than mls.state" in err
    assert not out.exists()

    with tempfile.TemporaryDirectory() as scratch:
        blob, _ = make_backup(
            bob_dir, PASS.encode(), DEFAULT_KDF, 1, os.urandom(28), Path(scratch), live=True
        )
    out.write_bytes(blob)
    code, _, err = cli("restore", "--from", str(out), "--data-dir", str(tmp_path / "r"))
    assert code == 0, err
    restored = (tmp_path / "r" / "mls.state").read_bytes()
    assert restored == (template / "bob-early" / "mls.state").read_bytes()[: len(restored)]
    assert len(restored) < (bob_dir / "mls.state").stat().st_size
    code, _, err = cli("doctor", "--data-dir", str(tmp_path / "r"))
    assert code == 0, err


async def test_a_restored_node_says_at_start_that_it_is_behind(
    bob_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bob.backup"
    assert cli("backup", "--data-dir", str(bob_dir), "--out", str(out))[0] == 0
    assert cli("restore", "--from", str(out), "--data-dir", str(tmp_path / "r"))[0] == 0

    async def start() -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            *(str(SCRIPT), "node", "run", "--name", "bob", "--data-dir", str(tmp_path / "r")),
            *("--no-mdns", "--no-dht"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=PASS),
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(DEADLINE):
                while b"listening on" not in await proc.stdout.readline():
                    pass
        finally:
            proc.terminate()
            async with asyncio.timeout(DEADLINE):
                _, err = await proc.communicate()
        return err.decode().splitlines()

    first = await start()
    assert any(line.startswith("WARNING: restored from the backup of") for line in first)
    assert any(line.startswith("WARNING: group ") and "at epoch" in line for line in first)
    assert not any("Traceback" in line for line in first)
    # Said once: the next start is a normal one.
    assert not any("restored" in line for line in await start())


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            lambda d: (d / "mls.state").write_bytes((d / "mls.state").read_bytes()[:3000]),
            "mls.state",
        ),
        (lambda d: (d / "store.salt").unlink(), "store.salt is missing"),
        (lambda d: (d / "node.db").unlink(), "node.db is missing"),
    ],
    ids=["mls-cut", "no-salt", "no-db"],
)
async def test_node_run_refuses_a_damaged_directory_in_one_line(
    bob_dir: Path, damage: object, named: str
) -> None:
    damage(bob_dir)  # type: ignore[operator]
    before = snapshot(bob_dir)
    proc = await asyncio.create_subprocess_exec(
        *(str(SCRIPT), "node", "run", "--name", "bob", "--data-dir", str(bob_dir)),
        *("--no-mdns", "--no-dht"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=PASS),
    )
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: ")
    assert named in lines[0]
    assert snapshot(bob_dir) == before
