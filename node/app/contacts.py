"""Who the node knows: contacts, and peers merely seen.

A **contact** is an identity the user chose (``--peer``, ``--invite``, an invite link, an
accepted invitation) or a member of a group this node is in. A Welcome from a contact is
joined; anyone else is a stranger, whose Welcome waits for the user (DESIGN §11).

A handshake proves a key and nothing more: a peer that merely called is an address hint, kept
in memory (bounded, the least recently seen forgotten first), never saved and never a contact.
Contacts live in memory; the node saves them to its store when it has one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from node.core.addresses import Address
from node.core.identity import short_fingerprint

MAX_PEERS_SEEN = 1000


@dataclass
class Contact:
    identity: bytes
    name: str
    address: Address | None = None
    # False for an identity saved only as a group member's address.
    chosen: bool = True


class Contacts:
    def __init__(self, max_peers_seen: int = MAX_PEERS_SEEN) -> None:
        self._by_key: dict[bytes, Contact] = {}
        self._seen: OrderedDict[bytes, Address] = OrderedDict()
        self._max_seen = max_peers_seen
        self._group_members: frozenset[bytes] = frozenset()

    def add(
        self,
        identity: bytes,
        name: str | None = None,
        address: Address | None = None,
        *,
        chosen: bool = True,
    ) -> None:
        """Record a contact. ``chosen`` only ever upgrades: a contact the user chose stays one."""
        contact = self._by_key.get(identity)
        if contact is None:
            contact = Contact(identity, name or short_fingerprint(identity), chosen=chosen)
            self._by_key[identity] = contact
            if address is None:
                address = self._seen.get(identity)
            self._seen.pop(identity, None)
        contact.chosen = contact.chosen or chosen
        if name:
            contact.name = name
        if address is not None:
            contact.address = address

    def seen_at(self, identity: bytes, address: Address) -> None:
        """A peer proved its key from this address: one socket per node means it also listens
        there, so it is where to reach it next. It becomes no contact by it."""
        contact = self._by_key.get(identity)
        if contact is not None:
            contact.address = address
            return
        self._seen.pop(identity, None)
        self._seen[identity] = address
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)

    def set_group_members(self, members: frozenset[bytes]) -> None:
        """The identities in the groups this node is in (the node keeps this current)."""
        self._group_members = members

    def is_contact(self, identity: bytes) -> bool:
        """Chosen by the user, or a member of a group this node is in."""
        contact = self._by_key.get(identity)
        return (contact is not None and contact.chosen) or identity in self._group_members

    def is_chosen(self, identity: bytes) -> bool:
        contact = self._by_key.get(identity)
        return contact is not None and contact.chosen

    def get(self, identity: bytes) -> Contact | None:
        return self._by_key.get(identity)

    def address(self, identity: bytes) -> Address | None:
        contact = self._by_key.get(identity)
        if contact is not None and contact.address is not None:
            return contact.address
        return self._seen.get(identity)

    def name(self, identity: bytes) -> str:
        contact = self._by_key.get(identity)
        return contact.name if contact else short_fingerprint(identity)

    def peers_seen(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[Contact]:
        return iter(list(self._by_key.values()))
