"""What the node knows about other identities: a display name and the last address that worked.

In memory; the node saves it to its store when it has one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from node.core.addresses import Address
from node.core.identity import short_fingerprint


@dataclass
class Contact:
    identity: bytes
    name: str
    address: Address | None = None


class Contacts:
    def __init__(self) -> None:
        self._by_key: dict[bytes, Contact] = {}

    def add(self, identity: bytes, name: str | None = None, address: Address | None = None) -> None:
        contact = self._by_key.get(identity)
        if contact is None:
            contact = Contact(identity, name or short_fingerprint(identity))
            self._by_key[identity] = contact
        if name:
            contact.name = name
        if address is not None:
            contact.address = address

    def seen_at(self, identity: bytes, address: Address) -> None:
        """A peer proved its key from this address: one socket per node means it also listens
        there, so it is where to reach it next."""
        self.add(identity, address=address)

    def address(self, identity: bytes) -> Address | None:
        contact = self._by_key.get(identity)
        return contact.address if contact else None

    def name(self, identity: bytes) -> str:
        contact = self._by_key.get(identity)
        return contact.name if contact else short_fingerprint(identity)

    def __iter__(self) -> Iterator[Contact]:
        return iter(list(self._by_key.values()))
