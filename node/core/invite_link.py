"""Invite links: ``qpc://v2/...``, who someone is and how to reach them, signed by them.

A link is what ``quicnprotochat whoami`` prints (and shows as a QR code) and what ``--invite``,
``--peer``, ``/dm`` and ``/invite`` accept. Its text is::

    qpc://v2/<base64url, unpadded, of: packed InviteLink || signature>

``InviteLink`` is the Cap'n Proto struct of ``schemas/invite_link.capnp`` in the packed
encoding; ``signature`` is the last 64 bytes: Ed25519, by the link's own ``identityKey``, over
the version's context (:data:`SIGNATURE_CONTEXT` for v2) followed by the exact packed bytes. The
signature covers the bytes as carried, so no re-encoding is needed to check it, and the context
keeps a link's signature from being replayed as anything else (a peer record signs under another
context) or as a link of the other version.

Version 2 adds the owner's envelope public key (sealed sender, ADR 0008), so that a contact
added from a link is sealed to from the first message, without waiting for its peer record.
Links of version 1 are still read; they carry no envelope key. A v1 link cannot be made out of a
v2 one to strip the key: the version is in the signed context.

What a valid link proves: the holder of the identity key chose this name, these addresses and
this relay, at ``issuedAt``. It does not prove that the name is true (anyone can call themselves
"alice"), that the addresses are still current, or that the person who handed you the link is
the key's owner: that is what the safety number is for (``node.core.safety_number``).

Pure: no clock (``now_ms`` is a parameter), no I/O. Every way a link can be refused is a typed
:class:`InviteLinkError` with a message written for the person who pasted it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

import schemas
from node.core import hybrid_kem
from node.core.addresses import Address
from node.core.errors import CryptoError, NodeError
from node.core.identity import IDENTITY_KEY_SIZE, Identity
from node.core.wire import DECODE_EXCEPTIONS

SCHEME = "qpc://"
VERSION = 2
SIGNATURE_CONTEXTS = {
    1: b"quicnprotochat invite link v1\x00",
    2: b"quicnprotochat invite link v2\x00",
}
SIGNATURE_CONTEXT = SIGNATURE_CONTEXTS[VERSION]
SIGNATURE_SIZE = 64
# Characters: the most a QR code holds in byte mode at error correction M (version 40), which
# the terminal QR drawing uses. An envelope key alone takes ~1,630 of them.
MAX_LINK_LENGTH = 2331
MAX_NAME_LENGTH = 64  # code points, as for names on the LAN
MAX_ADDRESSES = 8
MAX_HOST_LENGTH = 253  # the longest DNS name
MAX_TIME_MS = 2**64 - 1
_NESTING_LIMIT = 8
_VERSION_PATTERN = re.compile(r"v(\d{1,6})")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

__all__ = [
    "InviteLink",
    "InviteLinkError",
    "InviteLinkExpiredError",
    "InviteLinkFormatError",
    "InviteLinkSignatureError",
    "InviteLinkVersionError",
    "LinkRelay",
    "decode_invite_link",
    "encode_invite_link",
    "looks_like_invite_link",
]


class InviteLinkError(NodeError):
    """An invite link was refused; the message says why."""


class InviteLinkFormatError(InviteLinkError):
    """Not an invite link, or one that was cut short or garbled."""


class InviteLinkVersionError(InviteLinkError):
    """An invite link of a version this program does not read."""


class InviteLinkSignatureError(InviteLinkError):
    """The link's signature does not match its identity key: it was altered after signing."""


class InviteLinkExpiredError(InviteLinkError):
    """The link's owner gave it an expiry, and that time has passed."""


def _check_host(host: str) -> None:
    if not 0 < len(host) <= MAX_HOST_LENGTH:
        raise ValueError(f"a host is 1-{MAX_HOST_LENGTH} characters")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise ValueError("a host has no spaces or control characters")


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")


