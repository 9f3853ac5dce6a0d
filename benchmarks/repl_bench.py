"""Does the chat prompt stay responsive while messages pour in? (issue 9, "Performance")

Runs ``quicnprotochat chat`` for alice on a real pseudo-terminal and, in this process, a node
for bob (with its application layer) that sends her messages at a fixed rate over loopback.
Meanwhile it types single keys at alice's prompt and measures the time from each key written
to the terminal until it shows on the screen: first with no traffic, then under the flood.

    python benchmarks/repl_bench.py [--rate 100] [--seconds 10] [--json]

Prints a table (or one JSON object): key echo p50/p99/max without and with traffic, and the
messages per second alice's screen showed. Run by hand; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

from node.app.messenger import Messenger
from node.app.profile import open_node
from node.transport.runtime import RealRuntime

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[=>NOP()]\S?")
# Keys typed at the prompt: none of them is in a message, a name, a time or the prompt.
KEYS = "qwxzjkvy"


class Screen:
    def __init__(self, master: int) -> None:
        self.master = master
        self.text = ""
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.text += ANSI.sub("", chunk.decode("utf-8", errors="replace"))
        self.changed.set()

    async def wait_for(self, pattern: str, start: int = 0, deadline: float = 30.0) -> re.Match[str]:
        async with asyncio.timeout(deadline):
            while (match := re.compile(pattern).search(self.text, start)) is None:
                self.changed.clear()
                await self.changed.wait()
        return match

    def type(self, keys: str) -> int:
        mark = len(self.text)
        os.write(self.master, keys.encode())
        return mark


async def echo_times(screen: Screen, seconds: float) -> list[float]:
    """Type one key, wait for it on screen, clear the line; repeat for ``seconds``."""
    times: list[float] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        key = KEYS[n % len(KEYS)]
        n += 1
        started = time.monotonic()
        mark = screen.type(key)
        await screen.wait_for(re.escape(key), mark)
        times.append((time.monotonic() - started) * 1000)
        screen.type("\x15")  # Ctrl-U: an empty line again
        await asyncio.sleep(0.05)  # the typing pace, not a wait for a result
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
        "keys": len(ordered),
    }


async def run(rate: float, seconds: float) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="qpc-repl-bench-"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = dict(
        os.environ,
        QUICNPROTOCHAT_PASSPHRASE="alice passphrase",
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",
    )
    alice = await asyncio.create_subprocess_exec(
        str(SCRIPT), "chat", "--name", "alice", "--data-dir", str(root / "alice"),
        "--listen", "127.0.0.1:0", "--no-mdns", "--no-dht",
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    screen = Screen(master)
    runtime = RealRuntime("qpc-bench-bob")
    try:
        await screen.wait_for(r"type /help")
        mark = screen.type("/whoami\r")
        link = (await screen.wait_for(r"link: (qpc://[A-Za-z0-9_/:.-]+)", mark)).group(1)

        node, _ = await open_node(root / "bob", b"bob passphrase", runtime, name="bob")
        bob = Messenger(node)
        await bob.open()
        await node.start("127.0.0.1", 0)
        peer = await bob.resolve_person(link)
        dm = await bob.direct(peer)
        number = (await screen.wait_for(r"invitation (\d+) from")).group(1)
        mark = screen.type(f"/join {number}\r")
        await screen.wait_for(r"now in", mark)
        await bob.send(dm.id, "0")
        await screen.wait_for(r"bob: 0")

        quiet = await echo_times(screen, seconds / 2)

        shown_before = len(re.findall(r"bob: \d+", screen.text))
        sends: list[asyncio.Task[object]] = []

        async def flood() -> None:
            interval, n = 1 / rate, 0
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                n += 1
                sends.append(runtime.spawn(bob.send(dm.id, str(n))))
                await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))

        flooding = runtime.spawn(flood())
        started = time.monotonic()
        busy = await echo_times(screen, seconds)
        await flooding
        elapsed = time.monotonic() - started
        shown = len(re.findall(r"bob: \d+", screen.text)) - shown_before
        await asyncio.gather(*sends, return_exceptions=True)
        # Then wait (at most a minute) for the rest: slow is not lost.
        last = rf"bob: {len(sends)}\b"
        with contextlib.suppress(TimeoutError):
            await screen.wait_for(last, 0, deadline=60.0)
        shown_total = len(set(re.findall(r"bob: (\d+)", screen.text))) - 1
        await bob.close()
        await node.stop()
        return {
            "rate_per_s": rate,
            "quiet": summary(quiet),
            "flood": summary(busy),
            "shown_per_s": round(shown / elapsed, 1),
            "sent": len(sends),
            "shown_in_the_end": shown_total,
            "drain_s": round(time.monotonic() - started - elapsed, 1),
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            alice.terminate()
        await alice.wait()
        runtime.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.seconds))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'':<26} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'keys':>6}")
    for label in ("quiet", "flood"):
        row = result[label]
        assert isinstance(row, dict)
        name = "key echo, no traffic" if label == "quiet" else f"key echo, {args.rate:g} msg/s"
        print(
            f"{name:<26} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8} {row['keys']:>6}"
        )
    print(
        f"messages shown while typing: {result['shown_per_s']}/s; "
        f"{result['shown_in_the_end']} of {result['sent']} shown in the end, "
        f"{result['drain_s']} s after the flood stopped"
    )


if __name__ == "__main__":
    main()
