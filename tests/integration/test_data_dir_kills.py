"""A node killed at any instruction leaves a data directory that opens: the record of where
``mls.state`` stands (ADR 0004) never makes a crash look like an older file.

A child process opens a node and makes MLS calls as fast as it can (KeyPackages and key
updates: appended records, and new bases when the records outgrow the old one); the test
SIGKILLs it at random moments and opens the directory after each kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from node.app.datadir import open_existing
from node.core.keyfile import FAST_KDF

KILLS = 20
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from node.app.profile import open_node
    from node.core.keyfile import FAST_KDF
    from node.transport.runtime import RealRuntime

    async def main(data_dir):
        runtime = RealRuntime("child")
        node, _ = await open_node(Path(data_dir), b"pw", runtime, name="child", kdf=FAST_KDF)
        await node.start("127.0.0.1", 0)
        if not node.groups:
            await node.create_group()
        group = next(iter(node.groups.values()))
        print("open", flush=True)
        while True:
            await node.run(node.mls.key_package)
            await node.run(group.self_update)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_a_node_killed_at_random_moments_always_opens_again(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}")  # to repeat a failure
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    seen_ahead = 0
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == b"open\n", child.communicate()[1].decode()[-2000:]
            # The moment of the kill is what is random here, not a wait for a condition.
            time.sleep(rng.uniform(0.02, 0.6))
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate()
        opened = open_existing(data_dir, b"pw", FAST_KDF)
        opened.store.close()
        seen_ahead += opened.ahead
        assert opened.image is not None, f"kill {kill}"
    print(f"{KILLS} kills, {seen_ahead} left mls.state one call ahead")
