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
from functools import partial
from pathlib import Path as FilePath

from node.app.contacts import Contacts
from node.app.directory import DirectoryClient, DirectoryError
from node.app.inbox import DEFERRED, Accepted, Applied, Completed, Finish, Inbox
from node.app.invitations import Invitation
from node.app.limits import Counters, NodeLimits
from node.app.membership import Membership, Rejection
from node.app.outbox import Outbox, SendReport
from node.app.router import Path, RelayInfo, Router
from node.app.store import NodeStore, StoredDelivery, StoredMessage
from node.core import sealed, suites, wire
from node.core.addresses import Address, format_address
from node.core.chat_payload import (
    ChatPayloadError,
    ConversationInfo,
    ConversationKind,
    decode_payload,
    encode_info,
    encode_text,
)
from node.core.errors import (
    CryptoError,
    ErrorCode,
    LocalProtocolError,
    NodeError,
    PeerIdentityError,
    RelayError,
    RemoteError,
    RemoteProtocolError,
    StorageError,
)
from node.core.hybrid_kem import SEED_SIZE, HybridPrivateKey
from node.core.identity import Identity, mailbox_of, short_fingerprint
from node.core.rate_limit import TokenBuckets
from node.core.runtime import BlockingRunner, Clock, Runtime
from node.mls import (
    GroupError,
    Incoming,
    MissingProposalError,
    MlsClient,
    MlsGroup,
    StaleEpochError,
    UnsupportedSuiteError,
    WelcomeInfo,
    key_package_info,
    read_header,
)
from node.transport.connection import Caller
from node.transport.endpoint import Endpoint, EndpointConfig

__all__ = [
    "ChatMessage",
    "Invitation",
    "NewGroup",
    "Node",
    "NodeLimits",
    "Rejection",
    "RelayIdentityError",
    "SendReport",
]

log = logging.getLogger(__name__)

FETCH_BATCH = 128
RELAY_LONG_POLL = 20.0  # seconds; the relay caps it below its own call deadline
RELAY_RETRY_MIN, RELAY_RETRY_MAX = 1.0, 30.0
RELAY_DIAL_DEADLINE = 5.0  # seconds for one handshake with the relay
# While its relay mailbox may hold a backlog, the node refuses direct deliveries so that their
# senders queue them at the relay behind it: MLS cannot decrypt a sender's message once one
# more than the binding's out-of-order tolerance (32) newer was applied. For at most this many
# seconds after start or a failed relay call: a relay that stays away must not silence
# direct messages for good.
RELAY_CATCH_UP_HOLD = 60.0
# What a message shows for a recipient when the relay says it dropped the delivery unfetched.
RELAY_EXPIRED_REASON = "the relay dropped it: not fetched within the relay's envelope lifetime"
# Store secrets holding contacts' envelope keys from their invite links, by identity (hex).
LINK_KEY = "link_envelope_key:"

OUTBOX_RETRY_MIN, OUTBOX_RETRY_MAX = 2.0, 60.0
# Leaves room in a 1 MiB frame for MLS and envelope overhead; longer texts are refused up front.
MAX_MESSAGE_BYTES = 256 * 1024
COUNTERS_SAVE_INTERVAL = 30.0  # seconds between saves of the refusal counters


class RelayIdentityError(RelayError, PeerIdentityError):
    """The relay proved an identity key other than the one configured (``--relay-key``)."""


@dataclass(frozen=True)
class ChatMessage:
    """An application message as the user sees it."""

    group_id: bytes
    sender: bytes
    sender_name: str
    text: str
    path: Path
    envelope_id: bytes
    time_ms: int = 0  # when this node kept it (local clock)
    row: int = 0  # its place in the local log


