"""The four attacks measured against the relay (LIBRARY-FACTS, "What a hostile peer did to the
relay"), replayed at small scale against a real relay process with its default limits.

Run by hand, never in CI timing::

    .venv/bin/python benchmarks/relay_attack_bench.py
    .venv/bin/python benchmarks/relay_attack_bench.py --initials 20000 --rate 1000 --json

Everything binds to 127.0.0.1. The relay is a child process (``python -m relay run``) so its
resident memory (VmRSS from /proc) is its own; each row reports RSS before and after the
attack, and what the attacker got:

* garbage Initials: well-formed QUIC v1 Initial headers around random bytes, ``--rate`` per
  second; the attacker counts the Retry packets it gets back (connection state: none);
* unfinished frames: ``--connections`` authenticated connections, each opening
  ``--streams`` request streams that announce 1 MiB and send 1 KB, never finishing;
* a 1 MiB ``deliver`` then ``fetch``: the answer codes;
* one stranger delivering to one mailbox as fast as it can for 1 s;
* one client writing 4 KB envelopes into new mailboxes for ``--spray-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.buffer import Buffer

from node.core import wire
from node.core.framing import PREFIX, FrameReader
from node.core.identity import Identity
from node.transport.connection import PeerConnection
from node.transport.endpoint import Endpoint
from node.transport.runtime import RealRuntime

LOOPBACK = "127.0.0.1"
MIB = 1 << 20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def initial(size: int = 1200) -> bytes:
    head = Buffer(capacity=64)
    head.push_uint8(0xC3)
    head.push_uint32(1)
    for _ in range(2):
        head.push_uint8(8)
        head.push_bytes(os.urandom(8))
    head.push_uint_var(0)
    rest = size - head.tell() - 2
    head.push_uint16(0x4000 | rest)
    return head.data + os.urandom(rest)


class RelayChild:
    def __init__(self, data: Path) -> None:
        env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="bench")
        cmd = [sys.executable, "-m", "relay", "run", "--listen", f"{LOOPBACK}:0"]
        cmd += ["--data-dir", str(data), "--json"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        host, _, port = ready["address"].rpartition(":")
        self.address = (host, int(port))
        self.identity = bytes.fromhex(ready["identity"])

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


async def garbage_initials(relay: RelayChild, count: int, rate: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    before = relay.rss()
    started = time.monotonic()
    replies = 0
    for n in range(count):
        sock.sendto(initial(), relay.address)
        while True:
            try:
                sock.recv(2048)
                replies += 1
            except BlockingIOError:
                break
        delay = started + (n + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.sleep(0.5)
    while True:
        try:
            sock.recv(2048)
            replies += 1
        except BlockingIOError:
            break
    sock.close()
    return {
        "attack": f"{count} garbage Initials at {rate:g}/s",
        "rss_before_mb": before,
        "rss_after_mb": relay.rss(),
        "outcome": f"{replies} Retry packets back",
    }


def unfinished(conn: PeerConnection, announced: int, sent: int) -> asyncio.Future[bytes]:
    stream_id = conn._quic.get_next_available_stream_id()
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn._pending[stream_id] = future
    conn._readers[stream_id] = FrameReader(conn._max_frame)
    conn._quic.send_stream_data(stream_id, PREFIX.pack(announced) + b"\0" * sent, False)
    conn.transmit()
    # Retrieved, so that closing the connection later logs nothing.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def client(relay: RelayChild) -> tuple[Endpoint, PeerConnection, RealRuntime, Identity]:
    me = Identity.generate()
    runtime = RealRuntime("qpc-bench")
    endpoint = Endpoint(me, None, runtime)
    await endpoint.start(LOOPBACK, 0)
    conn = await endpoint.dial(relay.address, relay.identity)
    return endpoint, conn, runtime, me


async def unfinished_frames(
    relay: RelayChild, connections: int, streams: int, sent: int
) -> dict[str, Any]:
    before = relay.rss()
    clients = [await client(relay) for _ in range(connections)]
    for _, conn, _, _ in clients:
        await conn.call(wire.Fetch(b"\0" * 32, 0, 1))  # the relay has judged the client
    calls = [unfinished(conn, MIB, sent) for _, conn, _, _ in clients for _ in range(streams)]
    await asyncio.sleep(max(2.0, connections * streams * sent / 50e6))
    held = relay.rss()
    codes: dict[str, int] = {}
    for call in calls:
        if call.done():
            answer = wire.decode_response(call.result())
            name = answer.code.name if isinstance(answer, wire.ErrorResult) else "ok"
            codes[name] = codes.get(name, 0) + 1
    waiting = sum(not c.done() for c in calls)
    for endpoint, _, runtime, _ in clients:
        await endpoint.close()
        runtime.close()
    return {
        "attack": f"{connections} conns x {streams} unfinished 1 MiB frames ({sent} B sent)",
        "rss_before_mb": before,
        "rss_after_mb": held,
        "outcome": f"answered at once: {codes or 'none'}; held (until 20 s): {waiting}",
    }


def envelope(recipient: bytes, payload: bytes) -> wire.Envelope:
    return wire.Envelope(os.urandom(16), recipient, wire.EnvelopeKind.APPLICATION, payload, b"g", 1)


async def huge_deliver(relay: RelayChild) -> dict[str, Any]:
    before = relay.rss()
    endpoint, conn, runtime, me = await client(relay)
    try:
        # The largest deliver a 1 MiB frame carries, as in the measured fault.
        payload = MIB - 120
        while len(wire.encode_request(wire.Deliver((envelope(me.mailbox, b"x" * payload),)))) > MIB:
            payload -= 8
        huge = envelope(me.mailbox, b"x" * payload)
        delivered = await conn.call(wire.Deliver((huge,)))
        small = envelope(me.mailbox, b"hello")
        await conn.call(wire.Deliver((small,)))
        fetched = await conn.call(wire.Fetch(me.mailbox, 0, 10))
    finally:
        await endpoint.close()
        runtime.close()
    deliver_code = delivered.code.name if isinstance(delivered, wire.ErrorResult) else "accepted"
    fetch_out = (
        f"{len(fetched.envelopes)} envelope(s)"
        if isinstance(fetched, wire.FetchResult)
        else fetched.code.name
    )
    return {
        "attack": "1 MiB deliver, then fetch",
        "rss_before_mb": before,
        "rss_after_mb": relay.rss(),
        "outcome": f"deliver: {deliver_code}; later fetch: {fetch_out}",
    }


async def fill_mailbox(relay: RelayChild) -> dict[str, Any]:
    before = relay.rss()
    victim = Identity.generate().mailbox
    endpoint, conn, runtime, _ = await client(relay)
    accepted = refused = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            answer = await conn.call(wire.Deliver(tuple(envelope(victim, b"x") for _ in range(50))))
            if isinstance(answer, wire.DeliverResult):
                accepted += len(answer.accepted)
            else:
                refused += 1
    finally:
        await endpoint.close()
        runtime.close()
    return {
        "attack": "one stranger fills another's mailbox for 1 s",
        "rss_before_mb": before,
        "rss_after_mb": relay.rss(),
        "outcome": f"{accepted} envelopes in (quota 10,000); {refused} calls refused",
    }


async def spray_mailboxes(relay: RelayChild, seconds: float) -> dict[str, Any]:
    before = relay.rss()
    endpoint, conn, runtime, _ = await client(relay)
    accepted = refused = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = tuple(envelope(os.urandom(32), b"x" * 4000) for _ in range(16))
            answer = await conn.call(wire.Deliver(batch))
            if isinstance(answer, wire.DeliverResult):
                accepted += len(answer.accepted)
            else:
                refused += 1
    finally:
        await endpoint.close()
        runtime.close()
    return {
        "attack": f"one client sprays new mailboxes for {seconds:g} s",
        "rss_before_mb": before,
        "rss_after_mb": relay.rss(),
        "outcome": f"{accepted} mailboxes ({accepted * 4 / 1000:.1f} MB) in; {refused} refused",
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayChild(Path(tmp) / "relay")
        try:
            rows.append(
                {
                    "attack": "idle",
                    "rss_before_mb": relay.rss(),
                    "rss_after_mb": relay.rss(),
                    "outcome": "",
                }
            )
            rows.append(await garbage_initials(relay, args.initials, args.rate))
            rows.append(await unfinished_frames(relay, args.connections, args.streams, args.sent))
            rows.append(await huge_deliver(relay))
            rows.append(await fill_mailbox(relay))
            rows.append(await spray_mailboxes(relay, args.spray_seconds))
        finally:
            relay.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--initials", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--sent", type=int, default=1000, help="bytes sent of each 1 MiB frame")
    parser.add_argument("--spray-seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    print(f"{'attack':<58} {'RSS before':>10} {'RSS after':>10}  outcome")
    for row in rows:
        print(
            f"{row['attack']:<58} {row['rss_before_mb']:>8.1f}MB {row['rss_after_mb']:>8.1f}MB"
            f"  {row['outcome']}"
        )


if __name__ == "__main__":
    main()
