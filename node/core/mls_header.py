"""The cleartext header of an MLS group message (RFC 9420 §6), read without any keys.

The node must decide some things before MLS has authenticated a message: whether an envelope
that claims to carry a proposal really holds one (a commit must never ride in as a proposal),
and whether a message MLS refused is from an epoch still to come (keep it until the commit that
opens that epoch arrives) or one that has passed (drop it). Group id, epoch and content type sit
in the clear at the front of every PublicMessage and PrivateMessage, so they can be read here.
Nothing read here is trusted: MLS authenticates all of it when the message is processed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MLS10 = 1  # RFC 9420 §6: ProtocolVersion mls10


class WireFormat(enum.IntEnum):
    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2


class ContentType(enum.IntEnum):
    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


# RFC 9420 §6.1 Sender: member and external senders carry a uint32 index, the others nothing.
_SENDER_WITH_INDEX = {1, 2}
_SENDER_WITHOUT_INDEX = {3, 4}


@dataclass(frozen=True)
class MessageHeader:
    group_id: bytes
    epoch: int
    content_type: ContentType


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        end = self._at + n
        if end > len(self._data):
            raise ValueError("truncated")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def varint(self) -> int:
        # RFC 9420 §2.1.2: the top two bits give the length (1, 2 or 4 bytes); 0b11 is invalid.
        first = self.uint(1)
        prefix = first >> 6
        if prefix == 3:
            raise ValueError("invalid variable-length integer")
        length = 1 << prefix
        value = first & 0x3F
        for byte in self.take(length - 1):
            value = (value << 8) | byte
        if prefix and value < (1 << (8 * (length // 2) - 2)):
            raise ValueError("variable-length integer not in its shortest form")
        return value

    def vector(self) -> bytes:
        return self.take(self.varint())


def read_header(message: bytes) -> MessageHeader | None:
    """The header of a PublicMessage or PrivateMessage, or None for anything else
    (a Welcome, a KeyPackage, a GroupInfo, or bytes that are not MLS at all)."""
    reader = _Reader(message)
    try:
        if reader.uint(2) != MLS10:
            return None
        wire_format = reader.uint(2)
        group_id = reader.vector()
        epoch = reader.uint(8)
        if wire_format == WireFormat.PRIVATE_MESSAGE:
            content_type = reader.uint(1)
        elif wire_format == WireFormat.PUBLIC_MESSAGE:
            sender_type = reader.uint(1)
            if sender_type in _SENDER_WITH_INDEX:
                reader.take(4)
            elif sender_type not in _SENDER_WITHOUT_INDEX:
                return None
            reader.vector()  # authenticated_data
            content_type = reader.uint(1)
        else:
            return None
        return MessageHeader(group_id, epoch, ContentType(content_type))
    except ValueError:  # truncated, a bad varint, or an unknown content type
        return None
