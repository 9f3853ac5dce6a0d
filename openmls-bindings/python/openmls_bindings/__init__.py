"""OpenMLS (RFC 9420) for quicnprotochat.

Bytes in, bytes out: KeyPackages, Welcomes, commits and application messages
are all RFC 9420 ``MLSMessage`` bytes. Every error is an :class:`MlsError`.

Typical use::

    alice = Client(alice_signing_key)            # 32-byte raw Ed25519 key
    group = alice.create_group(b"room")
    commit, welcome = group.add_members([bob_key_package])
    bob_group = bob.join(welcome)
    bob_group.process(group.encrypt(b"hi")).plaintext  # b"hi"
"""

from __future__ import annotations

from openmls_bindings._native import (
    CIPHERSUITE_X25519_AES128GCM,
    Client,
    Group,
    Processed,
    key_package_identity,
)
from openmls_bindings.exceptions import (
    InvalidInputError,
    InvalidMessageError,
    MlsError,
    StorageError,
    WrongCiphersuiteError,
    WrongEpochError,
)

__all__ = [
    "CIPHERSUITE_X25519_AES128GCM",
    "Client",
    "Group",
    "InvalidInputError",
    "InvalidMessageError",
    "MlsError",
    "Processed",
    "StorageError",
    "WrongCiphersuiteError",
    "WrongEpochError",
    "key_package_identity",
]
