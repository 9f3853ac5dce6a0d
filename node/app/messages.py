"""Messages as the user sees them, their own included, with per-recipient delivery state.

A sent message is ``queued`` for each recipient until a peer (``direct``) or a relay
(``relay``) accepted it; ``failed`` means the node gave up, with the reason. While it is
queued, ``reason`` says why the last attempt did not get through (it is retried).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Delivery", "DeliveryState", "Direction", "Message"]


class DeliveryState(enum.Enum):
    QUEUED = "queued"
    DIRECT = "direct"
    RELAY = "relay"
    FAILED = "failed"


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class Delivery:
    recipient: bytes
    recipient_name: str
    state: DeliveryState
    reason: str = ""


@dataclass(frozen=True)
class Message:
    id: bytes
    conversation: str
    sender: bytes
    sender_name: str
    time_ms: int
    direction: Direction
    text: str
    path: str  # how it reached this node: "direct", "relay", or "local" for its own
    deliveries: tuple[Delivery, ...] = ()
    row: int = 0  # its place in the local log; pages of history are counted in rows
