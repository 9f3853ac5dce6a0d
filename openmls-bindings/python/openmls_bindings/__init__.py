"""OpenMLS (RFC 9420) for quicnprotochat.

Bytes in, bytes out: KeyPackages, Welcomes, GroupInfos, proposals, commits and
application messages are all RFC 9420 ``MLSMessage`` bytes. Every error is an
:class:`MlsError`.

Typical use::

    alice = Client(alice_signing_key, clock_ms=clock_ms, rng_seed=None,  # 32-byte keys
                   storage_path="alice.mls", storage_key=storage_key)
    group = alice.create_group(b"room")            # alice is the committer
    commit, welcome = group.add_members([bob_key_package])
    bob_group = bob.join(welcome)
    bob_group.process(group.encrypt(b"hi")).plaintext  # b"hi"
    proposal = bob_group.propose_update()          # bob is not the committer:
    group.process(proposal)                        # he proposes, alice commits
    commit, _ = group.commit()

With a storage path every call is atomic with respect to the encrypted state
file, and ``Client(...).load_group(group_id)`` resumes a group after a restart.

Time and randomness are the caller's: ``clock_ms`` (milliseconds since the Unix
epoch) is every "now" the binding decides with, and a 32-byte ``rng_seed`` makes
every random byte repeatable (simulations); ``rng_seed=None`` uses the operating
system's. OpenMLS also checks lifetimes against the system clock: a simulation on
a clock in the past passes a long ``key_package_lifetime_s`` (up to 100 years).
"""

from __future__ import annotations

from openmls_bindings._native import (
    CIPHERSUITE_X25519_AES128GCM,
    CIPHERSUITE_XWING,
    Client,
    Group,
    MessageInfo,
    Processed,
    WelcomeInfo,
    key_package_identity,
    key_package_info,
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
    "WelcomeInfo",
    "WrongCiphersuiteError",
    "WrongEpochError",
    "key_package_identity",
    "key_package_info",
    "message_info",
]
