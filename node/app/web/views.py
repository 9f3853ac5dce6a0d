"""What the web UI's JSON says: the application layer's objects and events as plain dicts.

Keys are hex, times are milliseconds, and every string a peer chose is passed on as data: the
page puts it in the DOM with ``textContent`` only, so it is shown, never parsed as HTML.
"""

from __future__ import annotations

from typing import Any

from node.app.contact_book import ContactView
from node.app.conversations import Conversation
from node.app.events import (
    ConversationChanged,
    DeliveryChanged,
    Event,
    InvitationReceived,
    Joined,
    MembersChanged,
    MessageAdded,
    Overflow,
    PeerKeyChanged,
)
from node.app.invitations import PendingInvitation
from node.app.messages import Message
from node.app.messenger import Messenger
from node.app.store import SeenPeer
from node.core.identity import fingerprint

__all__ = [
    "contact_json",
    "conversation_json",
    "event_json",
    "invitation_json",
    "message_json",
    "peer_json",
]

Json = dict[str, Any]


def conversation_json(app: Messenger, conv: Conversation) -> Json:
    return {
        "id": conv.id,
        "kind": conv.kind.value,
        "title": app.title(conv),
        "unread": conv.unread,
        "peer": conv.peer.hex() if conv.peer is not None else None,
        "active": conv.active,
    }


def message_json(message: Message) -> Json:
    return {
        "id": message.id.hex(),
        "conversation": message.conversation,
        "sender": message.sender.hex(),
        "sender_name": message.sender_name,
        "time_ms": message.time_ms,
        "direction": message.direction.value,
        "text": message.text,
        "path": message.path,
        "row": message.row,
        "deliveries": [
            {
                "recipient": d.recipient.hex(),
                "name": d.recipient_name,
                "state": d.state.value,
                "reason": d.reason,
            }
            for d in message.deliveries
        ],
    }


def invitation_json(inv: PendingInvitation) -> Json:
    return {
        "id": inv.id,
        "inviter": inv.inviter.hex(),
        "inviter_name": inv.inviter_name,
        "fingerprint": fingerprint(inv.inviter),
        "members": inv.members,
        "received_ms": inv.received_ms,
    }


def contact_json(view: ContactView) -> Json:
    return {
        "key": view.identity.hex(),
        "name": view.name,
        "claimed_name": view.claimed_name,
        "verified": view.verified,
        "fingerprint": view.fingerprint,
    }


def peer_json(peer: SeenPeer) -> Json:
    return {
        "name": peer.name,
        "fingerprint": peer.fingerprint,
        "source": peer.source,
        "status": peer.status,
        "address": f"{peer.host}:{peer.port}",
    }


def event_json(app: Messenger, event: Event) -> Json:
    """One event for the page. ``reset`` tells it to reload what it shows (it fell behind)."""
    match event:
        case MessageAdded(conv_id, message):
            return {"type": "message", "conversation": conv_id, "message": message_json(message)}
        case DeliveryChanged(conv_id, message_id, recipient, state, reason):
            return {
                "type": "delivery",
                "conversation": conv_id,
                "message_id": message_id.hex(),
                "recipient": recipient.hex(),
                "name": app.contacts.name(recipient),
                "state": state.value,
                "reason": reason,
            }
        case Joined(conv, inviter, _):
            return {
                "type": "joined",
                "conversation": conversation_json(app, conv),
                "inviter_name": app.contacts.name(inviter),
            }
        case MembersChanged(conv_id, added, removed):
            return {
                "type": "members",
                "conversation": conv_id,
                "added": [app.contacts.name(k) for k in added],
                "removed": [app.contacts.name(k) for k in removed],
            }
        case ConversationChanged(conv):
            return {"type": "conversation", "conversation": conversation_json(app, conv)}
        case PeerKeyChanged(name, known, new):
            return {
                "type": "warning",
                "text": (
                    f"A different key claims the name {name}: known {fingerprint(known)}, new "
                    f"{fingerprint(new)}. It is not treated as the same person; verify first."
                ),
            }
        case InvitationReceived(invitation):
            return {"type": "invitation", "invitation": invitation_json(invitation)}
        case Overflow():
            return {"type": "reset"}