@dataclass(frozen=True)
class LinkRelay:
    """The relay that keeps the link owner's mailbox, and the relay's key to pin."""

    address: Address
    identity_key: bytes

    def __post_init__(self) -> None:
        _check_host(self.address[0])
        _check_port(self.address[1])
        if len(self.identity_key) != IDENTITY_KEY_SIZE:
            raise ValueError(f"a relay identity key is {IDENTITY_KEY_SIZE} bytes")


@dataclass(frozen=True)
class InviteLink:
    """What a link says, once its signature was checked. ``display_name`` is the owner's claim,
    exactly as signed: show it through ``node.core.display.terminal_safe``."""

    identity_key: bytes
    display_name: str
    addresses: tuple[Address, ...] = ()
    relay: LinkRelay | None = None
    issued_at_ms: int = 0
    expires_at_ms: int | None = None  # None: never
    envelope_key: bytes | None = None  # the owner's sealed-sender key; None: not carried (v1)

    def __post_init__(self) -> None:
        if len(self.identity_key) != IDENTITY_KEY_SIZE:
            raise ValueError(f"an identity key is {IDENTITY_KEY_SIZE} bytes")
        if self.envelope_key is not None:
            try:
                hybrid_kem.check_public_key(self.envelope_key)
            except CryptoError as exc:
                raise ValueError(str(exc)) from None
        if not 0 < len(self.display_name) <= MAX_NAME_LENGTH:
            raise ValueError(f"a display name is 1-{MAX_NAME_LENGTH} characters")
        if len(self.addresses) > MAX_ADDRESSES:
            raise ValueError(f"a link lists at most {MAX_ADDRESSES} addresses")
        for host, port in self.addresses:
            _check_host(host)
            _check_port(port)
        if not 0 <= self.issued_at_ms <= MAX_TIME_MS:
            raise ValueError("the issue time is an unsigned 64-bit number of milliseconds")
        if self.expires_at_ms is not None and not 0 < self.expires_at_ms <= MAX_TIME_MS:
            raise ValueError("an expiry is a positive 64-bit number of milliseconds")

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms


def looks_like_invite_link(text: str) -> bool:
    """Whether ``text`` is meant as a link (``qpc://...``); it may still be refused."""
    return text.strip()[: len(SCHEME)].lower() == SCHEME


def encode_invite_link(link: InviteLink, identity: Identity) -> str:
    """The ``qpc://v2/...`` text of ``link``, signed by ``identity`` (which must be its key)."""
    if identity.public_key != link.identity_key:
        raise ValueError("a link is signed by the identity it names")
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = link.identity_key
    msg.displayName = link.display_name
    addresses = msg.init("addresses", len(link.addresses))
    for i, (host, port) in enumerate(link.addresses):
        addresses[i].host = host
        addresses[i].port = port
    relays = msg.init("relays", 0 if link.relay is None else 1)
    if link.relay is not None:
        relays[0].host = link.relay.address[0]
        relays[0].port = link.relay.address[1]
        relays[0].identityKey = link.relay.identity_key
    msg.issuedAt = link.issued_at_ms
    msg.expiresAt = link.expires_at_ms or 0
    msg.envelopeKey = link.envelope_key or b""
    packed = bytes(msg.to_bytes_packed())
    signature = identity.private_key.sign(SIGNATURE_CONTEXT + packed)
    body = base64.urlsafe_b64encode(packed + signature).rstrip(b"=").decode("ascii")
    text = f"{SCHEME}v{VERSION}/{body}"
    if len(text) > MAX_LINK_LENGTH:
        raise ValueError(f"the link would be longer than {MAX_LINK_LENGTH} characters")
    return text