# Told of what a member said a conversation is: (group id, sender, what it said).
InfoListener = Callable[[bytes, bytes, ConversationInfo], None]


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
        limits: NodeLimits | None = None,
        sealed_sender: bool = True,
    ) -> None:
        self.identity = identity
        self.name = name
        self.runtime = runtime
        self._clock_ms = runtime.wall_ms
        self._random = runtime.random_bytes
        self._run: BlockingRunner = runtime.run_blocking
        self.store = store or NodeStore(FilePath(":memory:"), runtime.random_bytes(32))
        self.limits = limits = limits or NodeLimits()
        self._counters = Counters()
        self.contacts = Contacts(limits.max_peers_seen)
        self.endpoint = Endpoint(identity, self.handle, runtime, endpoint_config)
        self.router = Router(
            self.endpoint,
            self.contacts,
            relay,
            runtime,
            identity=identity,
            sealed_sender=sealed_sender,
        )
        # The hybrid key sealed envelopes to this node are opened with (loaded by resume).
        self._envelope_key: HybridPrivateKey | None = None
        self.mls = mls or MlsClient(identity, runtime)
        # KeyPackages kept at the relay for when this node is offline, and usernames there.
        self.directory = DirectoryClient(self.endpoint, self.router, self.mls, runtime)
        self.groups: dict[bytes, MlsGroup] = {}
        self.inbox: list[ChatMessage] = []
        self._inbox = Inbox(
            self.store,
            self._run,
            self._apply,
            self._deliver_to_user,
            dropped=self._dropped,
            apply_now=self._apply_now,
            limits=limits,
            counters=self._counters,
        )
        self.outbox = Outbox(
            self.store,
            self._run,
            self.router,
            limits=limits,
            counters=self._counters,
            clock_ms=self._clock_ms,
        )
        self.membership = Membership(
            self.public_key, self.groups, self.outbox, self._envelope, self._run, self._clock_ms
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._resumed = False
        self._released = False
        self._outbox_kick = asyncio.Event()
        self._inbox_changed = asyncio.Condition()
        self.on_message: Callable[[ChatMessage], None] | None = None
        # Set once the relay mailbox was first collected after start.
        self.relay_synced = asyncio.Event()
        # "none" (no relay configured), "connecting", "reachable" or "unreachable"; each
        # listener is told of every change, on the event loop.
        self.relay_state = "none" if relay is None else "connecting"
        self.relay_listeners: list[Callable[[str], None]] = []
        # Since when (runtime monotonic) the relay mailbox may hold what this node has not
        # collected; None while its long poll keeps it up to date.
        self._relay_behind_since: float | None = None
        # When to fetch again what the relay holds behind the cursor (None: nothing left there).
        self._relay_rescan_at: float | None = None
        self._fatal: NodeError | None = None
        self._fatal_set = asyncio.Event()
        # Told of each invitation request a stranger's Welcome made (on the event loop).
        self.on_invitation: Callable[[Invitation], None] | None = None
        self._invitations: dict[int, Invitation] = {}
        # Per-caller allowances, on the runtime's monotonic clock.
        n = limits.max_callers
        self._key_packages_known = TokenBuckets(
            limits.key_package_rate_known, limits.key_package_burst_known, n
        )
        self._key_packages_stranger = TokenBuckets(
            limits.key_package_rate_stranger, limits.key_package_burst_stranger, n
        )
        self._deliver_known = TokenBuckets(limits.deliver_rate_known, limits.deliver_burst_known, n)
        self._key_packages_strangers = TokenBuckets(
            limits.key_package_rate_strangers, limits.key_package_burst_strangers, 1
        )
        self._deliver_strangers = TokenBuckets(
            limits.deliver_rate_strangers, limits.deliver_burst_strangers, 1
        )
        self._deliver_stranger = TokenBuckets(
            limits.deliver_rate_stranger, limits.deliver_burst_stranger, n
        )
        self._members_key: tuple[tuple[bytes, int, bool], ...] | None = None
        # After a group was joined or its membership changed by a commit this node processed.
        self.on_group_changed: Callable[[bytes], None] | None = None
        self.on_info: InfoListener | None = None
        # A relay dropped a message delivery it took (stored already): envelope id, recipient
        # and message id of each, with the reason.
        self.on_relay_failed: Callable[[list[StoredDelivery]], None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    @property
    def address(self) -> Address:
        return self.endpoint.local_address

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        """Resume from the store, open the endpoint, apply what was accepted but not applied,
        then, in the background, collect the relay mailbox and keep a long poll open there,
        and retry the outbox.

        The relay is never waited for: an unreachable one is retried in the background
        (``relay_synced`` is set once its mailbox was first collected). A relay that presents
        another identity key than the one configured is a security event, not a network
        problem: the node stops talking to it and :meth:`wait_fatal` returns the error."""
        await self.resume()
        if self.router.relay is not None:
            # Before the endpoint opens: the first direct delivery may come at once.
            self._relay_behind_since = self.runtime.monotonic()
        listen = await self.endpoint.start(host, port)
        # Before anything else is sent: a commit lost in a crash must reach the members first.
        await self.membership.resend_lost_commits()
        # Before the relay's mail: what was accepted earlier is applied first, in order.
        await self._inbox.apply_pending()
        if self.router.relay is not None:
            self.relay_synced.clear()
            self._tasks.append(self.runtime.spawn(self._watch_relay()))
            self._tasks.append(self.runtime.spawn(self.directory.keep_pool()))
        self._tasks.append(self.runtime.spawn(self._retry_outbox()))
        self._tasks.append(self.runtime.spawn(self._inbox.retry_when_stalled()))
        self._tasks.append(self.runtime.spawn(self.membership.run_committer()))
        self._tasks.append(self.runtime.spawn(self._save_counters_now_and_then()))
        # Proposals applied before a restart (or while offline) may still wait for a commit.
        self.membership.commit_due.set()
        return listen

    async def resume(self) -> None:
        """Load what the store and the MLS state file hold (once: go_offline keeps it all).
        :meth:`start` does it; call it first to see the groups before the node starts."""
        if self._resumed:
            return
        store = self.store
        for identity, name, address, chosen in await self._run(store.contacts_chosen):
            self.contacts.add(identity, name, address, chosen=chosen)
        for message in await self._run(store.messages):
            if message.direction == "in":
                self.inbox.append(self._chat_message(message))
        mls = self.mls
        loaded = await self._run(lambda: [mls.load_group(g) for g in mls.group_ids()])
        self.groups.update((group.group_id, group) for group in loaded)
        for stored in await self._run(store.invitations):
            if stored.group_id in self.groups:
                # Accepted, and the node died before it forgot the request.
                await self._run(partial(store.drop_invitation, stored.id))
                continue
            self._invitations[stored.id] = Invitation.of(stored)
        for key, envelope_key in (await self._run(lambda: store.secrets_named(LINK_KEY))).items():
            with contextlib.suppress(ValueError, CryptoError):
                self.router.learn_envelope_key(bytes.fromhex(key[len(LINK_KEY) :]), envelope_key)
        await self.envelope_key()
        self._resumed = True

    async def learn_envelope_key(self, identity: bytes, envelope_key: bytes) -> None:
        """Seal relayed mail to ``identity`` with ``envelope_key`` (from its signed invite link),
        now and after restarts. Raises :class:`CryptoError` for a key that is not usable."""
        self.router.learn_envelope_key(identity, envelope_key)
        store, name = self.store, LINK_KEY + identity.hex()

        def keep() -> None:
            # --peer links come again at every start: a write only when the key is new.
            if store.get_secret(name) != envelope_key:
                store.set_secret(name, envelope_key)

        await self._run(keep)

    async def stop(self) -> None:
        """Close connections politely and release the store (a no-op after :meth:`kill`)."""
        if self._released:
            return
        await self._cancel_tasks()
        await self.endpoint.close()
        await self._save_counters()
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
        """Answer a call from a peer whose identity key the handshake proved. A stranger's
        calls are refused, before any work, past their allowance (``NodeLimits``)."""
        relay = self.router.relay
        from_relay = relay is not None and caller.identity == relay.identity
        if not from_relay:
            await self._peer_seen(caller)
        match request:
            case wire.Deliver(envelopes):
                if not from_relay and (refusal := self._admit_deliver(caller, envelopes)):
                    return refusal
                if not from_relay and self._relay_backlog_possible():
                    # Not a verdict on the envelopes: the sender's router takes the relay.
                    log.info("%s refused a direct delivery: collecting the relay first", self.name)
                    return wire.ErrorResult(
                        ErrorCode.BUSY, "collecting the relay mailbox first; use the relay"
                    )
                path = Path.RELAY if from_relay else Path.DIRECT
                try:
                    accepted = await self._accept(envelopes, path, caller.identity)
                    return wire.DeliverResult(tuple(accepted.ids))
                except StorageError as exc:
                    # Not accepted: the sender keeps the envelopes and tries again.
                    log.warning("%s cannot store received envelopes: %s", self.name, exc)
                    return wire.ErrorResult(ErrorCode.INTERNAL, "the node cannot store now")
            case wire.FetchKeyPackage(identity):
                if identity != self.public_key:
                    return wire.ErrorResult(ErrorCode.NOT_FOUND, "a node serves only its own")
                known, now = self._known(caller.identity), self.runtime.monotonic()
                if not (
                    self._key_packages_known.take(caller.identity, now)
                    if known
                    else _take_both(
                        self._key_packages_stranger, self._key_packages_strangers, caller, now, 1
                    )
                ):
                    self._counters.bump("key_package_rate_limited")
                    return wire.ErrorResult(
                        ErrorCode.RATE_LIMITED, "too many KeyPackage requests; try again later"
                    )
                try:
                    # From the bounded pool: a caller gets fresh ones until it is full, then
                    # the last-resort ones; no call makes the MLS state grow past the bound.
                    offered = await self._run(self.mls.serve_key_packages)
                    return wire.FetchKeyPackageResult(offered[0], tuple(offered[1:]))
                except StorageError as exc:
                    log.warning("%s cannot make a KeyPackage now: %s", self.name, exc)
                    return wire.ErrorResult(ErrorCode.INTERNAL, "the node cannot store now")
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "a node does not serve this call")

    def _admit_deliver(
        self, caller: Caller, envelopes: tuple[wire.Envelope, ...]
    ) -> wire.ErrorResult | None:
        """Refuse a direct deliver past the caller's allowance; a stranger (no contact, no
        shared group, no pending invitation) may send invitation Welcomes only, and few."""
        known = self._known(caller.identity)
        if not known and any(env.kind is not wire.EnvelopeKind.WELCOME for env in envelopes):
            self._counters.bump("deliver_stranger_not_welcome")
            return wire.ErrorResult(
                ErrorCode.UNAUTHORIZED,
                "this node takes only invitations from identities it does not know",
            )
        now, n = self.runtime.monotonic(), len(envelopes)
        if not (
            self._deliver_known.take(caller.identity, now, n)
            if known
            else _take_both(self._deliver_stranger, self._deliver_strangers, caller, now, n)
        ):
            self._counters.bump("deliver_rate_limited")
            return wire.ErrorResult(ErrorCode.RATE_LIMITED, "too many envelopes; try again later")
        return None

    def _relay_backlog_possible(self) -> bool:
        since = self._relay_behind_since
        return since is not None and self.runtime.monotonic() - since < RELAY_CATCH_UP_HOLD

    def _relay_behind(self) -> None:
        if self._relay_behind_since is None:
            self._relay_behind_since = self.runtime.monotonic()

    def _refresh_group_members(self) -> None:
        """Tell the contacts who is in the groups this node is in (when an epoch moved)."""
        groups = list(self.groups.values())
        key = tuple((g.group_id, g.epoch, g.is_active) for g in groups)
        if key != self._members_key:
            self._members_key = key
            members = frozenset(m for g in groups if g.is_active for m in g.members())
            self.contacts.set_group_members(members - {self.public_key})

    def is_contact(self, identity: bytes) -> bool:
        """Chosen by the user or a member of a group this node is in."""
        self._refresh_group_members()
        return self.contacts.is_contact(identity)

    def _known(self, identity: bytes) -> bool:
        """A contact, or the inviter or a member of an invitation waiting for the user: its
        envelopes are taken (those of a pending group wait for the answer)."""
        if self.is_contact(identity):
            return True
        return any(
            identity == inv.inviter or identity in inv.members for inv in self._invitations.values()
        )

    async def _peer_seen(self, caller: Caller) -> None:
        """A peer reached us: it listens where it called from (one socket per node), it is
        worth dialing directly again, and whatever waits for it in the outbox can go now. A
        contact's address is saved; anyone else's is only an address hint, kept in memory."""
        self.router.peer_alive(caller.identity)
        if self.contacts.address(caller.identity) != caller.address:
            if self.is_contact(caller.identity):
                await self.remember_peer(caller.identity, None, caller.address, contact=False)
            else:
                self.contacts.seen_at(caller.identity, caller.address)
        self._outbox_kick.set()

    async def remember_peer(
        self, identity: bytes, name: str | None, address: Address | None, *, contact: bool = True
    ) -> None:
        """Save what is known of a peer. ``contact``: the user chose it (``--peer``,
        ``--invite``, an invite link, an accepted invitation); False keeps it only as an
        address, and never demotes a contact."""
        self.contacts.add(identity, name, address, chosen=contact)
        entry = self.contacts.get(identity)
        assert entry is not None
        contact_name, known, chosen = entry.name, entry.address, entry.chosen
        store = self.store
        await self._run(lambda: store.save_contact(identity, contact_name, known, chosen=chosen))

    async def envelope_key(self) -> HybridPrivateKey:
        """The node's sealed-sender key (published in its peer record by ``Presence``), made
        once and kept, encrypted, in its store."""
        if self._envelope_key is None:
            store = self.store
            seed = await self._run(lambda: store.get_secret("envelope_key_seed"))
            if seed is None:
                seed = self._random(SEED_SIZE)
                await self._run(lambda: store.set_secret("envelope_key_seed", seed))
            self._envelope_key = HybridPrivateKey(seed)
        return self._envelope_key

    async def _accept(
        self, envelopes: tuple[wire.Envelope, ...], path: Path, caller: bytes
    ) -> Accepted:
        """Keep the envelopes for this node. Returns, by outer id, those the sender may forget
        (``ids``: kept, or sealed ones that do not open), those refused while a bound is full
        (``later``), and those refused for good (``never``: outside the time window, or for
        another mailbox)."""
        own = self.identity.mailbox
        # Not ours: not accepted, so the sender keeps it.
        mine = [env for env in envelopes if env.recipient == own]
        opened, outer_ids, dropped = await self._open_seals(mine)
        # A failure notice counts only as the relay's own fetch answer (:meth:`_pull_relay`);
        # from anyone else, sealed or not, it would be a way to mark messages failed.
        forged = [env.id for env in opened if env.kind is wire.EnvelopeKind.DELIVERY_FAILED]
        if forged:
            self._counters.bump("failure_notice_not_from_relay", len(forged))
            opened = [env for env in opened if env.kind is not wire.EnvelopeKind.DELIVERY_FAILED]
        owners = [self._share_of(env, path, caller) for env in opened]
        inner = await self._inbox.accept(opened, path, owners, self._clock_ms())

        def outer(ids: list[bytes]) -> list[bytes]:
            return [o for i in ids for o in outer_ids[i]]

        others = [env.id for env in envelopes if env.recipient != own]
        return Accepted(
            [*dropped, *outer(inner.ids)],
            outer(inner.later),
            [*outer(inner.never), *outer(forged), *others],
        )

    async def _open_seals(
        self, envelopes: list[wire.Envelope]
    ) -> tuple[list[wire.Envelope], dict[bytes, list[bytes]], list[bytes]]:
        """Open the sealed envelopes among ``envelopes``: (what to keep, the outer ids of each
        kept id, the ids of those dropped). A box that does not open or a forged signature is
        dropped and counted, never shown; a replay (an inner id already received, under any
        outer id) is counted, and kept only as the duplicate the inbox drops."""
        kept: list[wire.Envelope] = []
        outer_ids: dict[bytes, list[bytes]] = {}
        dropped: list[bytes] = []
        key = await self.envelope_key()
        for env in envelopes:
            if env.kind is wire.EnvelopeKind.SEALED:
                try:
                    inner = sealed.open_envelope(key, env).envelope
                except sealed.SealSignatureError:
                    self._counters.bump("sealed_bad_signature")
                    dropped.append(env.id)
                    continue
                except sealed.SealError:
                    self._counters.bump("sealed_unopened")
                    dropped.append(env.id)
                    continue
                if inner.id in outer_ids:
                    self._counters.bump("sealed_replayed")
                else:
                    kept.append(inner)
                outer_ids.setdefault(inner.id, []).append(env.id)
            elif env.id not in outer_ids:
                kept.append(env)
                outer_ids[env.id] = [env.id]
        inner_ids = [env.id for env in kept if outer_ids[env.id] != [env.id]]
        if inner_ids:
            store = self.store
            replayed = await self._run(lambda: store.seen_ids(inner_ids))
            if replayed:
                self._counters.bump("sealed_replayed", len(replayed))
        return kept, outer_ids, dropped

    def _share_of(self, env: wire.Envelope, path: Path, caller: bytes) -> bytes:
        """The inbox share an envelope counts against: its caller when direct; through the
        relay (sealed sender hides who sent it) its group when this node is in it or invited
        to it, else one share for every group it does not know."""
        if path is Path.DIRECT:
            return b"peer:" + caller
        pending = {inv.group_id for inv in self._invitations.values()}
        if env.group_id in self.groups or env.group_id in pending:
            return b"group:" + env.group_id
        return b""

    async def _apply(self, env: wire.Envelope, path: Path, finish: Finish) -> Applied:
        """Apply one stored envelope to MLS (called by the inbox, in arrival order); MLS writes
        its state file, so each call runs through the runtime's executor. A group message is
        decrypted and its inbox row replaced (``finish``) in one executor call."""
        if env.kind is wire.EnvelopeKind.WELCOME:
            return await self._apply_welcome(env)
        if env.kind is wire.EnvelopeKind.PROPOSAL:
            return await self.membership.apply_proposal(env)
        target = self.groups.get(env.group_id)
        if target is None:
            return DEFERRED  # its Welcome may still be on its way by another path
        time_ms = self._clock_ms()
        outcome, after = await self._run(
            lambda: self._apply_group(target, env, path, finish, time_ms)
        )
        after()
        return outcome

    def _apply_now(
        self, env: wire.Envelope, path: Path, finish: Finish
    ) -> tuple[Applied, Callable[[], None]] | None:
        """:meth:`_apply` on the executor's thread, for a message of a group this node is in
        (None for anything else: the inbox then takes its usual way). Returns the outcome and
        what to do next on the event loop."""
        if env.kind in (wire.EnvelopeKind.WELCOME, wire.EnvelopeKind.PROPOSAL):
            return None
        target = self.groups.get(env.group_id)
        if target is None:
            return None
        return self._apply_group(target, env, path, finish, self._clock_ms())

    def _apply_group(
        self, target: MlsGroup, env: wire.Envelope, path: Path, finish: Finish, time_ms: int
    ) -> tuple[Applied, Callable[[], None]]:
        """Decrypt a group message and replace its inbox row (``finish``), on the executor's
        thread: one call, so the MLS state's mark rides on that transaction (ADR 0004)."""
        try:
            incoming = target.process(env.payload, delivery_id=env.id)
        except MissingProposalError:
            # An Update proposal and the commit covering it come from different members, by
            # different paths: keep the commit until the proposal is in (ADR 0003).
            return DEFERRED, _nothing
        except StaleEpochError as exc:
            header = read_header(env.payload)
            if header is not None and header.epoch > target.epoch:
                return DEFERRED, _nothing  # sent after a commit that has not reached us yet
            log.warning("%s dropped a %s from another epoch: %s", self.name, env.kind.value, exc)
            return Completed(None, finish(None)), _nothing
        except GroupError as exc:
            log.warning("%s dropped an undecryptable %s: %s", self.name, env.kind.value, exc)
            return Completed(None, finish(None)), _nothing
        message, info = self._said(target, incoming, env, path, time_ms)
        outcome = Completed(message, finish(message))
        return outcome, partial(self._after_group, target, incoming, info)

    def _after_group(
        self, target: MlsGroup, incoming: Incoming, info: ConversationInfo | None
    ) -> None:
        if incoming.kind == "commit":
            if self.membership.waits_on_commits(target.group_id):
                self.spawn(self.membership.after_commit(target.group_id))
            self._group_changed(target.group_id)
        if info is not None and self.on_info is not None:
            self.on_info(target.group_id, incoming.sender, info)

    def _said(
        self, group: MlsGroup, incoming: Incoming, env: wire.Envelope, path: Path, time_ms: int
    ) -> tuple[StoredMessage | None, ConversationInfo | None]:
        """What an applied envelope says: a message for the user, what the conversation is,
        or nothing (a commit, an unreadable payload)."""
        if incoming.kind != "application" or incoming.plaintext is None:
            return None, None
        try:
            payload = decode_payload(incoming.plaintext)
        except ChatPayloadError as exc:
            log.warning("%s dropped an unreadable message: %s", self.name, exc)
            return None, None
        if isinstance(payload, ConversationInfo):
            return None, payload
        message = StoredMessage(
            envelope_id=env.id,
            group_id=group.group_id,
            sender=incoming.sender,
            text=payload.text,
            path=path.value,
            time_ms=time_ms,
        )
        return message, None

    async def _apply_welcome(self, env: wire.Envelope) -> Applied:
        """Join if a contact invites us; keep a stranger's Welcome as an invitation request."""
        mls = self.mls
        try:
            info = await self._run(lambda: mls.inspect_welcome(env.payload))
        except GroupError as exc:
            log.warning("%s dropped an unusable welcome: %s", self.name, exc)
            self._counters.bump("welcome_unusable")
            return None
        if not self.is_contact(info.sender):
            await self._keep_invitation(info, env.payload)
            return None
        try:
            group = await self._run(lambda: mls.join(env.payload))
        except GroupError as exc:
            log.warning("%s dropped an unusable welcome: %s", self.name, exc)
            self._counters.bump("welcome_unusable")
            return None
        self.groups[group.group_id] = group
        log.info("%s joined a group at epoch %d", self.name, group.epoch)
        self._group_changed(group.group_id)
        return None

    async def _keep_invitation(self, info: WelcomeInfo, welcome: bytes) -> None:
        store, limits, now = self.store, self.limits, self._clock_ms()
        await self._expire_invitations(now)

        def keep() -> int | str:
            return store.add_invitation(
                info.sender,
                info.group_id,
                info.members,
                welcome,
                now,
                max_total=limits.max_invitations,
                max_per_inviter=limits.max_invitations_per_inviter,
            )

        kept = await self._run(keep)
        if isinstance(kept, str):
            log.info("%s refused an invitation from a stranger (%s)", self.name, kept)
            self._counters.bump(kept)
            return
        if kept in self._invitations:
            return
        invitation = Invitation(kept, info.sender, info.group_id, tuple(info.members), now)
        self._invitations[kept] = invitation
        log.info("%s keeps an invitation from %s", self.name, short_fingerprint(info.sender))
        if self.on_invitation is not None:
            self.on_invitation(invitation)

    async def _expire_invitations(self, now_ms: int) -> None:
        store = self.store
        before = now_ms - self.limits.invitation_ttl_ms
        gone = await self._run(lambda: store.expire_invitations(before))
        for invitation_id in gone:
            invitation = self._invitations.pop(invitation_id, None)
            self._counters.bump("invitation_expired")
            if invitation is not None:
                self.spawn(self._inbox.drop_group(invitation.group_id))

    def invitations(self) -> list[Invitation]:
        """Invitation requests from strangers waiting for the user, oldest first."""
        cutoff = self._clock_ms() - self.limits.invitation_ttl_ms
        return [i for i in self._invitations.values() if i.received_ms >= cutoff]

    async def accept_invitation(self, invitation_id: int) -> bytes:
        """Join the group of a waiting invitation; its inviter becomes a contact, and the
        group's envelopes that waited are applied. Returns the group id.

        :raises LocalProtocolError: if no such invitation waits.
        :raises GroupError: if the Welcome can no longer be joined (the request is dropped)."""
        invitation = self._pending_invitation(invitation_id)
        store, mls = self.store, self.mls
        stored = [i for i in await self._run(store.invitations) if i.id == invitation_id]
        if not stored:
            raise LocalProtocolError("that invitation is no longer waiting")
        try:
            group = await self._run(lambda: mls.join(stored[0].welcome))
        except GroupError:
            await self._forget_invitation(invitation)
            raise
        self.groups[group.group_id] = group
        # At once, before anything else may apply what waited for the group (an envelope
        # arriving meanwhile applies it too): the conversation exists before its messages.
        self._group_changed(group.group_id)
        log.info("%s accepted an invitation, at epoch %d", self.name, group.epoch)
        address = self.contacts.address(invitation.inviter)
        await self.remember_peer(invitation.inviter, None, address, contact=True)
        await self._run(partial(store.drop_invitation, invitation_id))
        self._invitations.pop(invitation_id, None)
        await self._inbox.apply_pending()
        return group.group_id

    async def refuse_invitation(self, invitation_id: int) -> None:
        """Drop a waiting invitation and every envelope of its group that waited with it.

        :raises LocalProtocolError: if no such invitation waits."""
        invitation = self._pending_invitation(invitation_id)
        await self._forget_invitation(invitation)
        self._counters.bump("invitation_refused")

    def _pending_invitation(self, invitation_id: int) -> Invitation:
        invitation = self._invitations.get(invitation_id)
        if invitation is None:
            raise LocalProtocolError(f"no invitation {invitation_id} is waiting")
        return invitation

    async def _forget_invitation(self, invitation: Invitation) -> None:
        store = self.store
        await self._run(partial(store.drop_invitation, invitation.id))
        self._invitations.pop(invitation.id, None)
        await self._inbox.drop_group(invitation.group_id)

    # --- counters ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Refusals by kind since the node started (``node.app.limits.REFUSALS``)."""
        return self._counters.snapshot()

    async def _save_counters(self) -> None:
        """Add the counts not saved yet to the store's totals (``doctor`` shows them)."""
        if not self._counters.dirty:
            return
        taken, store = self._counters.take_unsaved(), self.store
        try:
            await self._run(lambda: store.add_counts(taken))
        except StorageError as exc:
            self._counters.unsave(taken)
            log.info("%s cannot save its counters now: %s", self.name, exc)

    async def _save_counters_now_and_then(self) -> None:
        # Saved in batches: one write per refusal would let a flood spend the disk.
        while True:
            await asyncio.sleep(COUNTERS_SAVE_INTERVAL)  # a period, not a wait for a condition
            await self._save_counters()

    def _group_changed(self, group_id: bytes) -> None:
        if self.on_group_changed is not None:
            self.on_group_changed(group_id)

    def _chat_message(self, message: StoredMessage) -> ChatMessage:
        return ChatMessage(
            group_id=message.group_id,
            sender=message.sender,
            sender_name=self.contacts.name(message.sender),
            text=message.text,
            path=Path(message.path),
            envelope_id=message.envelope_id,
            time_ms=message.time_ms,
            row=message.row,
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
        self._relay_behind_since = None
        return total

    async def _pull_relay(self, wait_seconds: float) -> int:
        """One fetch (or long poll, if ``wait_seconds``) → store → acknowledge round."""
        mailbox = self.identity.mailbox
        store = self.store
        cursor = await self._run(lambda: store.get_int("relay_cursor"))
        rescan = self._relay_rescan_at
        start = cursor
        if rescan is not None and self.runtime.monotonic() >= rescan:
            # Envelopes left there for now, behind the cursor: from the start, once.
            self._relay_rescan_at = None
            start, wait_seconds = 0, 0
        elif rescan is not None:
            # The long poll ends in time for that.
            wait_seconds = min(wait_seconds, rescan - self.runtime.monotonic())
        request: wire.Request
        if wait_seconds > 0:
            request = wire.Wait(mailbox, start, FETCH_BATCH, int(wait_seconds * 1000))
        else:
            request = wire.Fetch(mailbox, start, FETCH_BATCH)
        response = await self.router.call_relay(request, deadline=wait_seconds + 10)
        if not isinstance(response, wire.FetchResult):
            raise RelayError("the relay answered fetch with something else")
        if response.key_packages_low:
            self.directory.pool_runs_low()
        if not response.envelopes:
            return 0
        notices = [e for e in response.envelopes if e.kind is wire.EnvelopeKind.DELIVERY_FAILED]
        if notices:
            await self._relay_failed(notices)
        rest = tuple(
            e for e in response.envelopes if e.kind is not wire.EnvelopeKind.DELIVERY_FAILED
        )
        accepted = await self._accept(rest, Path.RELAY, b"")
        # Acknowledge only once stored: a crash in between means a re-fetch, and the duplicate
        # is dropped by id. What is refused for good goes too (it would only fill the
        # mailbox); what a full bound refused stays there, and is fetched again from the
        # start of the mailbox a while later (the cursor moves past it: a refusal that
        # lasts must not turn the long poll into a busy loop).
        gone = [*(n.id for n in notices), *accepted.ids, *accepted.never]
        if gone:
            await self.router.call_relay(wire.Ack(mailbox, tuple(gone)))
        if accepted.later and self._relay_rescan_at is None:
            log.info(
                "%s left %d envelopes at the relay for now (a bound is full)",
                self.name,
                len(accepted.later),
            )
            self._relay_rescan_at = self.runtime.monotonic() + self.limits.relay_rescan_delay_s
        if response.cursor > cursor:
            await self._run(lambda: store.set_int("relay_cursor", response.cursor))
        return len(response.envelopes)

    async def _relay_failed(self, notices: list[wire.Envelope]) -> None:
        """Mark failed the deliveries the relay's notices name (``relay.failure_notices``);
        a notice that does not decode is counted and dropped."""
        undelivered: list[tuple[bytes, bytes]] = []
        for notice in notices:
            try:
                failure = wire.decode_delivery_failure(notice.payload)
            except RemoteProtocolError as exc:
                self._counters.bump("failure_notice_malformed")
                log.warning(
                    "%s dropped a malformed failure notice from its relay: %s", self.name, exc
                )
                continue
            undelivered.extend((gone.id, gone.recipient) for gone in failure.envelopes)
        if not undelivered:
            return
        store = self.store
        failed = await self._run(lambda: store.fail_relayed(undelivered, RELAY_EXPIRED_REASON))
        if failed:
            log.info("%s: the relay dropped %d deliveries unfetched", self.name, len(failed))
            if self.on_relay_failed is not None:
                self.on_relay_failed(failed)

    async def _watch_relay(self) -> None:
        """Collect the relay mailbox, then keep a long poll open there while the node runs;
        back off when the relay cannot be reached. Ends for good if the relay is not the one
        configured."""
        relay = self.router.relay
        assert relay is not None
        backoff = RELAY_RETRY_MIN
        reconnected = False
        while True:
            try:
                # Dialed first, on its own: a wrong key must not pass for an unreachable relay.
                await self.endpoint.dial(relay.address, relay.identity, RELAY_DIAL_DEADLINE)
                self._set_relay_state("reachable")
                if reconnected:
                    # Mail may have waited there meanwhile: collect it all before taking
                    # direct deliveries that could overtake it (at most the length of a sync).
                    self._relay_behind()
                if reconnected or not self.relay_synced.is_set():
                    await self.sync_relay()
                    self.relay_synced.set()
                    reconnected = False
                await self._pull_relay(wait_seconds=RELAY_LONG_POLL)
                self._relay_behind_since = None
                backoff = RELAY_RETRY_MIN
            except PeerIdentityError as exc:
                self.endpoint.drop(relay.address, relay.identity)
                # Reported by whoever runs the node (wait_fatal), as one line.
                log.info("the relay is not the one configured: %s", exc)
                self._fail(
                    RelayIdentityError(
                        f"the relay at {format_address(relay.address)} did not present the "
                        f"identity key given (--relay-key {relay.identity.hex()[:16]}...): "
                        "another server answers there, or someone is in between"
                    )
                )
                return
            except NodeError as exc:
                # Before the first collection since start, a backlog may wait there: the hold
                # stays (up to RELAY_CATCH_UP_HOLD). Once caught up, direct delivery goes on
                # while the relay is away (the web UI shows "relay unreachable", chat goes on),
                # and whatever reached it meanwhile is collected first on reconnecting.
                if self.relay_synced.is_set():
                    self._relay_behind_since = None
                    reconnected = True
                # Said once at start; each retry after that is an info-level detail.
                level = (
                    logging.WARNING
                    if backoff == RELAY_RETRY_MIN and not self.relay_synced.is_set()
                    else logging.INFO
                )
                log.log(level, "relay unreachable (retrying in %.0f s): %s", backoff, exc)
                self._set_relay_state("unreachable")
                await asyncio.sleep(backoff)  # a retry delay, not a wait for a condition
                backoff = min(backoff * 2, RELAY_RETRY_MAX)

    def _set_relay_state(self, state: str) -> None:
        if state != self.relay_state:
            self.relay_state = state
            for listener in list(self.relay_listeners):
                listener(state)

    def _fail(self, error: NodeError) -> None:
        if self._fatal is None:
            self._fatal = error
            self._fatal_set.set()

    async def wait_fatal(self) -> NodeError:
        """Wait until something happened that must stop the node (a relay presenting another
        identity key); return it. Whoever runs the node stops it."""
        await self._fatal_set.wait()
        assert self._fatal is not None
        return self._fatal

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

    async def resolve_user(self, username: str) -> bytes:
        """The identity key registered at our relay as ``username`` (its latest login there).

        :raises node.app.directory.UnknownUserError: no one goes by that name there.
        :raises node.app.directory.DirectoryError: no relay, or it cannot be asked now."""
        return await self.directory.resolve_user(username)

    async def username_of(self, identity: bytes) -> str | None:
        """The username ``identity`` last logged in as at our relay, or None."""
        return await self.directory.username_of(identity)

    async def _fetch_key_packages(self, peer: bytes) -> dict[int, bytes]:
        """The peer's KeyPackages by suite, each checked: a valid signature, a lifetime that
        covers now, and the peer's own identity. One naming anyone else refuses the whole
        answer; one of a suite the binding lacks is skipped. Asked of the peer itself; if it
        cannot be reached, of the relay that holds its mailbox (the one it named, else ours),
        so that an offline peer can be invited: its Welcome waits in that mailbox."""
        name = self.contacts.name(peer)
        try:
            response = await self.router.call_peer(peer, wire.FetchKeyPackage(peer))
        except RemoteError:
            raise  # reached, and it refused: the relay would not know better
        except NodeError as direct:
            relay = self.router.peer_relays.get(peer, self.router.relay)
            if relay is None:
                raise
            log.info("%s is unreachable (%s); asking the relay for its KeyPackage", name, direct)
            try:
                response = await self.directory.fetch_key_packages(relay, peer)
            except DirectoryError as exc:
                raise type(exc)(f"{name} is unreachable, and {exc}") from exc
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

    async def send_text(
        self,
        group_id: bytes,
        text: str,
        *,
        keep: Callable[[dict[bytes, bytes]], None] | None = None,
        on_queued: Callable[[dict[bytes, bytes]], None] | None = None,
    ) -> SendReport:
        """Encrypt ``text`` to the group and send it to every other member. ``keep`` runs on
        the executor's thread inside the transaction that queues the envelopes (to record the
        message with them), ``on_queued`` on the event loop once they are queued, before the
        first attempt; both get {recipient: envelope id}, so delivery reports that follow
        (``outbox.on_attempt``) can be matched to the message."""
        plaintext = encode_text(text)
        if len(plaintext) > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"a message is at most {MAX_MESSAGE_BYTES // 1024} KiB "
                f"({len(plaintext) // 1024} KiB given)"
            )
        return await self._send_plaintext(group_id, plaintext, keep, on_queued)

    async def send_info(self, group_id: bytes, kind: ConversationKind, name: str) -> SendReport:
        """Tell the members what this conversation is (a DM, or a group and its name), and
        what this node calls itself."""
        return await self._send_plaintext(group_id, encode_info(kind, name, self.name), None, None)

    async def _send_plaintext(
        self,
        group_id: bytes,
        plaintext: bytes,
        keep: Callable[[dict[bytes, bytes]], None] | None,
        on_queued: Callable[[dict[bytes, bytes]], None] | None,
    ) -> SendReport:
        group = self.groups.get(group_id)
        if group is None:
            raise LocalProtocolError("this node is not a member of that group")
        me = self.public_key
        kind = wire.EnvelopeKind.APPLICATION

        def make() -> list[tuple[bytes, wire.Envelope]]:
            # On the executor's thread, in the call that queues the result: the members are
            # those of the epoch the message is sent in, and the MLS state's mark commits with
            # the outbox rows (ADR 0004).
            ciphertext = group.encrypt(plaintext)
            others = [m for m in group.members() if m != me]
            return [self._envelope(m, kind, ciphertext, group_id) for m in others]

        return await self.outbox.send_made(make, keep=keep, on_queued=on_queued)

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


def _nothing() -> None:
    pass


def _take_both(
    own: TokenBuckets, everyone: TokenBuckets, caller: Caller, now: float, n: int
) -> bool:
    """Spend from a stranger's own bucket and from all strangers' one, or from neither."""
    if own.available(caller.identity, now) < n or everyone.available(b"", now) < n:
        return False
    return own.take(caller.identity, now, n) and everyone.take(b"", now, n)
