"""``quicnprotochat demo``: a relay and three nodes on loopback, one MLS group, one absence.

The relay runs as a real child process; alice, bob and carol are nodes in this process, each
with its own UDP socket. Carol vanishes (her socket closes without a word), messages sent
meanwhile reach her relay mailbox, and when she returns she fetches and reads them. Every count
in the summary is measured at the receivers, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.app.node import ChatMessage, Node, SendReport
from node.app.profile import open_node
from node.app.router import Path as DeliveryPath
from node.app.router import RelayInfo
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import short_fingerprint
from node.transport.runtime import RealRuntime

Script = list[tuple[str, str]]  # (sender name, text), in order

DEFAULT_ONLINE = [
    ("alice", "Hello, everyone!"),
    ("bob", "Hi alice, hi carol."),
    ("carol", "Hey both, I'm about to board a plane."),
]
DEFAULT_AWAY = [
    ("alice", "Carol, ping me when you land."),
    ("bob", "She will read this on the ground."),
]
DEFAULT_BACK = [("carol", "Landed! Got both of your messages.")]
READY_DEADLINE = 30.0
DELIVERY_DEADLINE = 15.0


@dataclass
class Tally:
    sent: list[tuple[str, str]] = field(default_factory=list)  # (sender name, text)


@dataclass(frozen=True)
class DemoResult:
    members: int
    sent: int
    delivered_direct: int
    delivered_via_relay: int
    lost: int
    epoch: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@contextlib.asynccontextmanager
async def relay_process(data_dir: Path) -> AsyncIterator[RelayInfo]:
    """Start ``python -m relay run`` on an ephemeral loopback port; stop it on exit."""
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=secrets.token_hex(16))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(READY_DEADLINE):
            line = await proc.stdout.readline()
        if not line:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            raise NodeError(f"the relay did not start: {err[-500:]}")
        ready = json.loads(line)
        host, _, port = ready["address"].rpartition(":")
        yield RelayInfo((host, int(port)), bytes.fromhex(ready["identity"]))
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _split(messages: list[str]) -> tuple[Script, Script, Script]:
    """Spread user messages: the first half while all are online, the rest while carol is away
    (senders alternate), so both delivery paths are exercised whatever the count."""
    if not messages:
        return DEFAULT_ONLINE, DEFAULT_AWAY, DEFAULT_BACK
    split = len(messages) // 2
    online = [(("alice", "bob", "carol")[i % 3], m) for i, m in enumerate(messages[:split])]
    away = [(("alice", "bob")[i % 2], m) for i, m in enumerate(messages[split:])]
    return online, away, []


async def run_demo(messages: list[str], say: Callable[[str], None]) -> DemoResult:
    online, away, back = _split(messages)
    with tempfile.TemporaryDirectory(prefix="qpc-demo-") as tmp:
        async with relay_process(Path(tmp) / "relay") as relay:
            say(
                f"relay   listening on {relay.address[0]}:{relay.address[1]}"
                f"  [{short_fingerprint(relay.identity)}]"
            )
            cast = Cast(Path(tmp), relay, say)
            try:
                for name in ("alice", "bob", "carol"):
                    await cast.open(name)
                return await _converse(cast, online, away, back, say)
            finally:
                await cast.close()


class Cast:
    """The demo's nodes, each kept in its own data directory with its own passphrase and run
    on its own real runtime (as a process of its own would be)."""

    def __init__(self, root: Path, relay: RelayInfo, say: Callable[[str], None]) -> None:
        self.root, self.relay, self.say = root, relay, say
        self.nodes: dict[str, Node] = {}
        self._passphrases: dict[str, bytes] = {}
        self._runtimes: dict[str, RealRuntime] = {}

    async def open(self, name: str) -> Node:
        passphrase = self._passphrases.setdefault(name, secrets.token_bytes(16))
        runtime = self._runtimes.setdefault(name, RealRuntime(f"qpc-{name}"))
        node, _ = await open_node(
            self.root / name, passphrase, runtime, name=name, relay=self.relay
        )
        node.on_message = _reader(name, self.say)
        self.nodes[name] = node
        return node

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()
        for runtime in self._runtimes.values():
            runtime.close()


async def _converse(
    cast: Cast,
    online: Script,
    away: Script,
    back: Script,
    say: Callable[[str], None],
) -> DemoResult:
    nodes = cast.nodes
    for name, node in nodes.items():
        host, port = await node.start()
        say(f"{name:<7} listening on {host}:{port}  [{short_fingerprint(node.public_key)}]")
    for node in nodes.values():
        for other in nodes.values():
            if other is not node:
                await node.remember_peer(other.public_key, other.name, other.address)

    alice = nodes["alice"]
    group_id = await alice.create_group()
    invitees = [nodes["bob"].public_key, nodes["carol"].public_key]
    report = await alice.invite(group_id, invitees)
    _check(report, nodes)
    for name in ("bob", "carol"):
        if group_id not in nodes[name].groups:
            raise NodeError(f"{name} did not join the group")
    say(
        f"alice   created a group and added bob and carol "
        f"(epoch {alice.groups[group_id].epoch}; Welcome {_paths(report, nodes)})"
    )

    tally = Tally()

    async def send(sender: str, text: str) -> None:
        say(f"{sender:<7} → group: {text!r}")
        rep = await nodes[sender].send_text(group_id, text)
        _check(rep, nodes)
        tally.sent.append((sender, text))
        say(f"{'':<10}delivered: {_paths(rep, nodes)}")

    for sender, text in online:
        await send(sender, text)

    carol_host, carol_port = nodes["carol"].address
    nodes["carol"].kill()
    say("carol   crashed: her node is gone (socket, memory), nobody was told")
    for sender, text in away:
        await send(sender, text)

    carol = await cast.open("carol")  # a new process would do exactly this: all from disk
    await carol.start(carol_host, carol_port)
    relayed = sum(1 for m in carol.inbox if m.path is DeliveryPath.RELAY)
    say(
        f"carol   is back on {carol_host}:{carol_port} and fetched {relayed} "
        f"message(s) from her relay mailbox"
    )
    for sender, text in back:
        await send(sender, text)

    return await _measure(nodes, tally, group_id)


def _reader(name: str, say: Callable[[str], None]) -> Callable[[ChatMessage], None]:
    def show(msg: ChatMessage) -> None:
        # repr() shows every control character escaped; the sender's name is shown safe.
        sender = terminal_safe(msg.sender_name)
        say(f"{'':<10}{name} read {sender}: {msg.text!r}  ({msg.path.value})")

    return show


def _paths(report: SendReport, nodes: dict[str, Node]) -> str:
    names = {n.public_key: name for name, n in nodes.items()}
    parts = [f"{names[k]}: {p.value}" for k, p in report.paths.items()]
    parts += [f"{names[k]}: FAILED" for k in report.failed]
    return ", ".join(sorted(parts))


def _check(report: SendReport, nodes: dict[str, Node]) -> None:
    if report.failed:
        names = {n.public_key: name for name, n in nodes.items()}
        who = ", ".join(f"{names[k]} ({why})" for k, why in report.failed.items())
        raise NodeError(f"delivery failed to {who}")


async def _measure(nodes: dict[str, Node], tally: Tally, group_id: bytes) -> DemoResult:
    expected: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in nodes}
    for sender, text in tally.sent:
        for name in nodes:
            if name != sender:
                expected[name][(sender, text)] += 1
    for name, node in nodes.items():
        want = sum(expected[name].values())
        with contextlib.suppress(TimeoutError):
            await node.wait_for_messages(want, DELIVERY_DEADLINE)
    direct = relayed = lost = 0
    for name, node in nodes.items():
        got = Counter((m.sender_name, m.text) for m in node.inbox if m.group_id == group_id)
        matched = got & expected[name]
        lost += sum((expected[name] - matched).values())
        for msg in node.inbox:
            if msg.path is DeliveryPath.DIRECT:
                direct += 1
            else:
                relayed += 1
    epochs = {node.groups[group_id].epoch for node in nodes.values() if group_id in node.groups}
    if len(epochs) != 1:
        raise NodeError(f"members disagree on the epoch: {sorted(epochs)}")
    return DemoResult(
        # Members as the creator's MLS group lists them, not as the script intended.
        members=len(nodes["alice"].groups[group_id].members()),
        sent=len(tally.sent),
        delivered_direct=direct,
        delivered_via_relay=relayed,
        lost=lost,
        epoch=epochs.pop(),
    )
