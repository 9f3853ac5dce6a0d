"""The node's exception family. Messages are written for users and never carry secrets."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Error codes as they cross the wire (``schemas/rpc.capnp`` ``Error.Code``)."""

    INTERNAL = 0
    MALFORMED_REQUEST = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_METHOD = 3
    UNAUTHORIZED = 4
    NOT_FOUND = 5
    LIMIT_EXCEEDED = 6
    TIMEOUT = 7
    RATE_LIMITED = 8
    QUOTA_EXCEEDED = 9
    TOO_LARGE = 10
    STORE_FULL = 11
    BUSY = 12
    UNAUTHENTICATED = 13
    CONFLICT = 14
    SEALED_REFUSED = 15


class NodeError(Exception):
    """Base of every error quicnprotochat raises on purpose."""


class ProtocolError(NodeError):
    """Bytes on the wire did not follow the protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (a bug or misuse on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: malformed, oversized or out of place."""


class RemoteError(NodeError):
    """The peer understood the call and answered with an error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.message = message


class PeerUnreachableError(NodeError):
    """The peer did not answer in time, or its connection failed."""


class PeerIdentityError(NodeError):
    """The peer proved a different identity key than the one we dialed."""


class CryptoError(NodeError):
    """A key, signature or ciphertext was wrong or could not be used."""


class StorageError(NodeError):
    """Local state could not be read or written."""


class RelayError(NodeError):
    """The relay refused or failed a call."""


class ProposalRejectedError(RemoteProtocolError):
    """A proposal was refused and dropped: it was not an MLS proposal, not from a member of the
    group, or from an epoch that has passed. The group is unchanged."""


class UnknownGroupError(ProposalRejectedError):
    """A proposal named a group this node does not hold (kept a while first, in case the
    Welcome that makes this node a member is still on its way)."""
