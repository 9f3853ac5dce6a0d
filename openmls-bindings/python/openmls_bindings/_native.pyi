"""Type stubs for the Rust extension module ``openmls_bindings._native``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Final, Literal, final

__all__ = [
    "CIPHERSUITE_X25519_AES128GCM",
    "CIPHERSUITE_XWING",
    "Client",
    "Group",
    "MessageInfo",
    "Processed",
    "WelcomeInfo",
    "key_package_identity",
    "key_package_info",
    "message_info",
]

CIPHERSUITE_X25519_AES128GCM: Final[int]
"""MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (0x0001), the default."""

CIPHERSUITE_XWING: Final[int]
"""MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (0x004D): post-quantum (X-Wing) key exchange."""

@final
class Client:
    """An MLS client: an Ed25519 signing key, its credential, KeyPackages and groups.

    Without ``storage_path`` everything lives in memory. With it (and a
    32-byte ``storage_key``) every key and group state lives in that one file,
    encrypted with the key; each call that changes state is atomic with
    respect to the file (it is rewritten, fsynced and renamed into place
    before the call returns, or the call is undone). While the client or any of
    its groups is alive, no other process can open the file; a newer client of
    the same process takes it over, and the older one can no longer change it.

    Time and randomness are the caller's, and neither has a default, so that
    a simulation never runs on the real clock or the system's randomness by
    omission. Every "now" the binding decides with — the lifetimes of the
    KeyPackages and creator leaves it makes, its check of the KeyPackages it
    is handed (``add_members``, ``commit(add=...)``, ``propose_add``) and the
    expiry of its pool — is read from ``clock_ms``, once per call. OpenMLS
    itself also checks lifetimes against the system clock (in every KeyPackage
    it parses, the Adds of commits and proposals, and the ratchet tree of a
    Welcome or GroupInfo); a client on a simulated clock in the past passes
    those with a long ``key_package_lifetime_s``. With ``rng_seed`` every
    random byte the client uses (MLS secrets and keys, HPKE encapsulations,
    the state file's salts and nonces) comes from a ChaCha20 generator seeded
    with it, so two clients of the same identity, seed, clock and calls send
    the same bytes — except a commit covering two or more Remove/Update
    proposals, which OpenMLS orders differently in each process.
    """

    def __new__(
        cls,
        signing_key: bytes,
        *,
        clock_ms: Callable[[], int],
        rng_seed: bytes | None,
        storage_path: str | os.PathLike[str] | None = None,
        storage_key: bytes | None = None,
        key_package_lifetime_s: int = 7257600,
    ) -> Client:
        """Build a client from a 32-byte raw Ed25519 private key (the seed).

        :param clock_ms: returns the current wall-clock time in milliseconds
            since the Unix epoch (an ``int``). Called from the thread making a
            call, with the GIL; an exception it raises fails that call with
            :class:`InvalidInputError`.
        :param rng_seed: 32 bytes: the seed of all of this client's randomness
            (simulations and tests only: a seeded client is exactly as secret
            as its seed, and must never reopen a state file under a seed it
            used before). ``None``: the operating system's randomness.
        :param key_package_lifetime_s: the length in seconds of every lifetime
            the client makes (KeyPackages, last-resort KeyPackages, the leaf of
            a group it creates): valid from an hour before the clock's now to
            this long after it. 12 weeks by default (OpenMLS's default); 1 s to
            100 years (3,155,760,000 s).
        :raises InvalidInputError: if a key or ``rng_seed`` has the wrong
            length, ``clock_ms`` is not callable, ``key_package_lifetime_s`` is
            out of range, or only one of ``storage_path`` and ``storage_key`` is
            given.
        :raises StorageError: if the file cannot be opened or decrypted, belongs
            to another identity, or is open in another process.
        """

    @property
    def identity(self) -> bytes:
        """The 32-byte Ed25519 public key; also the credential identity."""

    def key_package(self, ciphersuite: int = 0x0001) -> bytes:
        """A fresh single-use KeyPackage as MLSMessage bytes.

        :raises WrongCiphersuiteError: if the ciphersuite is unsupported.
        """

    def key_packages(self, count: int, ciphersuite: int = 0x0001) -> list[bytes]:
        """``count`` (at most 1000) fresh single-use KeyPackages for the pool.

        Each is valid from an hour before the clock's now to
        ``key_package_lifetime_s`` after it.
        Expired, unused KeyPackages of earlier calls are deleted on the way.
        """

    def unused_key_packages(self, ciphersuite: int = 0x0001) -> int:
        """How many single-use KeyPackages are neither used by a Welcome nor expired."""

    def last_resort_key_package(self, ciphersuite: int = 0x0001) -> bytes:
        """The last-resort KeyPackage (RFC 9420 last_resort extension).

        The same bytes on every call and after restarts, until
        :meth:`rotate_last_resort` (or until it is within a week — or half of
        ``key_package_lifetime_s``, if shorter — of expiring, by the client's
        clock).
        """

    def serve_key_packages(self, ciphersuites: Sequence[int], *, pool_size: int) -> list[bytes]:
        """One KeyPackage per ciphersuite (in the order given), for a peer that asked.

        Served from a pool of at most ``pool_size`` (0 to 1000) unused, unexpired
        single-use KeyPackages per ciphersuite: while a suite's pool has room, a fresh
        KeyPackage is made and joins it; once it is full, that suite's last-resort
        KeyPackage is served instead (it may be used more than once; a single-use one
        handed to two inviters would leave the second Welcome unjoinable). A Welcome
        that uses a pooled KeyPackage takes it out of the pool, and expired ones are
        pruned, so the pool refills. However often it is called, the state holds at most
        ``pool_size`` handed-out KeyPackages per suite; when every pool is full the call
        writes nothing and draws no randomness.

        :raises InvalidInputError: if no ciphersuite, one twice, or ``pool_size`` out of
            range.
        :raises WrongCiphersuiteError: if a ciphersuite is unsupported.
        """

    def rotate_last_resort(self, ciphersuite: int = 0x0001) -> bytes:
        """Replace the last-resort KeyPackage and return the new one.

        The previous one keeps working until the next rotation.
        """

    def create_group(
        self,
        group_id: bytes,
        ciphersuite: int = 0x0001,
        *,
        external_joins: bool = False,
        interop: bool = False,
    ) -> Group:
        """Create a group with this client as its only member and its committer (epoch 0).

        :param external_joins: whether outsiders holding a GroupInfo may join
            by external commit.
        :param interop: create a group without the committer record, so that
            members of other RFC 9420 implementations (which cannot support
            our GroupContext extension) can be added. Such a group has **no
            committer policy**: any member may commit, as in plain RFC 9420,
            so concurrent commits can fork it (ADR 0003); incoming handshakes
            may be PublicMessages; it cannot accept external joins and can
            never gain the record. Our clients join it only with
            ``join(welcome, interop=True)``.
        :raises InvalidInputError: if both ``interop`` and ``external_joins``.
        :raises WrongCiphersuiteError: if the ciphersuite is unsupported.
        :raises InvalidInputError: if the group id is empty.
        """

    def join(self, welcome: bytes, *, interop: bool = False) -> Group:
        """Join a group from a Welcome made for one of this client's KeyPackages.

        :param interop: also accept a group without a committer record (see
            ``create_group(interop=True)``), where any member may commit.
        :raises InvalidMessageError: if the group has no committer record and
            ``interop`` is false.
        """

    def inspect_welcome(self, welcome: bytes) -> WelcomeInfo:
        """What a Welcome made for one of this client's KeyPackages says, verified
        as ``join`` would verify it, without joining: the client's state (its
        KeyPackages included) is unchanged, so ``join`` can follow.

        :raises InvalidInputError: for bytes that are not a Welcome MLSMessage.
        :raises InvalidMessageError: if it is not for this client, or fails
            validation.
        """

    def join_external(self, group_info: bytes) -> tuple[Group, bytes]:
        """Join by external commit; return the group and the commit for the members.

        :raises NotCommitterError: if the group does not accept external joins.
        """

    def group_ids(self) -> list[bytes]:
        """The ids of every group this client holds state for, oldest first."""

    def load_group(self, group_id: bytes) -> Group:
        """The group with this id, at its current epoch.

        :raises NotMemberError: if this client holds no state for it.
        """

    def forget_group(self, group_id: bytes) -> None:
        """Delete this client's state for a group."""

@final
class Group:
    """A group this client holds state for (a handle: all handles share one state)."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def ciphersuite(self) -> int: ...
    @property
    def committer(self) -> bytes:
        """The identity of the only member whose commits the group accepts.

        Empty in an interop group, where any member may commit.
        """

    @property
    def external_joins(self) -> bool:
        """Whether outsiders may join by external commit."""

    @property
    def interop(self) -> bool:
        """Whether the group has no committer record (see ``Client.create_group``)."""

    @property
    def is_active(self) -> bool:
        """False once this member has been removed."""

    @property
    def pending_proposals(self) -> int:
        """How many received (or own) proposals wait for the committer's commit."""

    def members(self) -> list[tuple[int, bytes]]:
        """``(leaf_index, identity)`` for every member, ordered by leaf index."""

    def commit(self, add: Sequence[bytes] = ...) -> tuple[bytes, bytes | None]:
        """Commit the pending proposals, adding ``add``'s owners; return ``(commit, welcome)``.

        The commit is merged before this returns, so the epoch advances. Add and
        Remove proposals received from members are re-issued by value; Updates
        are committed by reference. ``welcome`` is None when nobody joins.

        :raises NotCommitterError: if this member is not the committer.
        :raises WrongCiphersuiteError: if a KeyPackage uses another ciphersuite.
        :raises InvalidMessageError: if a KeyPackage is invalid, or not valid
            at the client's now (expired, or not yet valid).
        """

    def add_members(self, key_packages: Sequence[bytes]) -> tuple[bytes, bytes]:
        """:meth:`commit` that adds at least one member; return ``(commit, welcome)``."""

    def remove_members(self, identities: Sequence[bytes]) -> bytes:
        """Commit removing these members (and the pending proposals); return the commit.

        :raises MlsError: if add proposals are pending (use :meth:`commit`).
        """

    def self_update(self) -> bytes:
        """Commit fresh keys for this member (post-compromise security)."""

    def hand_over(self, identity: bytes) -> bytes:
        """Commit handing the committer role to another member; return the commit."""

    def propose_add(self, key_package: bytes) -> bytes:
        """Propose adding a KeyPackage's owner; send the proposal to the committer."""

    def propose_remove(self, identity: bytes) -> bytes:
        """Propose removing a member; send the proposal to the committer."""

    def propose_update(self) -> bytes:
        """Propose fresh keys for this member.

        Updates are committed by reference: send this to every member.
        """

    def leave(self) -> bytes:
        """Propose this member's own removal; send it to the committer.

        :raises MlsError: if this member is the committer (hand over first).
        """

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt application data as a PrivateMessage (MLSMessage bytes)."""

    def process(self, message: bytes, *, delivery_id: bytes | None = None) -> Processed:
        """Process an incoming MLSMessage for this group.

        Application messages are decrypted, proposals stored, commits checked
        against the committer policy and merged.

        With ``delivery_id`` (the caller's id for this delivery of the
        message), the outcome is kept in the state, atomically with the
        message's effect, for the last 256 deliveries: processing the same
        message under the same id again returns that outcome, with
        ``repeated`` set, instead of failing as a replay. A caller that
        crashed before recording an outcome can thus redo its step. Another
        id (or none) still gets MLS's replay protection.

        :raises NotCommitterError: for a commit not sent by the committer.
        """

    def export_group_info(self) -> bytes:
        """A signed GroupInfo with the ratchet tree, for :meth:`Client.join_external`."""

    def exporter(self, label: str, context: bytes, length: int) -> bytes:
        """A secret of ``length`` (1..8160) bytes from the current epoch (RFC 9420 §8.5)."""

    def last_commit(self) -> tuple[bytes, bytes | None] | None:
        """The commit (and Welcome) this member made to enter the current epoch.

        For sending again after a crash between the call and the send; None
        when the current epoch was entered otherwise.
        """

    def last_commit_recipients(self) -> tuple[list[bytes], list[bytes]] | None:
        """Whom :meth:`last_commit` goes to: ``(recipients, joiners)``.

        ``recipients`` are the other members of the epoch the commit ended
        (removed members included, so they learn it); ``joiners`` the members
        it added, who get the Welcome instead. None when :meth:`last_commit`
        is None.
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
    def repeated(self) -> bool:
        """True if this delivery was processed before and this is its kept outcome."""

    @property
    def epoch(self) -> int:
        """The group's epoch after processing."""

    @property
    def added(self) -> list[bytes]:
        """Identities the commit added (empty for other kinds)."""

    @property
    def removed(self) -> list[bytes]:
        """Identities the commit removed (empty for other kinds)."""

    @property
    def self_removed(self) -> bool:
        """Whether the commit removed this member."""

@final
class MessageInfo:
    """The unauthenticated header of a group message (see :func:`message_info`)."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def content_type(self) -> Literal["application", "commit", "proposal"]: ...

@final
class WelcomeInfo:
    """What a Welcome says (see :meth:`Client.inspect_welcome`)."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def ciphersuite(self) -> int: ...
    @property
    def sender(self) -> bytes:
        """The identity of the member that signed the GroupInfo (who added us)."""

    @property
    def members(self) -> list[bytes]:
        """Every member's identity in leaf order, ours included."""

    @property
    def committer(self) -> bytes | None:
        """The group's committer; None for an interop group."""

def message_info(message: bytes) -> MessageInfo:
    """Read the group id, epoch and content type of a PublicMessage or PrivateMessage.

    They are in the clear, so no keys are needed, and nothing read is
    authenticated: processing the message is.

    :raises InvalidInputError: for bytes that are not a group message.
    """

def key_package_identity(key_package: bytes, *, now_ms: int) -> bytes:
    """Validate a KeyPackage MLSMessage at ``now_ms`` and return its credential identity.

    :param now_ms: the time to check the KeyPackage's lifetime at, in
        milliseconds since the Unix epoch. OpenMLS checks it against the
        system clock as well, so the KeyPackage must be valid by both.
    :raises InvalidInputError: for bytes that are not a KeyPackage MLSMessage.
    :raises InvalidMessageError: for a KeyPackage that fails validation, or is
        not valid at ``now_ms`` or by the system clock.
    """

def key_package_info(key_package: bytes, *, now_ms: int) -> tuple[bytes, int]:
    """Validate a KeyPackage as :func:`key_package_identity` does; return its credential
    identity and its ciphersuite (the IANA code point).

    :raises InvalidInputError: for bytes that are not a KeyPackage MLSMessage.
    :raises InvalidMessageError: for a KeyPackage that fails validation, or is not valid at
        ``now_ms`` or by the system clock.
    :raises WrongCiphersuiteError: for a valid KeyPackage of a ciphersuite this binding
        cannot use.
    """
