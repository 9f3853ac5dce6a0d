"""A node as a process of its own, for the kill-at-random test (tests/integration/
test_kill_at_random.py).

It opens the node kept in ``DATA_DIR`` (already in a group with one peer), starts it on
``--port``, prints ``ready``, and then sends numbered texts to its one group for as long as it
lives. Everything it knows for sure goes to ``--log``, one ``os.write`` of one line per event on a
file opened for appending, so a SIGKILL leaves only whole lines behind (at most the last one torn).
Each line starts with the wall-clock time in milliseconds, then:

* ``attempt N`` before ``send_text`` of the text ``"<name> N"``;
* ``accepted N <path>|queued`` after ``send_text`` returned (the node took the message: it went
  out, or it waits in the durable outbox);
* ``shown <text> <envelope id hex>`` whenever ``on_message`` fired;
* ``recovered <text> <envelope id hex>`` at a start, for a message the node holds (its history)
  that no earlier life of it announced: it died after recording the message and before
  ``on_message`` fired;
* ``ready`` once the node has started (resumed, applied what it held, fetched its mailbox).

A number is never used twice: after a restart it goes on after the highest attempt in the log.

``crash_node.py --setup ROOT ...`` makes the pair first: alice and bob in ``ROOT/alice`` and
``ROOT/bob``, in one group, each knowing where the other listens; it prints their ports as JSON.
(In a process of its own: a process that opened a data directory holds ``mls.state`` locked for
as long as it lives.)
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path

from node.app.node import ChatMessage
from node.app.profile import open_node
from node.app.router import RelayInfo
from node.core.addresses import parse_address
from node.core.keyfile import FAST_KDF
from node.transport.runtime import RealRuntime

LOOPBACK = "127.0.0.1"
NAMES = ("alice", "bob")
SETUP_DEADLINE = 20.0


class EventLog:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, line: str) -> None:
        # Wall-clock milliseconds first, to line up the two nodes' logs when reading a failure.
        os.write(self._fd, f"{time.time_ns() // 1_000_000} {line}\n".encode())


def read_log(path: Path) -> tuple[int, set[str]]:
    """One more than the highest number this node ever attempted, and the ids of the messages
    it announced (live or recovered)."""
    if not path.exists():
        return 0, set()
    lines = [line.split() for line in path.read_text().splitlines()]
    numbers = [int(w[2]) for w in lines if len(w) == 3 and w[1] == "attempt" and w[2].isdigit()]
    announced = {w[3] for w in lines if len(w) == 4 and w[1] in ("shown", "recovered")}
    return max(numbers, default=-1) + 1, announced


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def setup(root: Path, relay: RelayInfo) -> dict[str, int]:
    runtimes = [RealRuntime(f"setup-{name}") for name in NAMES]
    nodes = []
    try:
        for name, runtime in zip(NAMES, runtimes, strict=True):
            node, _ = await open_node(
                root / name, name.encode(), runtime, name=name, relay=relay, kdf=FAST_KDF
            )
            nodes.append(node)
            await node.start(LOOPBACK, 0)
        alice, bob = nodes
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        group_id = await alice.create_group()
        report = await alice.invite(group_id, [bob.public_key])
        if report.failed:
            raise SystemExit(f"the invitation failed: {report.failed}")
        async with asyncio.timeout(SETUP_DEADLINE):
            while group_id not in bob.groups:  # a join sets no event
                await asyncio.sleep(0.02)
        return {node.name: node.address[1] for node in nodes}
    finally:
        for node in nodes:
            await node.stop()
        for runtime in runtimes:
            runtime.close()


async def main(args: argparse.Namespace) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    relay = RelayInfo(parse_address(args.relay), bytes.fromhex(args.relay_key))
    if args.setup:
        print(json.dumps(await setup(args.data_dir, relay)), flush=True)
        return
    first, announced = read_log(args.log)
    log = EventLog(args.log)
    runtime = RealRuntime(f"crash-{args.name}")
    try:
        node, _ = await open_node(
            args.data_dir, args.name.encode(), runtime, name=args.name, relay=relay, kdf=FAST_KDF
        )

        def shown(message: ChatMessage) -> None:
            announced.add(message.envelope_id.hex())
            log.write(f"shown {message.text.replace(' ', '_')} {message.envelope_id.hex()}")

        node.on_message = shown
        await node.start(LOOPBACK, args.port)
        for message in node.inbox:
            if message.envelope_id.hex() not in announced:
                log.write(f"recovered {message.text.replace(' ', '_')} {message.envelope_id.hex()}")
        log.write("ready")
        (group_id,) = node.groups
        number = first
        while args.count is None or number < first + args.count:
            log.write(f"attempt {number}")
            report = await node.send_text(group_id, f"{args.name} {number}")
            paths = {p.value for p in report.paths.values()}
            log.write(f"accepted {number} {paths.pop() if paths else 'queued'}")
            number += 1
        await asyncio.Event().wait()  # serve until killed
    finally:
        runtime.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--setup", action="store_true", help="make the pair in DATA_DIR")
    parser.add_argument("--name", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--relay", required=True, help="HOST:PORT")
    parser.add_argument("--relay-key", required=True, help="the relay's identity key, hex")
    parser.add_argument("--log", type=Path, default=Path(os.devnull))
    parser.add_argument("--count", type=int, help="stop sending after this many (default: never)")
    return parser.parse_args()


if __name__ == "__main__":
    # The test asks a node that hangs where it is, on stderr: SIGUSR1 the stack of every
    # asyncio task, SIGUSR2 that of every thread.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    sys.exit(asyncio.run(main(parse())))
