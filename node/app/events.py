"""What the application layer tells its front ends, as it happens (no polling).

Each front end subscribes and reads events in order. A subscriber that falls too far behind is
cut off with :class:`Overflow` rather than letting its queue grow without bound: it reloads
what it shows from the application layer and subscribes again, so nothing is lost to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from node.app.conversations import Conversation
from node.app.invitations import PendingInvitation
from node.app.messages import DeliveryState, Message

__all__ = [
    "ConversationChanged",
    "DeliveryChanged",
    "Event",
    "EventBus",
    "InvitationReceived",
    "Joined",
    "MembersChanged",
    "MessageAdded",
    "Overflow",
    "PeerKeyChanged",
    "Subscription",
]

QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class MessageAdded:
    """A message was kept: received, or sent by this node."""

    conversation: str
    message: Message


@dataclass(frozen=True)
class DeliveryChanged:
    conversation: str
    message_id: bytes
    recipient: bytes
    state: DeliveryState
    reason: str


@dataclass(frozen=True)
class Joined:
    """This node joined a conversation someone invited it to."""

    conversation: Conversation
    inviter: bytes
    inviter_name: str


@dataclass(frozen=True)
class MembersChanged:
    conversation: str
    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]


@dataclass(frozen=True)
class ConversationChanged:
    """A conversation was created, renamed, read or left."""

    conversation: Conversation


@dataclass(frozen=True)
class PeerKeyChanged:
    """A name this node knows for one key was claimed by another key. The new key is never
    trusted in the old one's place: it is a different person until the user says otherwise."""

    name: str
    known_key: bytes
    new_key: bytes


@dataclass(frozen=True)
class InvitationReceived:
    """A stranger invited this node to a group: nothing of it is shown until the user
    accepts (``Messenger.accept_invitation``) or refuses it."""

    invitation: PendingInvitation


@dataclass(frozen=True)
class Overflow:
    """This subscriber fell behind and was cut off: reload, then subscribe again."""


Event = (
    MessageAdded
    | DeliveryChanged
    | Joined
    | MembersChanged
    | ConversationChanged
    | PeerKeyChanged
    | InvitationReceived
    | Overflow
)


class Subscription:
    def __init__(self, bus: EventBus, limit: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._limit = limit
        self.closed = False

    def _put(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._limit:
            self._queue.put_nowait(Overflow())
            self._close()
            return
        self._queue.put_nowait(event)

    def _close(self) -> None:
        self.closed = True
        self._bus._forget(self)
        self._queue.put_nowait(None)

    def close(self) -> None:
        if not self.closed:
            self._close()

    async def get(self) -> Event | None:
        """The next event; None once the subscription is closed and drained."""
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self._queue.get()) is not None:
            yield event


class EventBus:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._subscribers: list[Subscription] = []
        self._limit = limit

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._limit)
        self._subscribers.append(sub)
        return sub

    def publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            sub._put(event)

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
