"""What an MLS application message carries: a chat line, or what a conversation is called.

A chat line travels as its UTF-8 bytes, as standard MLS clients send and show text. Anything
else is ``PREFIX`` followed by a packed ``ChatPayload`` (``schemas/chat.capnp``), and so is a
line that itself starts with the prefix. A plaintext with the prefix that does not decode is
refused, never guessed at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import schemas
from node.core.wire import DECODE_EXCEPTIONS

__all__ = [
    "PREFIX",
    "ChatPayloadError",
    "ConversationInfo",
    "ConversationKind",
    "Text",
    "decode_payload",
    "encode_info",
    "encode_text",
]

PREFIX = b"qpc1"
MAX_NAME_CHARS = 64
_NESTING_LIMIT = 4
_ERRORS: tuple[type[BaseException], ...] = (*DECODE_EXCEPTIONS, UnicodeDecodeError)


class ChatPayloadError(ValueError):
    """A plaintext that claims our format and does not decode."""


class ConversationKind(enum.Enum):
    DIRECT = "dm"
    GROUP = "group"
    NOTEPAD = "notepad"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ConversationInfo:
    kind: ConversationKind
    name: str
    sender_name: str = ""


def encode_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    if not raw.startswith(PREFIX):
        return raw
    msg = schemas.chat.ChatPayload.new_message()
    msg.text = text
    packed: bytes = msg.to_bytes_packed()
    return PREFIX + packed


def encode_info(kind: ConversationKind, name: str, sender_name: str) -> bytes:
    if kind is ConversationKind.NOTEPAD:
        raise ValueError("the notepad is never sent")
    msg = schemas.chat.ChatPayload.new_message()
    info = msg.init("info")
    info.kind = "direct" if kind is ConversationKind.DIRECT else "group"
    info.name = name[:MAX_NAME_CHARS]
    info.senderName = sender_name[:MAX_NAME_CHARS]
    packed: bytes = msg.to_bytes_packed()
    return PREFIX + packed


def decode_payload(plaintext: bytes) -> Text | ConversationInfo:
    if not plaintext.startswith(PREFIX):
        return Text(plaintext.decode("utf-8", errors="replace"))
    packed = plaintext[len(PREFIX) :]
    try:
        reader = schemas.chat.ChatPayload.from_bytes_packed(
            packed,
            traversal_limit_in_words=max(64, 2 * len(packed)),
            nesting_limit=_NESTING_LIMIT,
        )
        which = reader.which()
        if which == "text":
            return Text(str(reader.text))
        info = reader.info
        kind = ConversationKind.DIRECT if info.kind == "direct" else ConversationKind.GROUP
        return ConversationInfo(
            kind, str(info.name)[:MAX_NAME_CHARS], str(info.senderName)[:MAX_NAME_CHARS]
        )
    except _ERRORS as exc:
        raise ChatPayloadError("a chat payload claims our format and does not decode") from exc
