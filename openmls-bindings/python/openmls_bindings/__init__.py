"""OpenMLS (RFC 9420) for quicnprotochat.

Bytes in, bytes out: KeyPackages, Welcomes, GroupInfos, proposals, commits and
application messages are all RFC 9420 ``MLSMessage`` bytes. Every error is an
:class:`MlsError`.

Typical use::

    alice = Client(alice_signing_key, "alice.mls", storage_key)  # 32-byte keys
    group = alice.create_group(b"room")            # alice is the committer
    commit, welcome = group.add_members([bob_key_package])
    bob_group = bob.join(welcome)
    bob_group.process(group.encrypt(b"hi")).plaintext  # b"hi"
    proposal = bob_group.propose_update()          # bob is not the committer:
    group.process(proposal)                        # he proposes, alice commits
    commit, _ = group.commit()

With a storage path every call is atomic with respect to the encrypted state
file, and ``Client(...).load_group(group_id)`` resumes a group after a restart.
"""

from __future__ import annotations

from openmls_bindings._native import (
    CIPHERSUITE_X25519_AES128GCM,
    CIPHERSUITE_XWING,
    Client,
    Group,
    MessageInfo,
    Processed,
    key_package_identity,
    message_info,
)
from openmls_bindings.exceptions import (
    InvalidInputError,
    InvalidMessageError,
    MissingProposalError,
    MlsError,
    NotCommitterError,
    NotMemberError,
    StorageError,
    WrongCiphersuiteError,
    WrongEpochError,
)

__all__ = [
    "CIPHERSUITE_X25519_AES128GCM",
    "CIPHERSUITE_XWING",
    "Client",
    "Group",
    "InvalidInputError",
    "InvalidMessageError",
    "MessageInfo",
    "MissingProposalError",
    "MlsError",
    "NotCommitterError",
    "NotMemberError",
    "Processed",
    "StorageError",
    "WrongCiphersuiteError",
    "WrongEpochError",
    "key_package_identity",
    "message_info",
]
