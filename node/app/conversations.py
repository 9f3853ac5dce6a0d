"""Conversations: a DM (a two-member MLS group), a named group, or the notepad.

The notepad is a DM to yourself: kept locally, never encrypted to anyone, never sent. Every
conversation has a stable local id (never shown to peers) and a name; a DM's name is its peer's
display name, which can change, so it is looked up when shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from node.app.store import StoredConversation
from node.core.chat_payload import ConversationKind

__all__ = ["Conversation", "ConversationKind", "from_stored", "to_stored"]


@dataclass(frozen=True)
class Conversation:
    id: str
    kind: ConversationKind
    name: str
    group_id: bytes | None  # None: the notepad
    peer: bytes | None  # a DM's other member
    created_ms: int
    unread: int = 0
    active: bool = True  # False once left
    read_upto: int = 0

    def with_unread(self, unread: int) -> Conversation:
        return replace(self, unread=unread)


def from_stored(stored: StoredConversation) -> Conversation:
    return Conversation(
        id=stored.conv_id,
        kind=ConversationKind(stored.kind),
        name=stored.name,
        group_id=stored.group_id,
        peer=stored.peer,
        created_ms=stored.created_ms,
        active=stored.state == "active",
        read_upto=stored.read_upto,
    )


def to_stored(conv: Conversation) -> StoredConversation:
    return StoredConversation(
        conv_id=conv.id,
        kind=conv.kind.value,
        name=conv.name,
        group_id=conv.group_id,
        peer=conv.peer,
        created_ms=conv.created_ms,
        read_upto=conv.read_upto,
        state="active" if conv.active else "left",
    )
