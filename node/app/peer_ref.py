"""How people name a peer on the command line and in the REPL: a link, or a key.

Accepted forms (:func:`parse_peer_ref`):

* ``qpc://v2/...`` (or an older ``qpc://v1/...``): an invite link (``node.core.invite_link``);
  the name is the one its owner signed, the addresses, relay and envelope key are the link's.
* ``NAME=qpc://v2/...``: the same link under a name of your own, which wins over the link's.
* ``NAME=KEYHEX`` or ``NAME=KEYHEX@HOST:PORT``: 64 hex digits of the identity key.
* ``KEYHEX`` alone, where a name is not needed (``allow_bare_key``), as for ``verify``.

Pure: the wall clock comes in as ``now_ms`` (to refuse an expired link).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.core.addresses import Address, parse_address
from node.core.identity import IDENTITY_KEY_SIZE, short_fingerprint
from node.core.invite_link import InviteLink, LinkRelay, decode_invite_link, looks_like_invite_link

__all__ = ["PeerRef", "PeerRefError", "parse_identity_key", "parse_peer_ref"]


class PeerRefError(ValueError):
    """Text that names no peer in any accepted form (a usage error: the message says which)."""


@dataclass(frozen=True)
class PeerRef:
    """A peer as a person named it: who (the key), what to call it, where to try first."""

    name: str  # yours (NAME=...), else the link's display name, else a short fingerprint
    identity: bytes
    addresses: tuple[Address, ...] = ()  # best first; empty: discovery finds it
    relay: LinkRelay | None = None
    link: InviteLink | None = None  # the checked link, when one was given
    named: bool = False  # the name is the user's own (NAME=...), not the peer's claim

    @property
    def envelope_key(self) -> bytes | None:
        """The peer's sealed-sender key, when its link carries one (v2 links do)."""
        return None if self.link is None else self.link.envelope_key

    @property
    def address(self) -> Address | None:
        """The first address, for code that remembers one."""
        return self.addresses[0] if self.addresses else None


def parse_identity_key(text: str) -> bytes:
    """64 hex digits of an Ed25519 identity key."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != IDENTITY_KEY_SIZE:
        raise PeerRefError("an identity key is 64 hex digits")
    return key


def parse_peer_ref(text: str, *, now_ms: int, allow_bare_key: bool = False) -> PeerRef:
    """The peer ``text`` names (forms in the module docstring).

    :raises PeerRefError: ``text`` is in none of the forms.
    :raises node.core.invite_link.InviteLinkError: it is a link, and the link is refused
        (altered, expired, another version, garbled).
    """
    text = text.strip()
    if looks_like_invite_link(text):
        return _from_link(None, text, now_ms)
    name, eq, rest = text.partition("=")
    if not eq:
        if allow_bare_key:
            key = parse_identity_key(text)
            return PeerRef(short_fingerprint(key), key)
        raise PeerRefError(f"expected a qpc:// link or NAME=KEYHEX[@HOST:PORT], got {text!r}")
    name = name.strip()
    if not name:
        raise PeerRefError(f"expected NAME=KEYHEX[@HOST:PORT] with a name, got {text!r}")
    if looks_like_invite_link(rest):
        return _from_link(name, rest, now_ms)
    key_text, at, address_text = rest.partition("@")
    key = parse_identity_key(key_text)
    if not at:
        return PeerRef(name, key, named=True)
    try:
        address = parse_address(address_text)
    except ValueError as exc:
        raise PeerRefError(str(exc)) from None
    return PeerRef(name, key, (address,), named=True)


def _from_link(name: str | None, text: str, now_ms: int) -> PeerRef:
    link = decode_invite_link(text, now_ms=now_ms)
    return PeerRef(
        name=name or link.display_name,
        identity=link.identity_key,
        addresses=link.addresses,
        relay=link.relay,
        link=link,
        named=name is not None,
    )
