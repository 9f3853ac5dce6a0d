"""mDNS discovery with real python-zeroconf, pinned to interfaces the test owns.

Two advertisers on 127.0.0.1 in this process see each other appear, update and leave. Then, if
the machine lets us, two child processes in two network namespaces joined by a veth pair do
the same over a link that has nothing else on it. Nothing here touches the machine's real
interfaces: zeroconf is always given an explicit interface address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import discovery
from discovery.lan import LanEvent, LanEventKind, LanStatus, compact_fingerprint
from discovery.mdns import MdnsService
from node.core.identity import Identity
from node.transport.runtime import RealRuntime

LOOPBACK = "127.0.0.1"
REPO = Path(discovery.__file__).resolve().parent.parent
DEADLINE = 10.0  # registration probes for ~1.2 s; discovery normally follows within a second


async def next_event(service: MdnsService, kind: LanEventKind, fingerprint: str) -> LanEvent:
    """The next event of ``kind`` about ``fingerprint``; other events (other tests' services on
    the same loopback, say) are skipped."""
    async with asyncio.timeout(DEADLINE):
        while True:
            event = await service.events.get()
            if event.kind is kind and event.peer.fingerprint == fingerprint:
                return event


@contextlib.asynccontextmanager
async def advertiser(name: str, port: int) -> AsyncIterator[tuple[MdnsService, bytes]]:
    key = Identity.generate().public_key
    service = MdnsService(
        RealRuntime(), interfaces=[LOOPBACK], identity_key=key, display_name=name, port=port
    )
    try:
        yield service, key
    finally:
        await service.stop()


async def test_two_advertisers_on_loopback_add_update_remove() -> None:
    async with (
        advertiser("alice", 4001) as (alice, alice_key),
        advertiser("bob", 4002) as (
            bob,
            bob_key,
        ),
    ):
        await asyncio.gather(alice.start(), bob.start())
        alice_fp, bob_fp = compact_fingerprint(alice_key), compact_fingerprint(bob_key)

        seen_by_alice = await next_event(alice, LanEventKind.ADDED, bob_fp)
        seen_by_bob = await next_event(bob, LanEventKind.ADDED, alice_fp)
        assert seen_by_alice.peer.name == "bob"
        assert seen_by_alice.peer.endpoints == ((LOOPBACK, 4002),)
        assert seen_by_alice.peer.status is LanStatus.CLAIMED
        assert seen_by_bob.peer.endpoints == ((LOOPBACK, 4001),)
        assert [p.fingerprint for p in alice.lookup(bob_fp)] == [bob_fp]
        assert alice.lookup(alice_fp) == []  # our own advertisement is not a peer

        await bob.update(display_name="bob (laptop)", port=4003)
        updated = await next_event(alice, LanEventKind.UPDATED, bob_fp)
        assert updated.peer.name == "bob (laptop)"
        assert updated.peer.endpoints == ((LOOPBACK, 4003),)

        # The router proves bob's key over QUIC and says so.
        confirmed = alice.confirm(bob_fp, bob_key, (LOOPBACK, 4003))
        assert [e.kind for e in confirmed] == [LanEventKind.CONFIRMED]
        assert (await next_event(alice, LanEventKind.CONFIRMED, bob_fp)).peer.service

        await bob.stop()
        removed = await next_event(alice, LanEventKind.REMOVED, bob_fp)
        assert removed.peer.name == "bob (laptop)"
        assert alice.lookup(bob_fp) == []


async def test_an_impostor_is_refuted() -> None:
    victim = Identity.generate().public_key
    victim_fp = compact_fingerprint(victim)
    async with advertiser("watcher", 4010) as (watcher, _):
        impostor = MdnsService(
            RealRuntime(),
            interfaces=[LOOPBACK],
            identity_key=victim,
            display_name="not-victim",
            port=4011,
        )
        try:
            await asyncio.gather(watcher.start(), impostor.start())
            await next_event(watcher, LanEventKind.ADDED, victim_fp)
            # Dialing it proved some other key: the TXT fingerprint was a lie.
            liar = Identity.generate().public_key
            refuted = watcher.confirm(victim_fp, liar, (LOOPBACK, 4011))
            assert [e.kind for e in refuted] == [LanEventKind.REFUTED]
            assert watcher.lookup(victim_fp) == []
        finally:
            await impostor.stop()


def test_mdns_needs_explicit_interfaces() -> None:
    key = Identity.generate().public_key
    for interfaces in ([], ["0.0.0.0"]):
        with pytest.raises(ValueError):
            MdnsService(
                RealRuntime(), interfaces=interfaces, identity_key=key, display_name="x", port=1
            )


# --- two network namespaces joined by a veth pair ---------------------------------------------

CHILD = """
import asyncio, json, sys
from discovery.lan import LanEventKind
from discovery.mdns import MdnsService
from node.core.identity import Identity
from node.transport.runtime import RealRuntime

