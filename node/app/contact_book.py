"""Contacts as the user sees them: the name to show, a petname, whether the key was verified.

Trust on first use: the first key seen under a name is that contact. A different key that
later shows up under a name the user already knows is never taken for the same person: it is
shown as a different contact (its fingerprint beside the name) and reported as
:class:`~node.app.events.PeerKeyChanged`.

Which name is shown, best first: the petname the user gave, then the name the peer chose (from
its invite link, peer record or mDNS), then its fingerprint. Two contacts that would show the
same name are told apart by their fingerprints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.app.contacts import Contacts
from node.app.store import NodeStore
from node.core.identity import fingerprint, short_fingerprint
from node.core.runtime import BlockingRunner
from node.core.safety_number import safety_number

__all__ = ["ContactBook", "ContactError", "ContactView"]

MAX_PETNAME_CHARS = 64


class ContactError(ValueError):
    """A petname that cannot be given (empty, too long, or another contact's)."""


@dataclass(frozen=True)
class ContactView:
    identity: bytes
    name: str  # what to show
    claimed_name: str  # what the peer calls itself
    petname: str | None
    verified: bool
    fingerprint: str


class ContactBook:
    def __init__(
        self,
        own_key: bytes,
        contacts: Contacts,
        store: NodeStore,
        run: BlockingRunner,
        on_key_changed: Callable[[str, bytes, bytes], None],
    ) -> None:
        self._me = own_key
        self._contacts = contacts
        self._store = store
        self._run = run
        self._trust: dict[bytes, tuple[str | None, bool]] = {}
        self._on_key_changed = on_key_changed

    async def load(self) -> None:
        self._trust = await self._run(self._store.trust)

    def claimed_name(self, identity: bytes) -> str:
        return self._contacts.name(identity)

    def _base_name(self, identity: bytes) -> str:
        petname, _ = self._trust.get(identity, (None, False))
        return petname or self._contacts.name(identity)

    def name(self, identity: bytes) -> str:
        """The name to show for ``identity``: unique among the contacts this node knows."""
        if identity == self._me:
            return "you"
        base = self._base_name(identity)
        if identity in self._trust and self._trust[identity][0]:
            return base  # petnames are unique by construction
        for contact in self._contacts:
            if contact.identity != identity and self._base_name(contact.identity) == base:
                return f"{base} ({short_fingerprint(identity)})"
        return base

    def is_verified(self, identity: bytes) -> bool:
        return self._trust.get(identity, (None, False))[1]

    def introduce(self, identity: bytes, claimed: str | None) -> None:
        """A key was presented under ``claimed`` (an invite link, a peer record, mDNS): if the
        user already knows that name for another key, say so loudly."""
        if not claimed or identity == self._me:
            return
        for contact in self._contacts:
            if contact.identity != identity and self._base_name(contact.identity) == claimed:
                self._on_key_changed(claimed, contact.identity, identity)
                return

    async def set_petname(self, identity: bytes, petname: str | None) -> None:
        if petname is not None:
            petname = petname.strip()
            if not petname or len(petname) > MAX_PETNAME_CHARS or not petname.isprintable():
                raise ContactError(f"a petname is 1 to {MAX_PETNAME_CHARS} printable characters")
            for other, (name, _) in self._trust.items():
                if other != identity and name == petname:
                    raise ContactError(f"{petname!r} is already another contact's petname")
        verified = self.is_verified(identity)
        await self._save(identity, petname, verified)

    async def mark_verified(self, identity: bytes, verified: bool = True) -> None:
        petname, _ = self._trust.get(identity, (None, False))
        await self._save(identity, petname, verified)

    async def _save(self, identity: bytes, petname: str | None, verified: bool) -> None:
        store = self._store
        await self._run(lambda: store.save_trust(identity, petname, verified))
        self._trust[identity] = (petname, verified)

    def safety_number(self, identity: bytes) -> str:
        return safety_number(self._me, identity)

    def view(self, identity: bytes) -> ContactView:
        petname, verified = self._trust.get(identity, (None, False))
        return ContactView(
            identity=identity,
            name=self.name(identity),
            claimed_name=self._contacts.name(identity),
            petname=petname,
            verified=verified,
            fingerprint=fingerprint(identity),
        )

    def all(self) -> list[ContactView]:
        return sorted(
            (self.view(c.identity) for c in self._contacts if c.identity != self._me),
            key=lambda v: (v.name.casefold(), v.identity),
        )

    def find(self, text: str) -> list[bytes]:
        """Contacts whose shown name, petname, claimed name or fingerprint start with
        ``text`` (case-insensitive); an exact name match wins outright."""
        wanted = text.casefold().strip()
        if not wanted:
            return []
        exact, prefix = [], []
        for view in self.all():
            names = [view.name, view.claimed_name, view.petname or ""]
            folded = [n.casefold() for n in names if n]
            compact = view.fingerprint.replace(":", "").replace(" ", "").casefold()
            if wanted in folded:
                exact.append(view.identity)
            elif any(n.startswith(wanted) for n in folded) or compact.startswith(
                wanted.replace(":", "").replace(" ", "")
            ):
                prefix.append(view.identity)
        return exact or prefix
