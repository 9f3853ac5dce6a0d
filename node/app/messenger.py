"""The application layer every front end uses: conversations, messages, contacts, events.

The REPL (``quicnprotochat chat``), the one-shot commands and the web UI are views of one
:class:`Messenger`; none of them reaches past it into the router or MLS (DESIGN.md §11).

Everything it keeps lives in the node's encrypted store. What changes is published on its
:class:`~node.app.events.EventBus`, in the order it happened: the node's callbacks only queue
work, and one task does that work in order, so a message is never announced before the
conversation it belongs to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from node.app.contact_book import ContactBook, ContactError
from node.app.conversations import Conversation, ConversationKind, from_stored, to_stored
from node.app.events import (
    ConversationChanged,
    DeliveryChanged,
    EventBus,
    InvitationReceived,
    Joined,
    MembersChanged,
    MessageAdded,
    PeerKeyChanged,
    Subscription,
)
from node.app.invitations import Invitation, PendingInvitation
from node.app.messages import Delivery, DeliveryState, Direction, Message
from node.app.node import ChatMessage, Node
from node.app.outbox import SendReport
from node.app.peer_ref import PeerRefError, parse_peer_ref
from node.app.router import Path, RelayInfo
from node.app.store import StoredDelivery, StoredMessage
from node.core import suites
from node.core.addresses import Address
from node.core.chat_payload import ConversationInfo
from node.core.errors import LocalProtocolError, NodeError

__all__ = ["ConversationError", "Messenger"]

log = logging.getLogger(__name__)

HISTORY_PAGE = 50
MAX_HISTORY_PAGE = 500
MAX_GROUP_NAME_CHARS = 64
NOTEPAD_NAME = "notepad"
CONV_ID_BYTES = 4


class ConversationError(LocalProtocolError):
    """A conversation that does not exist, is ambiguous, or cannot do what was asked."""


class Messenger:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.events = EventBus()
        self.contacts = ContactBook(
            node.public_key, node.contacts, node.store, node.run, self._key_changed
        )
        self._convs: dict[str, Conversation] = {}
        self._by_group: dict[bytes, str] = {}
        self._members: dict[bytes, frozenset[bytes]] = {}
        self._tracked: set[bytes] = set()  # envelope ids of sent messages still queued
        self._work: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Joined notices held until the inviter's info message (it follows the Welcome) says
        # what the conversation is and who they are.
        self._pending_joins: dict[bytes, tuple[str, bytes]] = {}
        # Why groups made here use their ciphersuite (e.g. "0x0001: bob offers no X-Wing").
        self.suite_notes: dict[bytes, str] = {}

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Load what the store holds and follow the node; call before the node starts."""
        node, store = self.node, self.node.store
        await node.resume()
        await self.contacts.load()
        for stored in await node.run(store.conversations):
            conv = from_stored(stored)
            self._convs[conv.id] = conv
            if conv.group_id is not None:
                self._by_group[conv.group_id] = conv.id
        self._tracked = set(await node.run(store.queued_deliveries))
        if not any(c.kind is ConversationKind.NOTEPAD for c in self._convs.values()):
            await self._add_conversation(ConversationKind.NOTEPAD, NOTEPAD_NAME, None, None)
        node.on_message = lambda message: self._queue(lambda: self._received(message))
        node.on_group_changed = lambda group_id: self._queue(lambda: self._group_changed(group_id))
        node.on_info = lambda group_id, sender, info: self._queue(
            lambda: self._info(group_id, sender, info)
        )
        node.outbox.on_attempt = self._attempted
        node.outbox.on_gave_up = self._gave_up
        node.on_relay_failed = lambda failed: self._queue(lambda: self._relay_failed(failed))
        node.on_invitation = lambda invitation: self.events.publish(
            InvitationReceived(self._pending(invitation))
        )
        self._worker = node.runtime.spawn(self._work_loop())
        # Groups the node holds but no conversation names (joined while nothing listened).
        for group_id in list(node.groups):
            if group_id not in self._by_group:
                await self._group_changed(group_id)
            else:
                self._members[group_id] = frozenset(await self._members_of(group_id))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self.events.close()

    def subscribe(self) -> Subscription:
        return self.events.subscribe()

    async def settled(self) -> None:
        """Wait until everything the node reported so far is stored and published."""
        await self._idle.wait()

    def _queue(self, work: Callable[[], Awaitable[None]]) -> None:
        self._idle.clear()
        self._work.put_nowait(work)

    async def _work_loop(self) -> None:
        while True:
            work = await self._work.get()
            try:
                await work()
            except NodeError as exc:
                log.warning("could not record what happened: %s", exc)
            if self._work.empty():
                self._idle.set()

    # --- conversations ----------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """Active conversations, the notepad first, then the oldest first."""
        convs = [c for c in self._convs.values() if c.active]
        return sorted(
            convs, key=lambda c: (c.kind is not ConversationKind.NOTEPAD, c.created_ms, c.id)
        )

    async def with_unread(self) -> list[Conversation]:
        """Active conversations with their unread counts."""
        store = self.node.store
        counts = await self.node.run(store.unread_counts)
        out = []
        for conv in self.conversations():
            unread = counts.get(conv.group_id, (0, 0))[0] if conv.group_id else 0
            out.append(conv.with_unread(unread))
        return out

    def conversation(self, conv_id: str) -> Conversation:
        conv = self._convs.get(conv_id)
        if conv is None or not conv.active:
            raise ConversationError(f"no conversation {conv_id!r}")
        return conv

    def title(self, conv: Conversation) -> str:
        """What to call a conversation: a DM by its peer's name, a group by its own."""
        if conv.kind is ConversationKind.DIRECT and conv.peer is not None:
            return self.contacts.name(conv.peer)
        return conv.name

    def find(self, text: str) -> Conversation:
        """A conversation by id, name or DM peer name (case-insensitive); ambiguity is an
        error naming the candidates."""
        wanted = text.strip().lstrip("#").casefold()
        convs = self.conversations()
        for conv in convs:
            if conv.id == wanted:
                return conv
        exact = [c for c in convs if self.title(c).casefold() == wanted]
        found = exact or [c for c in convs if self.title(c).casefold().startswith(wanted)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ConversationError(f"no conversation called {text!r}")
        names = ", ".join(f"{self.title(c)} ({c.id})" for c in found)
        raise ConversationError(f"{text!r} could be any of: {names}")

    def newest_group(self) -> Conversation | None:
        """The conversation of the group this node made or joined last (None before any)."""
        for group_id in reversed(self.node.groups):
            conv_id = self._by_group.get(group_id)
            if conv_id is not None:
                return self._convs[conv_id]
        return None

    def notepad(self) -> Conversation:
        return next(c for c in self._convs.values() if c.kind is ConversationKind.NOTEPAD)

    async def direct(self, peer: bytes) -> Conversation:
        """The DM with ``peer``: the existing one, or a new two-member group. A DM whose peer
        could not be added before (unreachable then) is offered to them again."""
        if peer == self.node.public_key:
            return self.notepad()
        for conv in self.conversations():
            if conv.kind is ConversationKind.DIRECT and conv.peer == peer:
                assert conv.group_id is not None
                if peer not in self._member_set(conv.group_id):
                    await self._invite(conv, [peer])
                return conv
        return await self._new_group(ConversationKind.DIRECT, "", [peer])

    async def create_group(self, name: str, members: list[bytes] | None = None) -> Conversation:
        """A named group with this node as its committer, and ``members`` invited. The same
        people already in an active group under the same name: that group is returned."""
        name = _group_name(name)
        wanted = frozenset([self.node.public_key, *(members or [])])
        for conv in self.conversations():
            if (
                conv.kind is ConversationKind.GROUP
                and conv.name == name
                and conv.group_id is not None
                and self._member_set(conv.group_id) == wanted
            ):
                return conv
        if not members:
            group_id = await self.node.create_group()
            return await self._add_conversation(ConversationKind.GROUP, name, group_id, None)
        return await self._new_group(ConversationKind.GROUP, name, members)

    async def _new_group(
        self, kind: ConversationKind, name: str, peers: list[bytes]
    ) -> Conversation:
        """A group made for its first members: their KeyPackages decide its ciphersuite
        (X-Wing when all offer it), and nothing is made if one of them cannot be reached."""
        made = await self.node.create_group_with(peers)
        peer = peers[0] if kind is ConversationKind.DIRECT else None
        conv = await self._add_conversation(kind, name, made.group_id, peer)
        self.suite_notes[made.group_id] = made.choice.describe(
            {p: self.contacts.name(p) for p in peers}
        )
        await self._refresh_members(made.group_id)
        await self.node.send_info(made.group_id, kind, name)
        return conv

    async def invite(self, conv_id: str, peers: list[bytes]) -> SendReport:
        conv = self._group_conversation(conv_id)
        if conv.kind is ConversationKind.DIRECT:
            raise ConversationError("a DM has two members: make a /group to add more")
        return await self._invite(conv, peers)

    async def _invite(self, conv: Conversation, peers: list[bytes]) -> SendReport:
        assert conv.group_id is not None
        report = await self.node.invite(conv.group_id, peers)
        await self._refresh_members(conv.group_id)
        # Newcomers learn what the conversation is called from the members, end to end.
        await self.node.send_info(conv.group_id, conv.kind, conv.name)
        return report

    async def remove(self, conv_id: str, peer: bytes) -> SendReport:
        conv = self._group_conversation(conv_id)
        assert conv.group_id is not None
        if peer not in self._member_set(conv.group_id):
            raise ConversationError(f"{self.contacts.name(peer)} is not a member")
        report = await self.node.remove(conv.group_id, [peer])
        await self._refresh_members(conv.group_id)
        return report

    async def leave(self, conv_id: str) -> None:
        """Stop showing a conversation and asking for its messages. A member that is not the
        group's committer also asks the committer to remove it."""
        conv = self.conversation(conv_id)
        if conv.kind is ConversationKind.NOTEPAD:
            raise ConversationError("the notepad cannot be left")
        if conv.group_id is not None and not self.node.membership.is_committer(conv.group_id):
            try:
                await self.node.remove(conv.group_id, [self.node.public_key])
            except NodeError as exc:
                log.info("could not ask to be removed: %s", exc)
        await self._save(replace(conv, active=False))

    def members(self, conv_id: str) -> list[bytes]:
        conv = self.conversation(conv_id)
        if conv.kind is ConversationKind.NOTEPAD or conv.group_id is None:
            return [self.node.public_key]
        return sorted(self._member_set(conv.group_id))

    def _member_set(self, group_id: bytes) -> frozenset[bytes]:
        # An in-memory read of the group's tree (no state is written): safe on the loop.
        group = self.node.groups.get(group_id)
        return frozenset(group.members()) if group is not None else frozenset()

    def ciphersuite(self, conv_id: str) -> str:
        """Which MLS ciphersuite a conversation uses, and why, when this node chose it."""
        conv = self.conversation(conv_id)
        group = self.node.groups.get(conv.group_id) if conv.group_id else None
        if group is None:
            return "none (kept on this machine only)"
        note = self.suite_notes.get(group.group_id)
        return note if note is not None else suites.suite_name(group.ciphersuite)

    def committer(self, conv_id: str) -> bytes | None:
        conv = self.conversation(conv_id)
        group = self.node.groups.get(conv.group_id) if conv.group_id else None
        return group.committer if group is not None else None

    async def mark_read(self, conv_id: str) -> None:
        conv = self.conversation(conv_id)
        if conv.group_id is None:
            return
        store = self.node.store
        newest = (await self.node.run(store.unread_counts)).get(conv.group_id, (0, 0))[1]
        if newest > conv.read_upto:
            await self._save(replace(conv, read_upto=newest))

    def _group_conversation(self, conv_id: str) -> Conversation:
        conv = self.conversation(conv_id)
        if conv.kind is ConversationKind.NOTEPAD or conv.group_id is None:
            raise ConversationError("the notepad has no other members")
        return conv

    async def _add_conversation(
        self,
        kind: ConversationKind,
        name: str,
        group_id: bytes | None,
        peer: bytes | None,
    ) -> Conversation:
        while True:
            conv_id = self.node.runtime.random_bytes(CONV_ID_BYTES).hex()
            if conv_id not in self._convs:
                break
        # The notepad needs a key for its messages in the log; it is never an MLS group.
        conv = Conversation(
            id=conv_id,
            kind=kind,
            name=name,
            group_id=group_id if group_id is not None else self.node.runtime.random_bytes(16),
            peer=peer,
            created_ms=self.node.clock_ms(),
        )
        await self._save(conv)
        if group_id is not None:
            self._members[group_id] = frozenset(await self._members_of(group_id))
        return conv

    async def _save(self, conv: Conversation) -> None:
        store = self.node.store
        await self.node.run(lambda: store.save_conversation(to_stored(conv)))
        self._convs[conv.id] = conv
        if conv.group_id is not None:
            self._by_group[conv.group_id] = conv.id
        self.events.publish(ConversationChanged(conv))

    # --- messages ---------------------------------------------------------------------------

    async def send(self, conv_id: str, text: str) -> Message:
        """Keep the message, then send it to every other member; delivery state follows as
        events. The notepad keeps it and sends nothing."""
        conv = self.conversation(conv_id)
        node = self.node
        if not text.strip():
            raise ConversationError("an empty message is not sent")
        assert conv.group_id is not None
        message_id = node.runtime.random_bytes(16)
        stored = StoredMessage(
            envelope_id=message_id,
            group_id=conv.group_id,
            sender=node.public_key,
            text=text,
            path="local",
            time_ms=node.clock_ms(),
            direction="out",
        )
        store = node.store
        if conv.kind is ConversationKind.NOTEPAD:
            row = await node.run(lambda: store.save_outgoing(stored))
            message = self._message(conv, replace(stored, row=row), [])
            self.events.publish(MessageAdded(conv.id, message))
            return message

        deliveries: list[StoredDelivery] = []

        def keep(envelopes: dict[bytes, bytes]) -> None:
            # On the executor, in the transaction that queues the envelopes: the message, its
            # deliveries and the outbox rows are kept together or not at all.
            nonlocal stored
            stored = replace(stored, row=store.save_outgoing(stored))
            deliveries.extend(
                StoredDelivery(env_id, message_id, recipient, "queued", "")
                for recipient, env_id in envelopes.items()
            )
            store.save_deliveries(deliveries)

        def queued(envelopes: dict[bytes, bytes]) -> None:
            self._tracked.update(envelopes.values())
            self.events.publish(MessageAdded(conv.id, self._message(conv, stored, deliveries)))

        await node.send_text(conv.group_id, text, keep=keep, on_queued=queued)
        await self.settled()
        latest = await node.run(lambda: store.deliveries_of([message_id]))
        return self._message(conv, stored, latest)

    async def history(
        self, conv_id: str, limit: int = HISTORY_PAGE, before_row: int | None = None
    ) -> list[Message]:
        """A page of a conversation's messages, oldest first, ending before ``before_row``."""
        conv = self.conversation(conv_id)
        assert conv.group_id is not None
        limit = max(1, min(limit, MAX_HISTORY_PAGE))
        group_id, store = conv.group_id, self.node.store
        rows = await self.node.run(lambda: store.message_page(group_id, limit, before_row))
        outgoing = [m.envelope_id for m in rows if m.direction == "out"]
        deliveries = await self.node.run(lambda: store.deliveries_of(outgoing))
        by_message: dict[bytes, list[StoredDelivery]] = {}
        for d in deliveries:
            by_message.setdefault(d.message_id, []).append(d)
        return [self._message(conv, m, by_message.get(m.envelope_id, [])) for m in rows]

    def _message(
        self, conv: Conversation, stored: StoredMessage, deliveries: list[StoredDelivery]
    ) -> Message:
        return Message(
            id=stored.envelope_id,
            conversation=conv.id,
            sender=stored.sender,
            sender_name=self.contacts.name(stored.sender),
            time_ms=stored.time_ms,
            direction=Direction(stored.direction),
            text=stored.text,
            path=stored.path,
            deliveries=tuple(
                Delivery(
                    d.recipient, self.contacts.name(d.recipient), DeliveryState(d.state), d.reason
                )
                for d in deliveries
            ),
            row=stored.row,
        )

    # --- what the node tells us -------------------------------------------------------------

    async def _received(self, chat: ChatMessage) -> None:
        conv_id = self._by_group.get(chat.group_id)
        if conv_id is None:
            await self._group_changed(chat.group_id)
            conv_id = self._by_group.get(chat.group_id)
            if conv_id is None:
                return
        self._announce_join(chat.group_id)
        conv = self._convs[conv_id]
        stored = StoredMessage(
            envelope_id=chat.envelope_id,
            group_id=chat.group_id,
            sender=chat.sender,
            text=chat.text,
            path=chat.path.value,
            time_ms=chat.time_ms,
            row=chat.row,
        )
        if conv.active:
            self.events.publish(MessageAdded(conv.id, self._message(conv, stored, [])))

    async def _group_changed(self, group_id: bytes) -> None:
        group = self.node.groups.get(group_id)
        if group is None:
            return
        members = await self._members_of(group_id)
        conv_id = self._by_group.get(group_id)
        if conv_id is None:
            inviter = group.committer
            kind = ConversationKind.DIRECT if len(members) == 2 else ConversationKind.GROUP
            peer = inviter if kind is ConversationKind.DIRECT else None
            name = "" if peer is not None else f"{self.contacts.name(inviter)}'s group"
            conv = await self._add_conversation(kind, name, group_id, peer)
            # Announced when the committer's info says what the conversation is (a group of
            # two is no DM) and who they are, or at its first message.
            self._pending_joins[group_id] = (conv.id, inviter)
            # The members learn what this node calls itself.
            self.node.spawn(self.node.send_info(group_id, kind, conv.name))
            return
        await self._refresh_members(group_id, members)

    def _announce_join(self, group_id: bytes) -> None:
        pending = self._pending_joins.pop(group_id, None)
        if pending is None:
            return
        conv_id, inviter = pending
        conv = self._convs[conv_id]
        self.events.publish(Joined(conv, inviter, self.contacts.name(inviter)))

    async def _refresh_members(self, group_id: bytes, members: list[bytes] | None = None) -> None:
        now = frozenset(members if members is not None else await self._members_of(group_id))
        before = self._members.get(group_id, frozenset())
        self._members[group_id] = now
        conv_id = self._by_group.get(group_id)
        if conv_id is not None and now != before:
            added, removed = tuple(sorted(now - before)), tuple(sorted(before - now))
            self.events.publish(MembersChanged(conv_id, added, removed))
            me = self.node.public_key
            if (
                before
                and any(a != me for a in added)
                and not self.node.membership.is_committer(group_id)
            ):
                # Newcomers learn what the members already there call themselves (the
                # committer says it with the group's name when it adds them).
                conv = self._convs[conv_id]
                self.node.spawn(self.node.send_info(group_id, conv.kind, conv.name))

    async def _members_of(self, group_id: bytes) -> list[bytes]:
        group = self.node.groups.get(group_id)
        if group is None:
            return []
        return await self.node.run(group.members)

    async def _info(self, group_id: bytes, sender: bytes, info: ConversationInfo) -> None:
        """A member said what it calls itself and what the conversation is. Any member names
        itself (a claim: a petname wins); only the committer, who made the group (ADR 0003),
        names the group. A DM stays named after its peer."""
        if info.sender_name and sender != self.node.public_key:
            if self.node.contacts.name(sender) != info.sender_name:
                self.contacts.introduce(sender, info.sender_name)
                await self.node.remember_peer(sender, info.sender_name, None)
        conv_id = self._by_group.get(group_id)
        group = self.node.groups.get(group_id)
        if conv_id is None or group is None:
            return
        if sender == group.committer:
            conv = self._convs[conv_id]
            if info.kind is ConversationKind.GROUP and conv.kind is ConversationKind.DIRECT:
                conv = replace(conv, kind=ConversationKind.GROUP, peer=None)
            if conv.kind is ConversationKind.GROUP and info.name and info.name != conv.name:
                conv = replace(conv, name=_group_name(info.name))
            if conv != self._convs[conv_id]:
                await self._save(conv)
            self._announce_join(group_id)

    def _attempted(
        self, envelope_id: bytes, recipient: bytes, path: Path | None, why: str | None
    ) -> None:
        if envelope_id not in self._tracked:
            return
        if path is not None:
            self._tracked.discard(envelope_id)
            state = DeliveryState(path.value)
        else:
            state = DeliveryState.QUEUED
        self._queue(lambda: self._record_attempt(envelope_id, recipient, state, why or ""))

    def _gave_up(self, envelope_id: bytes, recipient: bytes, why: str) -> None:
        if envelope_id not in self._tracked:
            return
        self._tracked.discard(envelope_id)
        # The store marked it failed with the outbox row's removal; this tells the front ends.
        state = DeliveryState.FAILED
        self._queue(lambda: self._record_attempt(envelope_id, recipient, state, why))

    async def _relay_failed(self, failed: list[StoredDelivery]) -> None:
        """The relay dropped these deliveries unfetched; the store marked them failed."""
        for delivery in failed:
            conv = await self._conversation_of_message(delivery.message_id)
            if conv is not None:
                self.events.publish(
                    DeliveryChanged(
                        conv,
                        delivery.message_id,
                        delivery.recipient,
                        DeliveryState.FAILED,
                        delivery.reason,
                    )
                )

    async def _record_attempt(
        self, envelope_id: bytes, recipient: bytes, state: DeliveryState, reason: str
    ) -> None:
        store = self.node.store
        message_id = await self.node.run(
            lambda: store.update_delivery(envelope_id, state.value, reason)
        )
        if message_id is None:
            return
        group_conv = await self._conversation_of_message(message_id)
        if group_conv is not None:
            self.events.publish(DeliveryChanged(group_conv, message_id, recipient, state, reason))

    async def _conversation_of_message(self, message_id: bytes) -> str | None:
        store = self.node.store
        group_id = await self.node.run(lambda: store.message_group(message_id))
        return self._by_group.get(group_id) if group_id is not None else None

    def _key_changed(self, name: str, known: bytes, new: bytes) -> None:
        self.events.publish(PeerKeyChanged(name, known, new))

    # --- invitations from strangers ----------------------------------------------------------

    def invitations(self) -> list[PendingInvitation]:
        """Strangers' invitations waiting for an answer, oldest first."""
        return [self._pending(i) for i in self.node.invitations()]

    def _pending(self, invitation: Invitation) -> PendingInvitation:
        return PendingInvitation(
            id=invitation.id,
            inviter=invitation.inviter,
            inviter_name=self.contacts.name(invitation.inviter),
            members=len(invitation.members),
            received_ms=invitation.received_ms,
        )

    async def accept_invitation(self, invitation_id: int) -> Conversation:
        """Join the group; its inviter becomes a contact. Returns the conversation."""
        group_id = await self.node.accept_invitation(invitation_id)
        await self.settled()
        conv_id = self._by_group.get(group_id)
        if conv_id is None:
            await self._group_changed(group_id)
            conv_id = self._by_group[group_id]
        return self._convs[conv_id]

    async def refuse_invitation(self, invitation_id: int) -> None:
        await self.node.refuse_invitation(invitation_id)

    # --- people -----------------------------------------------------------------------------

    async def resolve_person(self, text: str) -> bytes:
        """A person from a ``qpc://`` link (remembered as a contact, with the relay its owner
        reads and its envelope key), ``@username`` (the relay's directory), a 64-hex-digit key,
        ``NAME=KEY[@HOST:PORT]``, or a contact's name."""
        text = text.strip()
        if not text:
            raise ContactError("name someone: a qpc:// link, a key, @username or a contact's name")
        if text.startswith("@"):
            # A username at the relay's directory: the relay vouches for the binding only,
            # so the person is a contact like any other, to be verified by safety number.
            username = text[1:]
            identity = await self.node.resolve_user(username)
            if identity == self.node.public_key:
                return identity
            await self.add_contact(identity, username, None)
            return identity
        try:
            ref = parse_peer_ref(text, now_ms=self.node.clock_ms(), allow_bare_key=True)
        except PeerRefError:
            ref = None
        if ref is not None:
            claimed = ref.name if ref.link is not None or ref.named else None
            await self.add_contact(ref.identity, claimed, ref.address)
            if ref.relay is not None:
                relay = RelayInfo(ref.relay.address, ref.relay.identity_key)
                self.node.router.peer_relays[ref.identity] = relay
            if ref.envelope_key is not None:
                await self.node.learn_envelope_key(ref.identity, ref.envelope_key)
            return ref.identity
        found = self.contacts.find(text)
        if len(found) == 1:
            return found[0]
        if not found:
            raise ContactError(f"no contact called {text!r}: give their qpc:// link or key")
        names = ", ".join(self.contacts.name(k) for k in found)
        raise ContactError(f"{text!r} could be any of: {names}")

    def member_named(self, conv_id: str, text: str) -> bytes:
        """The one member of a conversation that ``text`` names."""
        members = set(self.members(conv_id))
        wanted = [k for k in self.contacts.find(text) if k in members]
        if len(wanted) != 1:
            raise ContactError(f"no single member called {text!r} (see /members)")
        return wanted[0]

    # --- contacts ---------------------------------------------------------------------------

    async def add_contact(
        self, identity: bytes, name: str | None, address: Address | None = None
    ) -> None:
        """A person the user chose (an invite link, a key): remember them, warning if their
        name already belongs to another key."""
        self.contacts.introduce(identity, name)
        await self.node.remember_peer(identity, name, address)


def _group_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_GROUP_NAME_CHARS:
        raise ConversationError(f"a group name is 1 to {MAX_GROUP_NAME_CHARS} characters")
    return name
