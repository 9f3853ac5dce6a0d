from __future__ import annotations

import hashlib
import os

import pytest

from node.core.errors import CryptoError
from node.core.identity import Identity, fingerprint, mailbox_of
from node.core.keyfile import FAST_KDF, SEAL_RANDOM_SIZE, WrongPassphraseError, open_sealed, seal


def test_fingerprint_is_grouped_base32_of_the_key_hash() -> None:
    key = Identity.generate().public_key
    text = fingerprint(key)
    groups = text.split()
    assert all(len(g) == 4 for g in groups[:-1])
    assert "".join(groups) == "".join(fingerprint(key).split())
    assert fingerprint(Identity.generate().public_key) != text


def test_mailbox_is_sha256_of_identity_key() -> None:
    identity = Identity.generate()
    assert identity.mailbox == hashlib.sha256(identity.public_key).digest()
    with pytest.raises(CryptoError):
        mailbox_of(b"short")


def test_identity_repr_holds_no_private_key() -> None:
    identity = Identity.generate()
    assert identity.seed().hex() not in repr(identity)


def test_sealed_key_opens_only_with_its_passphrase() -> None:
    secret = Identity.generate().seed()
    blob = seal(secret, b"correct horse", FAST_KDF, os.urandom(SEAL_RANDOM_SIZE))
    assert secret not in blob
    assert open_sealed(blob, b"correct horse") == secret
    with pytest.raises(WrongPassphraseError):
        open_sealed(blob, b"wrong horse")


def test_tampered_header_fails_like_a_wrong_passphrase() -> None:
    blob = bytearray(seal(b"s" * 32, b"pw", FAST_KDF, os.urandom(SEAL_RANDOM_SIZE)))
    blob[-40] ^= 1  # inside the ciphertext
    with pytest.raises(WrongPassphraseError):
        open_sealed(bytes(blob), b"pw")
    blob = bytearray(seal(b"s" * 32, b"pw", FAST_KDF, os.urandom(SEAL_RANDOM_SIZE)))
    blob[20] ^= 1  # inside the salt, part of the authenticated header
    with pytest.raises(WrongPassphraseError):
        open_sealed(bytes(blob), b"pw")


def test_not_a_key_file() -> None:
    with pytest.raises(CryptoError, match="not a quicnprotochat key file"):
        open_sealed(b"x" * 100, b"pw")
