"""The one-shot commands (``send``, ``history``, …) as requests on the application layer.

A request is a JSON object ``{"command": NAME, ...arguments}``; the answer is a JSON object,
the same whether the command ran in a node it started itself or in a node already running on
the data directory (reached through its control socket, ``node.app.control_socket``). The
objects are documented in ``docs/scripting.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from node.app.contact_book import ContactError, ContactView
from node.app.conversations import Conversation
from node.app.events import MessageAdded, Overflow
from node.app.messages import Direction, Message
from node.app.messenger import Messenger
from node.core.errors import NodeError

__all__ = [
    "COMMANDS",
    "CommandError",
    "contact_json",
    "conversation_json",
    "execute",
    "follow",
    "message_json",
]

MAX_HISTORY = 500


class CommandError(NodeError):
    """A request that names no command, or gives it wrong arguments."""


def message_json(app: Messenger, message: Message) -> dict[str, Any]:
    conv = app.conversation(message.conversation)
    return {
        "conversation": message.conversation,
        "conversation_name": app.title(conv),
        "id": message.id.hex(),
        "sender": message.sender.hex(),
        "sender_name": message.sender_name,
        "time_ms": message.time_ms,
        "direction": message.direction.value,
        "text": message.text,
        "path": message.path,
        "deliveries": [
            {
                "recipient": d.recipient.hex(),
                "recipient_name": d.recipient_name,
                "state": d.state.value,
                "reason": d.reason,
            }
            for d in message.deliveries
        ],
    }


def conversation_json(app: Messenger, conv: Conversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "kind": conv.kind.value,
        "name": app.title(conv),
        "unread": conv.unread,
        "members": [m.hex() for m in app.members(conv.id)],
    }


def contact_json(view: ContactView) -> dict[str, Any]:
    return {
        "identity": view.identity.hex(),
        "name": view.name,
        "claimed_name": view.claimed_name,
        "petname": view.petname,
        "verified": view.verified,
        "fingerprint": view.fingerprint,
    }


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{request.get('command')}: {key} is missing")
    return value


async def _send(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = app.find(_text(request, "conversation"))
    message = await app.send(conv.id, _text(request, "text"))
    return {"message": message_json(app, message)}


async def _conversations(app: Messenger, _request: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": [conversation_json(app, c) for c in await app.with_unread()]}


async def _history(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = app.find(_text(request, "conversation"))
    count = request.get("count", 20)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_HISTORY:
        raise CommandError(f"history: -n is 1 to {MAX_HISTORY}")
    messages = await app.history(conv.id, limit=count)
    await app.mark_read(conv.id)
    return {"messages": [message_json(app, m) for m in messages]}


async def _recv(app: Messenger, _request: dict[str, Any]) -> dict[str, Any]:
    """Every conversation's unread messages, oldest first; they are then read."""
    out: list[Message] = []
    for conv in await app.with_unread():
        if conv.unread:
            page = await app.history(conv.id, limit=min(conv.unread, MAX_HISTORY))
            out += [m for m in page if m.direction is Direction.IN]
            await app.mark_read(conv.id)
    out.sort(key=lambda m: m.row)
    return {"messages": [message_json(app, m) for m in out]}


async def _create_group(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = await app.create_group(_text(request, "name"))
    return {"conversation": conversation_json(app, conv)}


async def _invite(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = app.find(_text(request, "conversation"))
    peer = await app.resolve_person(_text(request, "peer"))
    report = await app.invite(conv.id, [peer])
    return {"invited": peer.hex(), "not_reached": {k.hex(): v for k, v in report.failed.items()}}


async def _remove(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = app.find(_text(request, "conversation"))
    peer = app.member_named(conv.id, _text(request, "peer"))
    await app.remove(conv.id, peer)
    return {"removed": peer.hex()}


async def _leave(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    conv = app.find(_text(request, "conversation"))
    await app.leave(conv.id)
    return {"left": conv.id}


async def _contacts(app: Messenger, _request: dict[str, Any]) -> dict[str, Any]:
    return {"contacts": [contact_json(v) for v in app.contacts.all()]}


Handler = Callable[[Messenger, dict[str, Any]], Awaitable[dict[str, Any]]]
COMMANDS: dict[str, Handler] = {
    "send": _send,
    "conversations": _conversations,
    "history": _history,
    "recv": _recv,
    "create-group": _create_group,
    "invite": _invite,
    "remove": _remove,
    "leave": _leave,
    "contacts": _contacts,
}


async def execute(app: Messenger, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request; a failure is ``{"ok": false, "error": "..."}``, never an exception."""
    handler = COMMANDS.get(str(request.get("command")))
    if handler is None:
        return {"ok": False, "error": f"no command {request.get('command')!r}"}
    try:
        result = await handler(app, request)
    except (NodeError, ContactError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **result}


async def follow(app: Messenger) -> AsyncIterator[dict[str, Any]]:
    """``recv --follow``: each message received from now on, as it is kept."""
    sub = app.subscribe()
    try:
        async for event in sub:
            if isinstance(event, MessageAdded) and event.message.direction is Direction.IN:
                yield {"ok": True, "message": message_json(app, event.message)}
            elif isinstance(event, Overflow):
                yield {"ok": False, "error": "fell behind: some messages were not followed"}
                return
    finally:
        sub.close()
