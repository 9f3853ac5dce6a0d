"""Sealed sender: an envelope whose sender and payload only its recipient can read.

A relay that stores a sealed envelope learns the recipient's mailbox and nothing else: the
outer envelope has a fresh id, kind ``sealed``, no group id, and a payload that is a *box*
sealed to the recipient's hybrid envelope key (``node.core.hybrid_kem``)::

    box = 0x01 || kem_ciphertext (1120 B) || ChaCha20-Poly1305(key, nonce 0, content, aad)
    key = HKDF-SHA256(kem shared secret, salt "", info "qpc/1 sealed sender key")
    aad = "qpc/1 sealed sender" || 0x01 || recipient mailbox (32 B)

The nonce can be fixed because every box has its own KEM shared secret, hence its own key.
``content`` is a ``SealedContent`` (``schemas/envelope.capnp``): the sender's identity key,
the inner envelope (its own id, which is what replays are caught by) and the sender's
Ed25519 signature over :func:`signed_bytes` of the inner envelope. The outer id is not bound
into the box: a relay (or anyone) that stores the same box again under another outer id
yields the same inner id, which the recipient has already seen.

Opening raises :class:`SealError` for a box that cannot be opened or whose signature does not
verify; the caller drops such an envelope and counts it (ADR 0008).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import schemas
from node.core import hybrid_kem, wire
from node.core.errors import CryptoError, RemoteProtocolError
from node.core.hybrid_kem import HybridPrivateKey
from node.core.identity import IDENTITY_KEY_SIZE, Identity

__all__ = [
    "BOX_OVERHEAD",
    "SEALED_VERSION",
    "Opened",
    "SealError",
    "SealSignatureError",
    "encode_content",
    "open_envelope",
    "seal_box",
    "seal_envelope",
    "signed_bytes",
]

SEALED_VERSION = 1
_AAD_LABEL = b"qpc/1 sealed sender"
_KEY_INFO = b"qpc/1 sealed sender key"
_SIGNATURE_LABEL = b"qpc/1 sealed sender signature\x00"
_NONCE = bytes(12)
_TAG_SIZE = 16
SIGNATURE_SIZE = 64
# What sealing adds to the inner envelope's bytes, less the content's own capnp framing.
BOX_OVERHEAD = 1 + hybrid_kem.CIPHERTEXT_SIZE + _TAG_SIZE
_KIND_ORDINALS = {kind: i for i, kind in enumerate(wire.EnvelopeKind)}


class SealError(CryptoError):
    """A sealed envelope that cannot be opened by this node, or whose inner signature is not
    its sender's."""


class SealSignatureError(SealError):
    """A sealed envelope that opened, but whose inner signature is not its sender's."""


class Opened:
    """A sealed envelope, opened and verified: who sent it and the envelope they meant."""

    __slots__ = ("envelope", "sender")

    def __init__(self, sender: bytes, envelope: wire.Envelope) -> None:
        self.sender = sender
        self.envelope = envelope


def signed_bytes(env: wire.Envelope) -> bytes:
    """What the sender signs: every field of the inner envelope, each of fixed size or length
    prefixed, after a label no other signature of ours starts with."""
    return b"".join(
        (
            _SIGNATURE_LABEL,
            env.recipient,
            env.id,
            struct.pack(">BQI", _KIND_ORDINALS[env.kind], env.created_at_ms, len(env.group_id)),
            env.group_id,
            struct.pack(">I", len(env.payload)),
            env.payload,
        )
    )


def _aad(mailbox: bytes) -> bytes:
    return _AAD_LABEL + bytes([SEALED_VERSION]) + mailbox


def _key(shared: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
    return hkdf.derive(shared)


def seal_envelope(
    sender: Identity, recipient_envelope_key: bytes, env: wire.Envelope, outer_id: bytes
) -> wire.Envelope:
    """``env`` sealed to its recipient: an envelope of kind ``sealed`` under ``outer_id``
    (fresh random bytes from the caller's runtime) carrying sender and payload in its box.

    Raises :class:`CryptoError` if the envelope key is malformed and :class:`ValueError` for
    an inner envelope that is itself sealed.
    """
    if env.kind is wire.EnvelopeKind.SEALED:
        raise ValueError("a sealed envelope is not sealed again")
    signature = sender.private_key.sign(signed_bytes(env))
    content = encode_content(sender.public_key, env, signature)
    return wire.Envelope(
        id=outer_id,
        recipient=env.recipient,
        kind=wire.EnvelopeKind.SEALED,
        payload=seal_box(recipient_envelope_key, env.recipient, content),
        group_id=b"",
        created_at_ms=env.created_at_ms,
    )


def encode_content(sender: bytes, env: wire.Envelope, signature: bytes) -> bytes:
    """A ``SealedContent``: what a box holds."""
    content = schemas.envelope.SealedContent.new_message()
    content.sender = sender
    content.envelope = wire.encode_envelope(env)
    content.signature = signature
    return bytes(content.to_bytes())


def seal_box(recipient_envelope_key: bytes, mailbox: bytes, content: bytes) -> bytes:
    """``content`` in a box only the holder of the envelope key can open."""
    shared, kem_ciphertext = hybrid_kem.encapsulate(recipient_envelope_key)
    boxed = ChaCha20Poly1305(_key(shared)).encrypt(_NONCE, content, _aad(mailbox))
    return bytes([SEALED_VERSION]) + kem_ciphertext + boxed


def open_envelope(key: HybridPrivateKey, outer: wire.Envelope) -> Opened:
    """Open a sealed envelope addressed to the holder of ``key``, verify its sender's
    signature, and return sender and inner envelope.

    Raises :class:`SealError` for anything else: an unknown version, a box sealed to another
    key or altered on the way, a malformed content, an inner envelope for another mailbox or
    itself sealed, or a signature that does not verify.
    """
    box = outer.payload
    if len(box) < BOX_OVERHEAD or box[0] != SEALED_VERSION:
        raise SealError("not a sealed box of a known version")
    kem_end = 1 + hybrid_kem.CIPHERTEXT_SIZE
    try:
        shared = hybrid_kem.decapsulate(key, box[1:kem_end])
        plain = ChaCha20Poly1305(_key(shared)).decrypt(_NONCE, box[kem_end:], _aad(outer.recipient))
    except (CryptoError, InvalidTag) as exc:
        raise SealError("the sealed box does not open with this node's envelope key") from exc
    try:
        with schemas.envelope.SealedContent.from_bytes(
            plain,
            traversal_limit_in_words=max(64, 2 * (len(plain) // 8 + 1)),
            nesting_limit=wire.MAX_NESTING,
        ) as reader:
            sender = bytes(reader.sender)
            inner_bytes = bytes(reader.envelope)
            signature = bytes(reader.signature)
        inner = wire.decode_envelope(inner_bytes)
    except (RemoteProtocolError, *wire.DECODE_EXCEPTIONS) as exc:  # type: ignore[misc]
        raise SealError("the sealed content is malformed") from exc
    if len(sender) != IDENTITY_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise SealError("the sealed content is malformed")
    if inner.kind is wire.EnvelopeKind.SEALED or inner.recipient != outer.recipient:
        raise SealError("the sealed envelope inside is not for this mailbox")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(sender).verify(signature, signed_bytes(inner))
    except (InvalidSignature, ValueError) as exc:
        raise SealSignatureError("the sealed envelope's signature is not its sender's") from exc
    return Opened(sender, inner)
