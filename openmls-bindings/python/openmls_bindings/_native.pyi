"""Type stubs for the Rust extension module ``openmls_bindings._native``."""

from __future__ import annotations

from typing import Final, Literal, final

__all__ = [
    "CIPHERSUITE_X25519_AES128GCM",
    "Client",
    "Group",
    "Processed",
    "key_package_identity",
]

CIPHERSUITE_X25519_AES128GCM: Final[int]
"""MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (0x0001)."""

@final
class Client:
    """An MLS client: an Ed25519 signing key, its credential and its KeyPackages."""

    def __new__(cls, signing_key: bytes) -> Client:
        """Build a client from a 32-byte raw Ed25519 private key (the seed).

        :raises InvalidInputError: if the key is not 32 bytes.
        """

    @property
    def identity(self) -> bytes:
        """The 32-byte Ed25519 public key; also the credential identity."""

    def key_package(self, ciphersuite: int = 0x0001) -> bytes:
        """A fresh KeyPackage as MLSMessage bytes.

        :raises WrongCiphersuiteError: if the ciphersuite is unsupported.
        """

    def create_group(self, group_id: bytes, ciphersuite: int = 0x0001) -> Group:
        """Create a group with this client as its only member (epoch 0).

        :raises WrongCiphersuiteError: if the ciphersuite is unsupported.
        :raises InvalidInputError: if the group id is empty.
        """

    def join(self, welcome: bytes) -> Group:
        """Join a group from a Welcome made for one of this client's KeyPackages."""

@final
class Group:
    """A group this client is a member of."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def ciphersuite(self) -> int: ...
    def members(self) -> list[tuple[int, bytes]]:
        """``(leaf_index, identity)`` for every member, ordered by leaf index."""

    def add_members(self, key_packages: list[bytes]) -> tuple[bytes, bytes]:
        """Commit adding the KeyPackages' owners; return ``(commit, welcome)``.

        The commit is merged locally before this returns, so the epoch advances.

        :raises WrongCiphersuiteError: if a KeyPackage uses another ciphersuite.
        """

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt application data as a PrivateMessage (MLSMessage bytes)."""

    def process(self, message: bytes) -> Processed:
        """Process an incoming MLSMessage for this group.

        Application messages are decrypted, commits merged, proposals stored.
        """

@final
class Processed:
    """The result of :meth:`Group.process`."""

    @property
    def kind(self) -> Literal["application", "commit", "proposal"]: ...
    @property
    def sender(self) -> bytes:
        """The sender's credential identity (32-byte Ed25519 public key)."""

    @property
    def plaintext(self) -> bytes | None:
        """Decrypted application data; None for commits and proposals."""

    @property
    def epoch(self) -> int:
        """The group's epoch after processing."""

def key_package_identity(key_package: bytes) -> bytes:
    """Validate a KeyPackage MLSMessage and return its credential identity.

    :raises InvalidInputError: for bytes that are not a KeyPackage MLSMessage.
    :raises InvalidMessageError: for a KeyPackage that fails validation.
    """
