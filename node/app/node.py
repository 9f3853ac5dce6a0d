"""A peer node: one identity, one QUIC endpoint, its MLS groups, a router and an inbox.

Receiving is at-least-once on the wire and exactly-once to the user: envelopes are dropped by
id when seen before. (Durable inbox ids and MLS state arrive with the encrypted store.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from node.app.contacts import Contacts
from node.app.router import Path, RelayInfo, Router
from node.core import wire
from node.core.addresses import Address
from node.core.errors import (
    ErrorCode,
    LocalProtocolError,
    NodeError,
    RelayError,
)
from node.core.identity import Identity, mailbox_of, short_fingerprint
from node.core.runtime import Clock
from node.mls import GroupError, MlsClient, MlsGroup, key_package_identity
from node.transport.connection import Caller
from node.transport.endpoint import DatagramFactory, Endpoint, EndpointConfig, udp_socket
from node.transport.runtime import system_clock_ms

log = logging.getLogger(__name__)

FETCH_BATCH = 128
RELAY_LONG_POLL = 20.0  # seconds; the relay caps it below its own call deadline
RELAY_RETRY_MIN, RELAY_RETRY_MAX = 1.0, 30.0
MAX_DEFERRED = 1000
# Leaves room in a 1 MiB frame for MLS and envelope overhead; longer texts are refused up front.
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class ChatMessage:
    """An application message as the user sees it."""

    group_id: bytes
    sender: bytes
    sender_name: str
    text: str
    path: Path
    envelope_id: bytes


@dataclass
class SendReport:
    """How one outgoing envelope set fared, per recipient."""

    paths: dict[bytes, Path] = field(default_factory=dict)
    failed: dict[bytes, str] = field(default_factory=dict)


class Node:
    def __init__(
        self,
        identity: Identity,
        *,
        name: str,
        relay: RelayInfo | None = None,
        clock_ms: Clock = system_clock_ms,
        endpoint_config: EndpointConfig | None = None,
        datagram_factory: DatagramFactory = udp_socket,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.name = name
        self.contacts = Contacts()
        self._clock_ms = clock_ms
        self._random = random_bytes
        self.endpoint = Endpoint(identity, self.handle, endpoint_config, datagram_factory)
        self.router = Router(self.endpoint, self.contacts, relay)
        self.mls = MlsClient(identity)
        self.groups: dict[bytes, MlsGroup] = {}
        self.inbox: list[ChatMessage] = []
        self._seen: set[bytes] = set()
        self._deferred: list[tuple[wire.Envelope, Path]] = []
        self._relay_cursor = 0
        self._relay_watch: asyncio.Task[None] | None = None
        self._listen: Address | None = None
        self._inbox_changed = asyncio.Condition()
        self.on_message: Callable[[ChatMessage], None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    @property
    def address(self) -> Address:
        return self.endpoint.local_address

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        """Open the endpoint; if a relay is configured, collect what waited there and keep a
        long poll open for what arrives later."""
        self._listen = await self.endpoint.start(host, port)
        if self.router.relay is not None:
            try:
                await self.sync_relay()
            except RelayError as exc:
                log.warning("could not fetch the relay mailbox: %s", exc)
            self._relay_watch = asyncio.create_task(self._watch_relay())
        return self._listen

    async def stop(self) -> None:
        await self._stop_watching()
        await self.endpoint.close()

    def go_offline(self) -> None:
        """Vanish from the network without a goodbye (a crash, a lid closed)."""
        if self._relay_watch is not None:
            self._relay_watch.cancel()
            self._relay_watch = None
        self.endpoint.abort()

    async def _stop_watching(self) -> None:
        task, self._relay_watch = self._relay_watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- serving ----------------------------------------------------------------------------

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        """Answer a call from a peer whose identity key the handshake proved."""
        relay = self.router.relay
        from_relay = relay is not None and caller.identity == relay.identity
        if not from_relay:
            self.contacts.seen_at(caller.identity, caller.address)
            self.router.peer_alive(caller.identity)
        match request:
            case wire.Deliver(envelopes):
                path = Path.RELAY if from_relay else Path.DIRECT
                return wire.DeliverResult(await self._accept(envelopes, path))
            case wire.FetchKeyPackage(identity):
                if identity != self.public_key:
                    return wire.ErrorResult(ErrorCode.NOT_FOUND, "a node serves only its own")
                return wire.FetchKeyPackageResult(self.mls.key_package())
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "a node does not serve this call")

    def remember_peer(self, identity: bytes, name: str, address: Address | None) -> None:
        self.contacts.add(identity, name, address)

    async def _accept(self, envelopes: tuple[wire.Envelope, ...], path: Path) -> tuple[bytes, ...]:
        accepted = []
        own = self.identity.mailbox
        for env in envelopes:
            if env.recipient != own:
                continue  # not ours: not accepted, the sender keeps it
            accepted.append(env.id)
            if env.id in self._seen:
                continue
            self._seen.add(env.id)
            self._process(env, path)
        self._retry_deferred()
        async with self._inbox_changed:
            self._inbox_changed.notify_all()
        return tuple(accepted)

    def _process(self, env: wire.Envelope, path: Path) -> bool:
        """Apply one envelope; defer it if it belongs to a group we have not joined yet."""
        try:
            if env.kind is wire.EnvelopeKind.WELCOME:
                group = self.mls.join(env.payload)
                self.groups[group.group_id] = group
                log.info("%s joined a group at epoch %d", self.name, group.epoch)
                return True
            target = self.groups.get(env.group_id)
            if target is None:
                self._defer(env, path)
                return False
            group = target
            incoming = group.process(env.payload)
        except GroupError as exc:
            log.warning("%s dropped an undecryptable %s: %s", self.name, env.kind.value, exc)
            return True
        if incoming.kind == "application" and incoming.plaintext is not None:
            message = ChatMessage(
                group_id=group.group_id,
                sender=incoming.sender,
                sender_name=self.contacts.name(incoming.sender),
                text=incoming.plaintext.decode("utf-8", errors="replace"),
                path=path,
                envelope_id=env.id,
            )
            self.inbox.append(message)
            if self.on_message is not None:
                self.on_message(message)
        return True

    def _defer(self, env: wire.Envelope, path: Path) -> None:
        """Keep an envelope for a group we have not joined yet (its Welcome may come later by
        another path), within a bound: anyone may send envelopes naming made-up groups."""
        if len(self._deferred) >= MAX_DEFERRED:
            dropped, _ = self._deferred.pop(0)
            log.warning("%s dropped a %s for an unknown group", self.name, dropped.kind.value)
        self._deferred.append((env, path))

    def _retry_deferred(self) -> None:
        progress = True
        while progress and self._deferred:
            waiting, self._deferred = self._deferred, []
            progress = False
            for env, path in waiting:
                progress |= self._process(env, path)

    async def wait_for_messages(self, count: int, deadline: float) -> list[ChatMessage]:
        """Wait until the inbox holds ``count`` messages, at most ``deadline`` seconds."""
        async with asyncio.timeout(deadline), self._inbox_changed:
            await self._inbox_changed.wait_for(lambda: len(self.inbox) >= count)
        return list(self.inbox)

    # --- relay mailbox ----------------------------------------------------------------------

    async def sync_relay(self) -> int:
        """Fetch everything waiting at the relay, apply it, then acknowledge it. Returns count."""
        total = 0
        while count := await self._pull_relay(wait_seconds=0):
            total += count
        return total

    async def _pull_relay(self, wait_seconds: float) -> int:
        """One fetch (or long poll, if ``wait_seconds``) → apply → acknowledge round."""
        mailbox = self.identity.mailbox
        request: wire.Request
        if wait_seconds > 0:
            request = wire.Wait(mailbox, self._relay_cursor, FETCH_BATCH, int(wait_seconds * 1000))
        else:
            request = wire.Fetch(mailbox, self._relay_cursor, FETCH_BATCH)
        response = await self.router.call_relay(request, deadline=wait_seconds + 10)
        if not isinstance(response, wire.FetchResult):
            raise RelayError("the relay answered fetch with something else")
        if not response.envelopes:
            return 0
        ids = await self._accept(response.envelopes, Path.RELAY)
        # Acknowledge only after applying: a crash in between means a re-fetch, and the
        # duplicate is dropped by id.
        await self.router.call_relay(wire.Ack(mailbox, ids))
        self._relay_cursor = response.cursor
        return len(response.envelopes)

    async def _watch_relay(self) -> None:
        """Keep a long poll open at the relay while the node runs; back off when it fails."""
        backoff = RELAY_RETRY_MIN
        while True:
            try:
                await self._pull_relay(wait_seconds=RELAY_LONG_POLL)
                backoff = RELAY_RETRY_MIN
            except NodeError as exc:
                log.info("relay long poll failed (retrying in %.0f s): %s", backoff, exc)
                await asyncio.sleep(backoff)  # a retry delay, not a wait for a condition
                backoff = min(backoff * 2, RELAY_RETRY_MAX)

    # --- groups -----------------------------------------------------------------------------

    def create_group(self) -> bytes:
        group = self.mls.create_group(self._random(16))
        self.groups[group.group_id] = group
        return group.group_id

    async def invite(self, group_id: bytes, peers: list[bytes]) -> SendReport:
        """Fetch each peer's KeyPackage from the peer itself, commit the adds, send the Welcome
        to the newcomers and the commit to everyone who was already a member."""
        group = self.groups[group_id]
        key_packages = []
        for peer in peers:
            response = await self.router.call_peer(peer, wire.FetchKeyPackage(peer))
            if not isinstance(response, wire.FetchKeyPackageResult):
                raise NodeError(f"{self.contacts.name(peer)} sent no KeyPackage")
            if key_package_identity(response.key_package) != peer:
                raise NodeError(f"{self.contacts.name(peer)} sent someone else's KeyPackage")
            key_packages.append(response.key_package)
        existing = [m for m in group.members() if m != self.public_key]
        commit, welcome = group.add(key_packages)
        report = SendReport()
        await self._fan_out(report, existing, wire.EnvelopeKind.COMMIT, commit, group_id)
        await self._fan_out(report, peers, wire.EnvelopeKind.WELCOME, welcome, b"")
        return report

    async def send_text(self, group_id: bytes, text: str) -> SendReport:
        group = self.groups[group_id]
        plaintext = text.encode("utf-8")
        if len(plaintext) > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"a message is at most {MAX_MESSAGE_BYTES // 1024} KiB "
                f"({len(plaintext) // 1024} KiB given)"
            )
        ciphertext = group.encrypt(plaintext)
        others = [m for m in group.members() if m != self.public_key]
        report = SendReport()
        await self._fan_out(report, others, wire.EnvelopeKind.APPLICATION, ciphertext, group_id)
        return report

    async def _fan_out(
        self,
        report: SendReport,
        recipients: list[bytes],
        kind: wire.EnvelopeKind,
        payload: bytes,
        group_id: bytes,
    ) -> None:
        async def one(recipient: bytes) -> None:
            envelope = wire.Envelope(
                id=self._random(wire.ENVELOPE_ID_SIZE),
                recipient=mailbox_of(recipient),
                kind=kind,
                payload=payload,
                group_id=group_id,
                created_at_ms=self._clock_ms(),
            )
            try:
                report.paths[recipient] = await self.router.send(recipient, envelope)
            except NodeError as exc:
                report.failed[recipient] = str(exc)
                log.warning("could not deliver to %s: %s", short_fingerprint(recipient), exc)

        await asyncio.gather(*(one(r) for r in recipients))
