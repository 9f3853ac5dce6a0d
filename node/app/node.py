"""A peer node: one identity, one QUIC endpoint, its MLS groups, a router, an inbox, an outbox.

Receiving is at-least-once on the wire and exactly-once to the user (``node.app.inbox``);
sending goes through a durable outbox (``node.app.outbox``). With a data directory everything
survives a restart (``node.app.profile``); without one the node keeps its store in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath

from node.app.contacts import Contacts
from node.app.inbox import DEFERRED, Applied, Inbox
from node.app.membership import Membership, Rejection
from node.app.outbox import Outbox, SendReport
from node.app.router import Path, RelayInfo, Router
from node.app.store import NodeStore, StoredMessage
from node.core import suites, wire
from node.core.addresses import Address
from node.core.errors import ErrorCode, LocalProtocolError, NodeError, RelayError, StorageError
from node.core.identity import Identity, mailbox_of
from node.core.runtime import BlockingRunner, Clock, Runtime
from node.mls import (
    GroupError,
    MissingProposalError,
    MlsClient,
    MlsGroup,
    StaleEpochError,
    UnsupportedSuiteError,
    key_package_info,
    read_header,
)
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint, EndpointConfig

__all__ = ["ChatMessage", "NewGroup", "Node", "Rejection", "SendReport"]

log = logging.getLogger(__name__)

FETCH_BATCH = 128
RELAY_LONG_POLL = 20.0  # seconds; the relay caps it below its own call deadline
RELAY_RETRY_MIN, RELAY_RETRY_MAX = 1.0, 30.0
OUTBOX_RETRY_MIN, OUTBOX_RETRY_MAX = 2.0, 60.0
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


@dataclass(frozen=True)
class NewGroup:
    """A group made for its first invitees: its id, the suite it uses and why, and how the
    invitations went."""

    group_id: bytes
    choice: suites.SuiteChoice
    report: SendReport


class Node:
    """A peer node. Everything it takes from the world (clock, randomness, its socket, the
    thread its store and MLS state are written from, its background tasks) comes from
    ``runtime``. Without ``store`` and ``mls`` it keeps both in memory."""

    def __init__(
        self,
        identity: Identity,
        runtime: Runtime,
        *,
        name: str,
        relay: RelayInfo | None = None,
        store: NodeStore | None = None,
        mls: MlsClient | None = None,
        endpoint_config: EndpointConfig | None = None,
    ) -> None:
        self.identity = identity
        self.name = name
        self.runtime = runtime
        self._clock_ms = runtime.wall_ms
        self._random = runtime.random_bytes
        self._run: BlockingRunner = runtime.run_blocking
        self.store = store or NodeStore(FilePath(":memory:"), runtime.random_bytes(32))
        self.contacts = Contacts()
        self.endpoint = Endpoint(identity, self.handle, runtime, endpoint_config)
        self.router = Router(self.endpoint, self.contacts, relay, runtime)
        self.mls = mls or MlsClient(identity, runtime)
        self.groups: dict[bytes, MlsGroup] = {}
        self.inbox: list[ChatMessage] = []
        self._inbox = Inbox(
            self.store, self._run, self._apply, self._deliver_to_user, dropped=self._dropped
        )
        self.outbox = Outbox(self.store, self._run, self.router)
        self.membership = Membership(
            self.public_key, self.groups, self.outbox, self._envelope, self._run, self._clock_ms
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._resumed = False
        self._released = False
        self._outbox_kick = asyncio.Event()
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
        """Resume from the store, open the endpoint, apply what was accepted but not applied,
        collect the relay mailbox, then keep a long poll open and retry the outbox."""
        if not self._resumed:
            await self._resume()
        listen = await self.endpoint.start(host, port)
        # Before anything else is sent: a commit lost in a crash must reach the members first.
        await self.membership.resend_lost_commits()
        await self._inbox.apply_pending()
        if self.router.relay is not None:
            try:
                await self.sync_relay()
            except RelayError as exc:
                log.warning("could not fetch the relay mailbox: %s", exc)
            self._tasks.append(self.runtime.spawn(self._watch_relay()))
        self._tasks.append(self.runtime.spawn(self._retry_outbox()))
        self._tasks.append(self.runtime.spawn(self._inbox.retry_when_stalled()))
        self._tasks.append(self.runtime.spawn(self.membership.run_committer()))
        # Proposals applied before a restart (or while offline) may still wait for a commit.
        self.membership.commit_due.set()
        return listen

    async def _resume(self) -> None:
        """Load what the store and the MLS state file hold (once: go_offline keeps it all)."""
        store = self.store
        for identity, name, address in await self._run(store.contacts):
            self.contacts.add(identity, name, address)
        for message in await self._run(store.messages):
            self.inbox.append(self._chat_message(message))
        mls = self.mls
        loaded = await self._run(lambda: [mls.load_group(g) for g in mls.group_ids()])
        self.groups.update((group.group_id, group) for group in loaded)
        self._resumed = True

    async def stop(self) -> None:
        """Close connections politely and release the store (a no-op after :meth:`kill`)."""
        if self._released:
            return
        await self._cancel_tasks()
        await self.endpoint.close()
        self._release()

    def go_offline(self) -> None:
        """Vanish from the network without a goodbye (a crash, a lid closed). The store stays
        open: :meth:`start` brings the node back."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self.endpoint.abort()

    def kill(self) -> None:
        """Die as a killed process would: no goodbye on the network, nothing more written.
        What the store and the MLS state file hold is all a new node will find."""
        self.go_offline()
        self._release()

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def storage_failure(self) -> str | None:
        """Why received envelopes wait unapplied, or the outbox could not record what it did
        (a state write failed), or None."""
        return self._inbox.failure or self.outbox.failure

    @property
    def clock_ms(self) -> Clock:
        return self._clock_ms

    @property
    def run(self) -> BlockingRunner:
        """The node's seam for blocking work (its store lives behind it)."""
        return self._run

    def spawn(self, work: Awaitable[object]) -> None:
        """Run ``work`` in the background for as long as the node runs."""

        async def wrapped() -> None:
            try:
                await work
            except NodeError as exc:
                log.warning("background work failed: %s", exc)

        task = self.runtime.spawn(wrapped())
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _release(self) -> None:
        """Close the store; the runtime belongs to whoever built it."""
        self._released = True
        self.store.close()

    # --- serving ----------------------------------------------------------------------------

    async def handle(self, caller: Caller, request: wire.Request) -> wire.Response:
        """Answer a call from a peer whose identity key the handshake proved."""
        relay = self.router.relay
        from_relay = relay is not None and caller.identity == relay.identity
        if not from_relay:
            await self._peer_seen(caller)
        match request:
            case wire.Deliver(envelopes):
                path = Path.RELAY if from_relay else Path.DIRECT
                try:
                    return wire.DeliverResult(await self._accept(envelopes, path))
                except StorageError as exc:
                    # Not accepted: the sender keeps the envelopes and tries again.
                    log.warning("%s cannot store received envelopes: %s", self.name, exc)
                    return wire.ErrorResult(ErrorCode.INTERNAL, "the node cannot store now")
            case wire.FetchKeyPackage(identity):
                if identity != self.public_key:
                    return wire.ErrorResult(ErrorCode.NOT_FOUND, "a node serves only its own")
                try:
                    # From the bounded pool: a caller gets fresh ones until it is full, then
                    # the last-resort ones; no call makes the MLS state grow past the bound.
                    offered = await self._run(self.mls.serve_key_packages)
                    return wire.FetchKeyPackageResult(offered[0], tuple(offered[1:]))
                except StorageError as exc:
                    log.warning("%s cannot make a KeyPackage now: %s", self.name, exc)
                    return wire.ErrorResult(ErrorCode.INTERNAL, "the node cannot store now")
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "a node does not serve this call")

    async def _peer_seen(self, caller: Caller) -> None:
        """A peer reached us: it listens where it called from (one socket per node), it is
        worth dialing directly again, and whatever waits for it in the outbox can go now."""
        self.router.peer_alive(caller.identity)
        if self.contacts.address(caller.identity) != caller.address:
            await self.remember_peer(caller.identity, None, caller.address)
        self._outbox_kick.set()

    async def remember_peer(
        self, identity: bytes, name: str | None, address: Address | None
    ) -> None:
        self.contacts.add(identity, name, address)
        contact_name, store = self.contacts.name(identity), self.store
        known = self.contacts.address(identity)
        await self._run(lambda: store.save_contact(identity, contact_name, known))

    async def _accept(self, envelopes: tuple[wire.Envelope, ...], path: Path) -> tuple[bytes, ...]:
        own = self.identity.mailbox
        # Not ours: not accepted, so the sender keeps it.
        mine = [env for env in envelopes if env.recipient == own]
        await self._inbox.accept(mine, path)
        return tuple(env.id for env in mine)

    async def _apply(self, env: wire.Envelope, path: Path) -> Applied:
        """Apply one stored envelope to MLS (called by the inbox, in arrival order); MLS writes
        its state file, so each call runs through the runtime's executor."""
        if env.kind is wire.EnvelopeKind.WELCOME:
            mls = self.mls
            try:
                group = await self._run(lambda: mls.join(env.payload))
            except GroupError as exc:
                log.warning("%s dropped an unusable welcome: %s", self.name, exc)
                return None
            self.groups[group.group_id] = group
            log.info("%s joined a group at epoch %d", self.name, group.epoch)
            return None
        if env.kind is wire.EnvelopeKind.PROPOSAL:
            return await self.membership.apply_proposal(env)
        target = self.groups.get(env.group_id)
        if target is None:
            return DEFERRED  # its Welcome may still be on its way by another path
        try:
            incoming = await self._run(lambda: target.process(env.payload, delivery_id=env.id))
        except MissingProposalError:
            # An Update proposal and the commit covering it come from different members, by
            # different paths: keep the commit until the proposal is in (ADR 0003).
            return DEFERRED
        except StaleEpochError as exc:
            header = read_header(env.payload)
            if header is not None and header.epoch > target.epoch:
                return DEFERRED  # sent after a commit that has not reached us yet
            log.warning("%s dropped a %s from another epoch: %s", self.name, env.kind.value, exc)
            return None
        except GroupError as exc:
            log.warning("%s dropped an undecryptable %s: %s", self.name, env.kind.value, exc)
            return None
        if incoming.kind == "commit" and self.membership.waits_on_commits(target.group_id):
            self.spawn(self.membership.after_commit(target.group_id))
        if incoming.kind != "application" or incoming.plaintext is None:
            return None
        return StoredMessage(
            envelope_id=env.id,
            group_id=target.group_id,
            sender=incoming.sender,
            text=incoming.plaintext.decode("utf-8", errors="replace"),
            path=path.value,
        )

    def _chat_message(self, message: StoredMessage) -> ChatMessage:
        return ChatMessage(
            group_id=message.group_id,
            sender=message.sender,
            sender_name=self.contacts.name(message.sender),
            text=message.text,
            path=Path(message.path),
            envelope_id=message.envelope_id,
        )

    async def _deliver_to_user(self, message: StoredMessage) -> None:
        chat = self._chat_message(message)
        self.inbox.append(chat)
        if self.on_message is not None:
            self.on_message(chat)
        async with self._inbox_changed:
            self._inbox_changed.notify_all()

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
        """One fetch (or long poll, if ``wait_seconds``) → store → acknowledge round."""
        mailbox = self.identity.mailbox
        store = self.store
        cursor = await self._run(lambda: store.get_int("relay_cursor"))
        request: wire.Request
        if wait_seconds > 0:
            request = wire.Wait(mailbox, cursor, FETCH_BATCH, int(wait_seconds * 1000))
        else:
            request = wire.Fetch(mailbox, cursor, FETCH_BATCH)
        response = await self.router.call_relay(request, deadline=wait_seconds + 10)
        if not isinstance(response, wire.FetchResult):
            raise RelayError("the relay answered fetch with something else")
        if not response.envelopes:
            return 0
        ids = await self._accept(response.envelopes, Path.RELAY)
        # Acknowledge only once stored: a crash in between means a re-fetch, and the duplicate
        # is dropped by id.
        await self.router.call_relay(wire.Ack(mailbox, ids))
        await self._run(lambda: store.set_int("relay_cursor", response.cursor))
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

    async def _retry_outbox(self) -> None:
        """Retry what the outbox still holds: soon after a peer reappears, else with backoff."""
        delay = OUTBOX_RETRY_MIN
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._outbox_kick.wait()
            self._outbox_kick.clear()
            try:
                if not await self.outbox.pending():
                    delay = OUTBOX_RETRY_MIN
                    continue
                report = await self.outbox.flush()
            except StorageError as exc:
                # The outbox could not be read or updated (a full disk): nothing is lost, the
                # envelopes stay queued; try again later.
                log.warning("%s cannot retry its outbox now: %s", self.name, exc)
                delay = min(delay * 2, OUTBOX_RETRY_MAX)
                continue
            delay = min(delay * 2, OUTBOX_RETRY_MAX) if report.failed else OUTBOX_RETRY_MIN

    # --- groups -----------------------------------------------------------------------------

    async def create_group(self, ciphersuite: int = suites.XWING) -> bytes:
        """A new group with this node as its only member and committer; returns its id. Its
        suite is fixed for good: a group made for known invitees is better made with
        :meth:`create_group_with`, which picks the suite they all offer."""
        group_id, mls = self._random(16), self.mls
        group = await self._run(lambda: mls.create_group(group_id, ciphersuite))
        self.groups[group.group_id] = group
        return group.group_id

    async def create_group_with(self, peers: Sequence[bytes]) -> NewGroup:
        """A new group for ``peers``: their KeyPackages are fetched first, and the group uses
        X-Wing if every one of them offers it, otherwise 0x0001 (``node.core.suites``).
        Raises before anything is made if a peer sends no usable KeyPackage or none of a
        suite everyone else offers."""
        offers = {peer: await self._fetch_key_packages(peer) for peer in peers}
        names = {peer: self.contacts.name(peer) for peer in peers}
        choice = suites.choose(offers, names)
        group_id = await self.create_group(choice.suite)
        key_packages = [offers[peer][choice.suite] for peer in peers]
        report = await self.membership.add(group_id, key_packages)
        return NewGroup(group_id, choice, report)

    async def invite(self, group_id: bytes, peers: list[bytes]) -> SendReport:
        """Fetch each peer's KeyPackage from the peer itself, then add them.

        A group's suite never changes: a peer that offers no KeyPackage of it is refused
        (:class:`~node.core.suites.NoCommonSuiteError`) before anyone is added.
        The committer commits the adds, sends the Welcome to the newcomers and the commit to
        everyone who was already a member. Any other member proposes the adds to the
        committer and returns after the outbox's first attempt at them: the peers join when the
        committer has committed them (ADR 0003)."""
        self.membership.check_member(group_id)
        suite = self.groups[group_id].ciphersuite
        key_packages = []
        for peer in peers:
            offered = await self._fetch_key_packages(peer)
            if suite not in offered:
                raise suites.NoCommonSuiteError(peer, (suite,), self.contacts.name(peer))
            key_packages.append(offered[suite])
        return await self.membership.add(group_id, key_packages)

    async def remove(self, group_id: bytes, peers: list[bytes]) -> SendReport:
        """Remove members: committed at once by the committer, proposed to it by anyone else."""
        return await self.membership.remove(group_id, peers)

    async def update_keys(self, group_id: bytes) -> SendReport:
        """Refresh this member's keys in the group (post-compromise security): the committer
        commits an update at once; any other member proposes one to every member, and it takes
        effect when the committer commits it."""
        return await self.membership.update_keys(group_id)

    @property
    def rejections(self) -> list[Rejection]:
        """The latest proposals this node refused, oldest first."""
        return list(self.membership.rejections)

    def _dropped(self, env: wire.Envelope) -> None:
        if env.kind is wire.EnvelopeKind.PROPOSAL and env.group_id not in self.groups:
            self.membership.unknown_group(env)

    async def _fetch_key_packages(self, peer: bytes) -> dict[int, bytes]:
        """The peer's KeyPackages by suite, fetched from the peer itself, each checked: a
        valid signature, a lifetime that covers now, and the peer's own identity. One naming
        anyone else refuses the whole answer; one of a suite the binding lacks is skipped."""
        name = self.contacts.name(peer)
        response = await self.router.call_peer(peer, wire.FetchKeyPackage(peer))
        if not isinstance(response, wire.FetchKeyPackageResult):
            raise NodeError(f"{name} sent no KeyPackage")
        now_ms = self._clock_ms()
        offered: dict[int, bytes] = {}
        for key_package in response.key_packages:
            try:
                identity, suite = key_package_info(key_package, now_ms=now_ms)
            except UnsupportedSuiteError:
                continue  # a suite of a newer peer, say
            except GroupError as exc:
                raise NodeError(f"{name} sent an unusable KeyPackage: {exc}") from exc
            if identity != peer:
                raise NodeError(f"{name} sent someone else's KeyPackage")
            if suite in offered:
                raise NodeError(f"{name} sent two KeyPackages of one ciphersuite")
            offered[suite] = key_package
        if not offered:
            raise NodeError(f"{name} sent no KeyPackage this node can use")
        return offered

    async def send_text(self, group_id: bytes, text: str) -> SendReport:
        group = self.groups[group_id]
        plaintext = text.encode("utf-8")
        if len(plaintext) > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"a message is at most {MAX_MESSAGE_BYTES // 1024} KiB "
                f"({len(plaintext) // 1024} KiB given)"
            )
        me = self.public_key

        def encrypt() -> tuple[bytes, list[bytes]]:
            # One executor call: the members are those of the epoch the message is sent in.
            return group.encrypt(plaintext), [m for m in group.members() if m != me]

        ciphertext, others = await self._run(encrypt)
        kind = wire.EnvelopeKind.APPLICATION
        return await self.outbox.send(
            [self._envelope(m, kind, ciphertext, group_id) for m in others]
        )

    def _envelope(
        self, recipient: bytes, kind: wire.EnvelopeKind, payload: bytes, group_id: bytes
    ) -> tuple[bytes, wire.Envelope]:
        return recipient, wire.Envelope(
            id=self._random(wire.ENVELOPE_ID_SIZE),
            recipient=mailbox_of(recipient),
            kind=kind,
            payload=payload,
            group_id=group_id,
            created_at_ms=self._clock_ms(),
        )
