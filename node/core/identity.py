"""Ed25519 identity keys, mailboxes and fingerprints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from node.core.errors import CryptoError

IDENTITY_KEY_SIZE = 32


def mailbox_of(identity_key: bytes) -> bytes:
    """The relay mailbox address of an identity: SHA-256 of its public key."""
    if len(identity_key) != IDENTITY_KEY_SIZE:
        raise CryptoError(f"an identity key is {IDENTITY_KEY_SIZE} bytes, got {len(identity_key)}")
    return hashlib.sha256(identity_key).digest()


def fingerprint(identity_key: bytes) -> str:
    """Base32 of SHA-256(identity key), grouped in fours for reading aloud."""
    digest = hashlib.sha256(identity_key).digest()
    text = base64.b32encode(digest).decode("ascii").rstrip("=").lower()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def short_fingerprint(identity_key: bytes) -> str:
    """The first three groups of :func:`fingerprint`, for logs and tables."""
    return " ".join(fingerprint(identity_key).split()[:3])


@dataclass(frozen=True)
class Identity:
    """A node's long-term Ed25519 identity. Holds the private key: never log or print it."""

    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise CryptoError("an Ed25519 private key is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        """The 32 raw private-key bytes, for the MLS signer and the encrypted key file only."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def mailbox(self) -> bytes:
        return mailbox_of(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"Identity({short_fingerprint(self.public_key)})"