def decode_invite_link(text: str, *, now_ms: int) -> InviteLink:
    """The link ``text`` says, checked: signed by its own key, well formed, not expired. A link
    of version 1 is read too, as one without an envelope key.

    Surrounding white space (and line breaks inside, from a wrapped paste) is ignored.

    :param now_ms: the wall clock (the runtime's ``wall_ms()``), to refuse an expired link.
    :raises InviteLinkError: one subclass per reason (format, version, signature, expiry).
    """
    compact = "".join(text.split())
    if len(compact) > MAX_LINK_LENGTH:
        raise InviteLinkFormatError(f"an invite link is at most {MAX_LINK_LENGTH} characters")
    if compact[: len(SCHEME)].lower() != SCHEME:
        raise InviteLinkFormatError("an invite link starts with qpc://")
    version, slash, body = compact[len(SCHEME) :].partition("/")
    match = _VERSION_PATTERN.fullmatch(version)
    if not slash or match is None:
        raise InviteLinkFormatError(f"an invite link starts with qpc://v{VERSION}/")
    link_version = int(match.group(1))
    if link_version not in SIGNATURE_CONTEXTS:
        raise InviteLinkVersionError(
            f"this is an invite link of version {match.group(1)}; this program reads versions "
            f"1 to {VERSION} (a newer quicnprotochat may read it)"
        )
    context = SIGNATURE_CONTEXTS[link_version]
    if _BASE64URL.fullmatch(body) is None:
        raise InviteLinkFormatError("the invite link is garbled (not base64url)")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InviteLinkFormatError("the invite link is garbled (not base64url)") from None
    if len(raw) <= SIGNATURE_SIZE:
        raise InviteLinkFormatError("the invite link is cut short")
    packed, signature = raw[:-SIGNATURE_SIZE], raw[-SIGNATURE_SIZE:]
    try:
        reader = schemas.invite_link.InviteLink.from_bytes_packed(packed, **_limits(packed))
        identity_key = bytes(reader.identityKey)
    except DECODE_EXCEPTIONS:
        raise InviteLinkFormatError("the invite link is garbled (cannot be decoded)") from None
    if len(identity_key) != IDENTITY_KEY_SIZE:
        raise InviteLinkFormatError("the invite link holds no identity key")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(identity_key).verify(signature, context + packed)
    except (InvalidSignature, ValueError):
        raise InviteLinkSignatureError(
            "the invite link was altered: its signature does not match its identity key"
        ) from None
    try:
        link = _read(reader, identity_key, link_version)
    except DECODE_EXCEPTIONS as exc:  # ValueError among them: a field out of bounds
        raise InviteLinkFormatError(f"the invite link is malformed: {exc}") from None
    if link.expired(now_ms):
        raise InviteLinkExpiredError(
            "the invite link has expired: ask its owner for a new one (quicnprotochat whoami)"
        )
    return link


def _limits(data: bytes) -> dict[str, int]:
    # A packed message expands at most 8-fold plus runs of zero words; the traversal limit
    # bounds what is read, however the packing claims to expand.
    return {"traversal_limit_in_words": max(64, 2 * len(data)), "nesting_limit": _NESTING_LIMIT}


def _read(reader: Any, identity_key: bytes, version: int) -> InviteLink:
    raw_addresses, raw_relays = reader.addresses, reader.relays
    if len(raw_addresses) > MAX_ADDRESSES:
        raise ValueError(f"it lists more than {MAX_ADDRESSES} addresses")
    if len(raw_relays) > 1:
        raise ValueError("it names more than one relay")
    addresses = tuple((str(a.host), int(a.port)) for a in raw_addresses)
    relay = None
    if len(raw_relays) == 1:
        r = raw_relays[0]
        relay = LinkRelay((str(r.host), int(r.port)), bytes(r.identityKey))
    expires = int(reader.expiresAt)
    # Version 1 had no such field: whatever a v1 link holds there was never meant as a key.
    envelope_key = bytes(reader.envelopeKey) if version >= 2 else b""
    return InviteLink(
        identity_key=identity_key,
        display_name=str(reader.displayName),
        addresses=addresses,
        relay=relay,
        issued_at_ms=int(reader.issuedAt),
        expires_at_ms=expires or None,
        envelope_key=envelope_key or None,
    )
