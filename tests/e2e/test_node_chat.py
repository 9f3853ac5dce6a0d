"""Two ``quicnprotochat node run`` processes chat over loopback with no relay at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
LINE_DEADLINE = 30.0


class NodeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read stdout lines until one matches, within the deadline."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(LINE_DEADLINE):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    assert self.proc.stderr is not None
                    err = (await self.proc.stderr.read()).decode()
                    raise AssertionError(f"node exited before {pattern!r}: {err[-2000:]}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if match := re.search(pattern, line):
                    return match

    async def type_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()


@contextlib.asynccontextmanager
async def front_end_process(
    tmp: Path, name: str, command: tuple[str, ...], *args: str
) -> AsyncIterator[NodeProcess]:
    """``quicnprotochat <command>`` for the node ``name`` on loopback, stopped afterwards."""
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{name} passphrase")
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *command,
        "--name",
        name,
        "--data-dir",
        str(tmp / name),
        "--listen",
        "127.0.0.1:0",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield NodeProcess(proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(15):
                await proc.wait()


def node_process(tmp: Path, name: str, *args: str) -> AbstractAsyncContextManager[NodeProcess]:
    return front_end_process(tmp, name, ("node", "run"), *args)


def web_process(tmp: Path, name: str, *args: str) -> AbstractAsyncContextManager[NodeProcess]:
    """``quicnprotochat web``, its page on a free port."""
    return front_end_process(tmp, name, ("web",), "--port", "0", *args)


async def peers_listing(tmp: Path, node: str, peer: str) -> list[str]:
    """The rows of ``quicnprotochat peers`` for ``node`` that name ``peer``."""
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{node} passphrase")
    listing = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "peers",
        "--data-dir",
        str(tmp / node),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(LINE_DEADLINE):
        out, err = await listing.communicate()
    assert listing.returncode == 0, err.decode()
    rows = [line for line in out.decode().splitlines() if line.startswith(f"{peer} ")]
    assert rows, out.decode()
    return rows


async def test_two_node_processes_chat_directly(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        address = (await alice.expect(r"listening on (\S+)")).group(1)
        async with node_process(tmp_path, "bob", "--invite", f"alice={key}@{address}") as bob:
            await bob.expect(r"group created with alice")
            await bob.type_line("hello from bob")
            # bob is a stranger to alice: his invitation waits for her consent, and his
            # message waits with it.
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            await alice.expect(r"\] hello from bob$")
            await alice.type_line("hi bob")
            await bob.expect(r"^\[alice\] hi bob$")


async def test_node_keeps_its_identity_across_restarts(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice") as first:
        key = (await first.expect(r"identity: ([0-9a-f]{64})")).group(1)
    async with node_process(tmp_path, "alice") as second:
        again = (await second.expect(r"identity: ([0-9a-f]{64})")).group(1)
    assert again == key
    key_file = tmp_path / "alice" / "identity.key"
    assert key_file.read_bytes()[:4] == b"QPCE"  # sealed, not a raw key
    assert key_file.stat().st_mode & 0o777 == 0o600


async def test_two_nodes_find_each_other_on_the_lan_and_chat_without_any_relay(
    tmp_path: Path,
) -> None:
    async with node_process(tmp_path, "alice") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        await alice.expect(r"listening on ")
        # No address: bob's node must find alice by mDNS (pinned to 127.0.0.1).
        async with node_process(tmp_path, "bob", "--invite", f"alice={key}") as bob:
            await bob.expect(r"group created with alice")
            await bob.type_line("found you on the LAN")
            # bob is a stranger to alice: his invitation waits for her consent, and his
            # message waits with it.
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            await alice.expect(r"\] found you on the LAN$")
            await alice.type_line("and I you")
            await bob.expect(r"^\[alice\] and I you$")
            rows = await peers_listing(tmp_path, "bob", "alice")
            assert " lan " in rows[0]
            assert "127.0.0.1:" in rows[0]


async def test_two_nodes_find_each_other_through_the_dht_alone(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice", "--no-mdns") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        dht = (await alice.expect(r"dht on (\S+)")).group(1)
        async with node_process(
            tmp_path, "bob", "--no-mdns", "--bootstrap", dht, "--invite", f"alice={key}"
        ) as bob:
            await bob.expect(r"group created with alice")
            await bob.type_line("found you in the DHT")
            # bob is a stranger to alice: his invitation waits for her consent, and his
            # message waits with it.
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            await alice.expect(r"\] found you in the DHT$")
            rows = await peers_listing(tmp_path, "bob", "alice")
            assert " dht " in rows[0]
            assert "confirmed" in rows[0]


async def test_scripts_reach_a_running_node_through_its_control_socket(tmp_path: Path) -> None:
    from tests.e2e.test_oneshot import as_json

    async with node_process(tmp_path, "alice", "--no-mdns", "--no-dht") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        address = (await alice.expect(r"listening on (\S+)")).group(1)
        invite = f"alice={key}@{address}"
        async with node_process(
            tmp_path, "bob", "--no-mdns", "--no-dht", "--invite", invite
        ) as bob:
            await bob.expect(r"group created with alice")
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            await alice.expect(r"^joined the group of invitation")
            await alice.type_line("typed at alice")
            await bob.expect(r"^\[alice\] typed at alice$")

            # No passphrase: the running node answers through its control socket.
            [dm] = [
                c
                for c in (await as_json(tmp_path, "alice", "conversations"))["conversations"]
                if c["kind"] != "notepad"
            ]
            sent = await as_json(tmp_path, "alice", "send", dm["id"], "from a script")
            assert [d["state"] for d in sent["message"]["deliveries"]] == ["direct"]
            await bob.expect(r"^\[alice\] from a script$")
            history = await as_json(tmp_path, "alice", "history", dm["id"])
            # What alice typed is kept too, in order.
            assert [m["text"] for m in history["messages"]] == ["typed at alice", "from a script"]


async def test_web_invite_starts_the_conversation_as_chat_does(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        address = (await alice.expect(r"listening on (\S+)")).group(1)
        invite = f"alice={key}@{address}"
        args = ("--no-mdns", "--no-dht", "--invite", invite)
        async with web_process(tmp_path, "bob", *args) as bob:
            await bob.expect(r"^open http://127\.0\.0\.1:\d+/")
            conv = (await bob.expect(r"^conversation alice \((\S+)\) is ready$")).group(1)
            await alice.expect(r"^invitation \d+ from ")
        # The same invitee again is the same conversation, not a second one.
        async with web_process(tmp_path, "bob", *args) as bob:
            again = (await bob.expect(r"^conversation alice \((\S+)\) is ready$")).group(1)
        assert again == conv
