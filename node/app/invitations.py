"""Invitation requests: a stranger's Welcome, kept until the user accepts or refuses it.

A Welcome from an identity that is not a contact is not joined (DESIGN §11): the node opens it
without changing its MLS state (``MlsClient.inspect_welcome``), keeps it encrypted in its
store, and tells the app layer (``Node.on_invitation``). Nothing of that group is shown before
the user accepts; its envelopes wait in the inbox, within the sender's share. Bounds: at most
``max_invitations`` wait, ``max_invitations_per_inviter`` from one inviter, and each expires
``invitation_ttl_ms`` after it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.app.store import StoredInvitation

__all__ = ["Invitation"]


@dataclass(frozen=True)
class Invitation:
    """A group a stranger invited this node to, waiting for the user's answer."""

    id: int
    inviter: bytes
    group_id: bytes
    members: tuple[bytes, ...]  # leaf order, this node included
    received_ms: int

    @classmethod
    def of(cls, stored: StoredInvitation) -> Invitation:
        return cls(stored.id, stored.inviter, stored.group_id, stored.members, stored.received_ms)
