"""One real node process for calibration runs (``python -m simulations.real_node``).

It runs a :class:`~node.app.node.Node` on the real runtime, on 127.0.0.1, and takes its orders
as JSON lines on stdin from :mod:`simulations.real`; it reports as JSON lines on stdout, with
wall-clock times in milliseconds (all processes of a run share the machine's clock):

- ``{"event": "ready", "key", "address"}`` once listening;
- ``{"event": "key_package", "data"}``, ``{"event": "group", "id"}``, ``{"event": "joined",
  "id"}``, ``{"event": "sent", "id", "at_ms"}``, ``{"event": "message", "id", "at_ms",
  "path"}``, ``{"event": "error", "what"}``.

Orders: ``peer`` (key, name, address, relay), ``key_package``, ``create_group`` (key packages),
``send`` (group, text), ``stop``.

With ``--nat SECONDS`` the node's socket filters what comes in as the simulator's NAT does
(RFC 4787 address-and-port-dependent filtering): a datagram from an address passes only if
the node sent to that address within the last SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from node.app.node import ChatMessage, Node
from node.app.router import RelayInfo
from node.core.addresses import Address, parse_address
from node.core.errors import NodeError
from node.core.identity import Identity
from node.transport.runtime import RealRuntime


class _NatFilter(asyncio.DatagramProtocol):
    """Between a socket and the endpoint: inbound datagrams pass only from where we sent."""

    def __init__(self, inner: asyncio.DatagramProtocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._sent: dict[Address, float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport is no DatagramTransport subclass (CPython 3.11).
        datagrams = cast(asyncio.DatagramTransport, transport)
        real_sendto = datagrams.sendto

        def sendto(data: bytes, addr: Any = None) -> None:
            self._sent[(str(addr[0]), int(addr[1]))] = time.monotonic()
            real_sendto(data, addr)

        datagrams.sendto = sendto  # type: ignore[method-assign,assignment]
        self._inner.connection_made(datagrams)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        sent_at = self._sent.get((str(addr[0]), int(addr[1])))
        if sent_at is not None and time.monotonic() - sent_at <= self._timeout:
            self._inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)


class _NatRuntime(RealRuntime):
    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(name)
        self._timeout = timeout

    async def open_datagram(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol], local: Address
    ) -> asyncio.DatagramTransport:
        inner = protocol_factory()
        return await super().open_datagram(lambda: _NatFilter(inner, self._timeout), local)


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _serve(relay: RelayInfo | None, name: str, nat: float | None) -> None:
    runtime = RealRuntime(f"qpc-{name}") if nat is None else _NatRuntime(f"qpc-{name}", nat)
    node = Node(Identity.from_seed(runtime.random_bytes(32)), runtime, name=name, relay=relay)

    def on_message(message: ChatMessage) -> None:
        _say(
            event="message",
            id=message.text.split("|", 1)[0],
            at_ms=runtime.wall_ms(),
            path=message.path.value,
        )

    node.on_message = on_message
    known_groups: set[bytes] = set()
    try:
        host, port = await node.start("127.0.0.1", 0)
        _say(event="ready", key=node.public_key.hex(), address=f"{host}:{port}")
        watcher = runtime.spawn(_watch_joins(node, known_groups))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            order = json.loads(line)
            if order["cmd"] == "stop":
                break
            try:
                await _obey(node, order, known_groups)
            except NodeError as exc:
                _say(event="error", what=str(exc))
        watcher.cancel()
    finally:
        await node.stop()
        runtime.close()


async def _watch_joins(node: Node, known: set[bytes]) -> None:
    """Report each group this node joined from a Welcome (polled: a calibration aid only)."""
    while True:
        for group_id in list(node.groups):
            if group_id not in known:
                known.add(group_id)
                _say(event="joined", id=group_id.hex())
        await asyncio.sleep(0.05)


async def _obey(node: Node, order: dict[str, Any], known: set[bytes]) -> None:
    cmd = order["cmd"]
    if cmd == "peer":
        key = bytes.fromhex(order["key"])
        node.contacts.add(key, order["name"], parse_address(order["address"]))
        if order.get("relay"):
            host_port, relay_key = order["relay"]
            node.router.peer_relays[key] = RelayInfo(
                parse_address(host_port), bytes.fromhex(relay_key)
            )
    elif cmd == "key_package":
        mls = node.mls
        _say(event="key_package", data=(await node.run(mls.key_package)).hex())
    elif cmd == "create_group":
        group_id = await node.create_group()
        known.add(group_id)
        _say(event="group", id=group_id.hex())
        await node.membership.add(group_id, [bytes.fromhex(kp) for kp in order["key_packages"]])
    elif cmd == "send":
        _say(event="sent", id=order["text"].split("|", 1)[0], at_ms=node.runtime.wall_ms())
        await node.send_text(bytes.fromhex(order["group"]), order["text"])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.real_node")
    parser.add_argument("name")
    parser.add_argument("--relay", nargs=2, metavar=("HOST:PORT", "KEYHEX"))
    parser.add_argument("--nat", type=float, metavar="SECONDS")
    args = parser.parse_args()
    relay = None
    if args.relay:
        relay = RelayInfo(parse_address(args.relay[0]), bytes.fromhex(args.relay[1]))
    asyncio.run(_serve(relay, args.name, args.nat))


if __name__ == "__main__":
    main()
