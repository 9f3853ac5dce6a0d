"""Failures keep what was accepted: a full disk or a read-only state file leaves every accepted
envelope in the inbox; the node says what failed, keeps running, and applies them once the
disk takes writes again.

The file systems are real: a small tmpfs the test mounts (the tests run as root) and fills
until the kernel says "No space left on device". Without mount permission the tests are
skipped with that reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app.node import Node
from node.app.profile import open_node
from node.core import wire
from node.core.errors import RemoteError
from node.core.keyfile import FAST_KDF
from tests.conftest import LOOPBACK
from tests.node_support import wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount(path: Path) -> None:
    # Lazy: the MLS client of a stopped node may still hold its lock file until collected.
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def small_fs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``."""
    path.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = getattr(exc, "stderr", b"") or str(exc).encode()
        print(f"cannot mount a tmpfs here: {reason!r}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {reason!r}")
    try:
        yield path
    finally:
        _umount(path)


def fill(fs: Path) -> Path:
    """Write a file until the file system holding ``fs`` has not one byte left."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


async def _open(root: Path, name: str, runtimes: Runtimes, port: int = 0) -> Node:
    node, _ = await open_node(root / name, name.encode(), runtimes(name), name=name, kdf=FAST_KDF)
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


async def test_envelopes_accepted_while_mls_state_cannot_grow_are_kept_and_applied_later(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """bob's mls.state lives on a small file system, which fills up: what bob accepted waits
    in his inbox, he says why, and everything shows once space is freed."""
    alice, bob, group_id = await _pair(tmp_path, runtimes)
    state = tmp_path / "bob" / "mls.state"
    with small_fs(tmp_path / "small", "1M") as small:
        try:
            port = bob.address[1]
            await bob.stop()
            shutil.copy(state, small / "mls.state")
            _mount("--bind", str(small / "mls.state"), str(state))
            try:
                bob = await _open(tmp_path, "bob", runtimes, port)
                filler = fill(small)

                # The last page of mls.state may have room for a few records: deliver until
                # one does not fit.
                texts: list[str] = []
                while bob.storage_failure is None:
                    assert len(texts) < 100, "mls.state never ran out of space"
                    texts.append(f"message {len(texts)}")
                    report = await alice.send_text(group_id, texts[-1])
                    assert not report.failed, "bob did not accept the envelope"
                    await wait_until(
                        lambda: len(bob.inbox) == len(texts) or bob.storage_failure is not None,
                        DEADLINE,
                        "bob applied it or reports a failure",
                    )
                assert "mls.state" in bob.storage_failure, bob.storage_failure
                assert "No space left on device" in bob.storage_failure
                texts.append("one more while full")
                assert not (await alice.send_text(group_id, texts[-1])).failed
                pending = await bob.run(bob.store.pending_incoming)
                assert len(pending) == 2, "an accepted envelope was dropped"
                assert [m.text for m in bob.inbox] == texts[:-2]

                filler.unlink()
                await wait_until(lambda: len(bob.inbox) == len(texts), DEADLINE, "bob applied them")
                assert [m.text for m in bob.inbox] == texts
                assert bob.storage_failure is None
                # The directory is consistent after the failures: bob restarts with both.
                await bob.stop()
                bob = await _open(tmp_path, "bob", runtimes, port)
                assert [m.text for m in bob.inbox] == texts
                await bob.send_text(group_id, "bob is fine")
                await alice.wait_for_messages(1, DEADLINE)
            finally:
                await bob.stop()
                _umount(state)
        finally:
            await alice.stop()


async def test_a_read_only_mls_state_keeps_accepted_envelopes(
    tmp_path: Path, runtimes: Runtimes, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob, group_id = await _pair(tmp_path, runtimes)
    state = tmp_path / "bob" / "mls.state"
    try:
        _mount("--bind", str(state), str(state))
    except (OSError, subprocess.CalledProcessError) as exc:
        await alice.stop()
        await bob.stop()
        pytest.skip(f"cannot bind-mount here: {exc}")
    try:
        _mount("-o", "remount,bind,ro", str(state))
        await alice.send_text(group_id, "to a read-only state file")
        await wait_until(lambda: bob.storage_failure is not None, DEADLINE, "bob says why")
        assert "Read-only file system" in (bob.storage_failure or "")
        assert len(await bob.run(bob.store.pending_incoming)) == 1
        # A KeyPackage needs a state write too: refused with a short answer, no traceback.
        with pytest.raises(RemoteError, match="the node cannot store now"):
            await alice.router.call_peer(bob.public_key, wire.FetchKeyPackage(bob.public_key))
        assert "request handler failed" not in caplog.text
        _umount(state)
        await wait_until(lambda: len(bob.inbox) == 1, DEADLINE, "bob applied it")
        assert [m.text for m in bob.inbox] == ["to a read-only state file"]
    finally:
        _umount(state)
        await alice.stop()
        await bob.stop()


async def test_a_full_disk_under_the_whole_data_directory_loses_nothing(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """bob's whole data directory is on a small file system that fills: whatever the first
    write to fail (the database stashing the envelope, or the MLS state applying it), the
    message is never lost, bob keeps running, and it shows exactly once after space is
    freed."""
    with small_fs(tmp_path / "small", "8M") as small:
        alice = await _open(tmp_path, "alice", runtimes)
        bob = await _open(small, "bob", runtimes)
        try:
            await alice.remember_peer(bob.public_key, "bob", bob.address)
            await bob.remember_peer(alice.public_key, "alice", alice.address)
            group_id = await alice.create_group()
            await alice.invite(group_id, [bob.public_key])
            await wait_until(lambda: group_id in bob.groups, DEADLINE, "bob joined")
            filler = fill(small)

            report = await alice.send_text(group_id, "while bob's disk is full")
            if report.failed:
                # bob could not store it, so he did not accept it: alice keeps it queued.
                assert await alice.outbox.pending() >= 1
            else:
                await wait_until(lambda: bob.storage_failure is not None, DEADLINE, "bob says")
                assert len(await bob.run(bob.store.pending_incoming)) == 1
            assert bob.inbox == []
            # bob is still running: he answers the next delivery (with an error or not).
            await alice.send_text(group_id, "and again")

            filler.unlink()
            # bob speaks again: alice hears from him and retries at once (without that, after
            # a refused delivery, her outbox would wait out its backoff).
            await bob.send_text(group_id, "bob has space again")
            await wait_until(lambda: len(bob.inbox) >= 2, DEADLINE, "bob got both")
            assert [m.text for m in bob.inbox] == ["while bob's disk is full", "and again"]
            port = bob.address[1]
            await bob.stop()
            bob = await _open(small, "bob", runtimes, port)
            assert [m.text for m in bob.inbox] == ["while bob's disk is full", "and again"]
        finally:
            await alice.stop()
            await bob.stop()


async def test_a_full_disk_on_the_sending_side_keeps_the_outbox_retrying(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """bob's message to an absent alice waits in his outbox; his disk fills while his node
    retries (and cannot even count the attempt); once space is back and alice returns, the
    message reaches her without bob restarting."""
    with small_fs(tmp_path / "small", "8M") as small:
        alice = await _open(tmp_path, "alice", runtimes)
        bob = await _open(small, "bob", runtimes)
        try:
            await alice.remember_peer(bob.public_key, "bob", bob.address)
            await bob.remember_peer(alice.public_key, "alice", alice.address)
            group_id = await alice.create_group()
            await alice.invite(group_id, [bob.public_key])
            await wait_until(lambda: group_id in bob.groups, DEADLINE, "bob joined")
            port = alice.address[1]
            await alice.stop()

            report = await bob.send_text(group_id, "written before the disk filled")
            assert report.failed, "alice is away: the message waits in bob's outbox"
            filler = fill(small)
            # bob's retries now fail to record anything; wait for one to have failed so.
            await wait_until(
                lambda: bob.storage_failure is not None, 30.0, "bob's outbox retry hit the disk"
            )
            filler.unlink()
            alice = await _open(tmp_path, "alice", runtimes, port)
            # alice speaks: bob hears from her and his outbox (still running) tries at once.
            await alice.send_text(group_id, "alice is back")
            messages = await alice.wait_for_messages(1, DEADLINE)
            assert [m.text for m in messages] == ["written before the disk filled"]
        finally:
            await alice.stop()
            await bob.stop()