async def main(address, name, port):
    key = Identity.generate().public_key
    service = MdnsService(RealRuntime(), interfaces=[address], identity_key=key, display_name=name, port=port)
    await service.start()
    print(json.dumps({"ready": name}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    events = asyncio.ensure_future(service.events.get())
    while True:
        done, _ = await asyncio.wait({events, stdin_closed}, return_when="FIRST_COMPLETED")
        if stdin_closed in done:
            break
        event = events.result()
        if event.kind is LanEventKind.ADDED:
            print(json.dumps({"seen": event.peer.name, "endpoints": event.peer.endpoints}),
                  flush=True)
        events = asyncio.ensure_future(service.events.get())
    events.cancel()
    await service.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture
def veth_namespaces() -> Iterator[tuple[str, str]]:
    """Namespaces ``a`` (10.213.7.1/24) and ``b`` (10.213.7.2/24) joined by a veth pair that is
    created inside them, so the host's own interfaces are never touched."""
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    tag = f"qpc{os.getpid()}"
    ns_a, ns_b = f"{tag}a", f"{tag}b"
    made = _ip("netns", "add", ns_a)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {made.stderr.strip()}")
    try:
        _ip("netns", "add", ns_b).check_returncode()
        steps = [
            ["link", "add", "qv0", "netns", ns_a, "type", "veth", "peer", "qv1", "netns", ns_b],
            ["-n", ns_a, "addr", "add", "10.213.7.1/24", "dev", "qv0"],
            ["-n", ns_b, "addr", "add", "10.213.7.2/24", "dev", "qv1"],
            ["-n", ns_a, "link", "set", "qv0", "up"],
            ["-n", ns_b, "link", "set", "qv1", "up"],
            ["-n", ns_a, "link", "set", "lo", "up"],
            ["-n", ns_b, "link", "set", "lo", "up"],
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up a veth pair: ip {' '.join(step)}: {done.stderr}")
        yield ns_a, ns_b
    finally:
        for ns in (ns_a, ns_b):
            _ip("netns", "del", ns)  # deleting a namespace destroys its end of the veth pair
        assert ns_a not in _ip("netns", "list").stdout


async def _read_json(stream: asyncio.StreamReader) -> dict[str, object]:
    line = await stream.readline()
    if not line:
        raise EOFError("the child process ended")
    result: dict[str, object] = json.loads(line)
    return result


async def test_two_namespaces_over_a_veth_pair(veth_namespaces: tuple[str, str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    plan = [
        (veth_namespaces[0], "10.213.7.1", "north"),
        (veth_namespaces[1], "10.213.7.2", "south"),
    ]
    children = []
    try:
        for ns, address, name in plan:
            children.append(
                await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", ns, sys.executable, "-c", CHILD, address, name, "4433",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=REPO,
                    env=env,
                )
            )  # fmt: skip
        async with asyncio.timeout(DEADLINE + 5):
            for child, (_, _, name) in zip(children, plan, strict=True):
                assert child.stdout is not None
                assert await _read_json(child.stdout) == {"ready": name}
            seen = {}
            for child, (_, _, name) in zip(children, plan, strict=True):
                assert child.stdout is not None
                seen[name] = await _read_json(child.stdout)
        assert seen["north"] == {"seen": "south", "endpoints": [["10.213.7.2", 4433]]}
        assert seen["south"] == {"seen": "north", "endpoints": [["10.213.7.1", 4433]]}
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        async with asyncio.timeout(DEADLINE):
            codes = [await child.wait() for child in children]
        assert codes == [0, 0]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
