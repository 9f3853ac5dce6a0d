"""The node's only door to OpenMLS (``openmls_bindings``): typed, bytes in, bytes out.

Everything the binding raises is an ``openmls_bindings.MlsError``; here it becomes a
:class:`GroupError` so that callers handle one node-level family, except a state file that
cannot be read or written, which is :class:`MlsStorageError` (a ``StorageError``: the message
was not judged, so nothing that carried it may be dropped).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import openmls_bindings as ob

from node.core import suites
from node.core.errors import CryptoError, StorageError
from node.core.identity import Identity
from node.core.runtime import Runtime

# node.core names the suites without importing the binding; they must be the binding's.
if (suites.XWING, suites.X25519_AES128GCM) != (
    ob.CIPHERSUITE_XWING,
    ob.CIPHERSUITE_X25519_AES128GCM,
):  # pragma: no cover - a binding of other code points
    raise ImportError("openmls_bindings names the ciphersuites differently from node.core")

# Post-quantum HPKE (X25519 + ML-KEM-768) for a group made before anyone is invited; a group
# made for invitees uses what they all offer (node.core.suites).
CIPHERSUITE_DEFAULT = suites.XWING
KEY_PACKAGE_LIFETIME_S = 12 * 7 * 24 * 3600  # OpenMLS's default: twelve weeks
# Single-use KeyPackages handed out and not yet used, per suite, before serving falls back to
# the last-resort one: bounds what anyone who asks can make this node keep (~5 KB each).
KEY_PACKAGE_POOL = 32


class GroupError(CryptoError):
    """An MLS message or operation failed; the group state is unchanged."""


class StaleEpochError(GroupError):
    """The message belongs to an epoch this member can no longer (or not yet) process."""


class NotCommitterError(GroupError):
    """Only the group's committer may commit; other members propose (ADR 0003)."""


class MissingProposalError(GroupError):
    """A commit covers a proposal this member has not received yet; process it again after."""


class UnsupportedSuiteError(GroupError):
    """A valid KeyPackage of a ciphersuite this node cannot use."""


class MlsStorageError(StorageError):
    """The MLS state file could not be read or written (a full disk, a read-only file); the
    call was undone and may be made again."""


class StateWatch(Protocol):
    """Keeps the node's record of where the MLS state file stands (ADR 0004). Both methods run
    on the thread of the MLS call itself, around every call."""

    @property
    def name(self) -> str:
        """The state file, as error messages name it."""
        ...

    def before(self) -> None:
        """Raise :class:`~node.core.errors.StorageError` if the last change is not recorded yet
        and still cannot be: no call may then change the file again."""
        ...

    def after(self) -> None:
        """Record the point the file has reached (never raises: a failure is retried by the
        next :meth:`before`)."""
        ...


class _NoWatch:
    name = "the MLS state"

    def before(self) -> None:
        pass

    def after(self) -> None:
        pass


NO_WATCH: StateWatch = _NoWatch()


@contextmanager
def _mls_errors(watch: StateWatch = NO_WATCH) -> Iterator[None]:
    watch.before()
    try:
        yield
    except ob.StorageError as exc:
        raise MlsStorageError(f"{watch.name}: {exc}") from exc
    except ob.WrongEpochError as exc:
        raise StaleEpochError(str(exc)) from exc
    except ob.NotCommitterError as exc:
        raise NotCommitterError(str(exc)) from exc
    except ob.MissingProposalError as exc:
        raise MissingProposalError(str(exc)) from exc
    except ob.WrongCiphersuiteError as exc:
        raise UnsupportedSuiteError(str(exc)) from exc
    except ob.MlsError as exc:
        raise GroupError(str(exc)) from exc
    finally:
        watch.after()


class ContentType(enum.Enum):
    APPLICATION = "application"
    PROPOSAL = "proposal"
    COMMIT = "commit"


@dataclass(frozen=True)
class MessageHeader:
    """What a group message says about itself in the clear; MLS authenticates it only when the
    message is processed."""

    group_id: bytes
    epoch: int
    content_type: ContentType


def read_header(message: bytes) -> MessageHeader | None:
    """The header of a group message (PublicMessage or PrivateMessage), read without keys; None
    for anything else (a Welcome, a KeyPackage, a GroupInfo, or bytes that are not MLS)."""
    try:
        info = ob.message_info(message)
    except ob.MlsError:
        return None
    return MessageHeader(info.group_id, info.epoch, ContentType(info.content_type))


@dataclass(frozen=True)
class Incoming:
    """What processing one MLS message produced."""

    kind: str  # "application" | "commit" | "proposal"
    sender: bytes
    plaintext: bytes | None
    epoch: int


@dataclass(frozen=True)
class OwnCommit:
    """The commit this member made to enter the group's current epoch, and whom it goes to."""

    commit: bytes
    welcome: bytes | None
    recipients: list[bytes]  # the other members of the epoch it ended, removed ones included
    joiners: list[bytes]  # the members it added: the Welcome goes to them


@dataclass(frozen=True)
class WelcomeInfo:
    """What a Welcome for this member says, verified, before it is joined."""

    group_id: bytes
    ciphersuite: int
    sender: bytes  # the member who added us (it signed the GroupInfo)
    members: list[bytes]  # leaf order, this member included
    committer: bytes | None


class MlsGroup:
    def __init__(self, group: ob.Group, watch: StateWatch = NO_WATCH) -> None:
        self._group = group
        self._watch = watch

    @property
    def group_id(self) -> bytes:
        return self._group.group_id

    @property
    def epoch(self) -> int:
        return self._group.epoch

    @property
    def ciphersuite(self) -> int:
        return self._group.ciphersuite

    @property
    def committer(self) -> bytes:
        """The identity of the only member whose commits the group accepts."""
        return self._group.committer

    @property
    def pending_proposals(self) -> int:
        return self._group.pending_proposals

    @property
    def is_active(self) -> bool:
        """False once this member has been removed."""
        return self._group.is_active

    def members(self) -> list[bytes]:
        """Member identity keys in leaf order."""
        return [identity for _, identity in self._group.members()]

    # The committer's side: each call makes a commit and merges it, so the epoch advances.

    def commit(self, add: Sequence[bytes] = ()) -> tuple[bytes, bytes | None]:
        """Commit every pending proposal and add ``add``'s owners; returns (commit, welcome)."""
        with _mls_errors(self._watch):
            return self._group.commit(list(add))

    def self_update(self) -> bytes:
        """Commit fresh keys for the committer itself."""
        with _mls_errors(self._watch):
            return self._group.self_update()

    # Everyone else's side: proposals for the committer to commit.

    def propose_add(self, key_package: bytes) -> bytes:
        with _mls_errors(self._watch):
            return self._group.propose_add(key_package)

    def propose_remove(self, identity: bytes) -> bytes:
        with _mls_errors(self._watch):
            return self._group.propose_remove(identity)

    def propose_update(self) -> bytes:
        with _mls_errors(self._watch):
            return self._group.propose_update()

    def encrypt(self, plaintext: bytes) -> bytes:
        with _mls_errors(self._watch):
            return self._group.encrypt(plaintext)

    def own_commit(self) -> OwnCommit | None:
        """The commit that made the current epoch, if this member made it (to send it again
        after a crash between making it and queueing it)."""
        last, recipients = self._group.last_commit(), self._group.last_commit_recipients()
        if last is None or recipients is None:
            return None
        return OwnCommit(last[0], last[1], recipients[0], recipients[1])

    def exporter(self, label: str, context: bytes, length: int) -> bytes:
        """A secret of the current epoch (RFC 9420 §8.5): members at one epoch agree on it,
        so two members that disagree at the same epoch have forked."""
        with _mls_errors():
            return self._group.exporter(label, context, length)

    def process(self, message: bytes, delivery_id: bytes | None = None) -> Incoming:
        """Apply one incoming message. With ``delivery_id`` (the envelope's id) the outcome is
        kept in the MLS state, atomically with the message's effect, so that a node that dies
        before recording the outcome in its own store gets the same outcome when it applies
        the same envelope again at its next start; MLS alone would refuse the replay."""
        with _mls_errors(self._watch):
            result = self._group.process(message, delivery_id=delivery_id)
        return Incoming(result.kind, result.sender, result.plaintext, result.epoch)


class MlsClient:
    """A member's MLS engine: its signer (the identity key), KeyPackages and groups.

    With ``state_file`` and ``state_key`` every key and group lives encrypted in that file and
    survives restarts; without them, in memory. Every method may write the state file (and
    fsync it): callers run them through the runtime's executor, never on the event loop.
    ``watch`` is told before and after every call of the client and of its groups, on the
    call's thread (the node records where the state file stands: ADR 0004).
    """

    def __init__(
        self,
        identity: Identity,
        runtime: Runtime,
        state_file: Path | None = None,
        state_key: bytes | None = None,
        watch: StateWatch = NO_WATCH,
        *,
        key_package_lifetime_s: int = KEY_PACKAGE_LIFETIME_S,
        key_package_pool: int = KEY_PACKAGE_POOL,
        ciphersuites: Sequence[int] = suites.OFFERED,
    ) -> None:
        """:param key_package_lifetime_s: how long each KeyPackage (and a created group's
        first leaf) is valid from the runtime's clock. OpenMLS also checks these lifetimes
        against the system clock, so a simulation whose clock is not today's passes a long
        one (``openmls-bindings``, ``clock.rs``).
        :param key_package_pool: at most this many served single-use KeyPackages per suite
        wait unused (0 to 1000); beyond it :meth:`serve_key_packages` hands out the
        last-resort one (see there).
        :param ciphersuites: the suites this node offers KeyPackages of, preferred first (a
        node limited to 0x0001 passes ``(suites.X25519_AES128GCM,)``)."""
        if not 0 <= key_package_pool <= 1000:
            raise ValueError(f"key_package_pool must be 0 to 1000, got {key_package_pool}")
        if not ciphersuites or not set(ciphersuites) <= set(suites.OFFERED):
            raise ValueError(f"ciphersuites must be some of {suites.OFFERED}, got {ciphersuites}")
        self._suites = tuple(dict.fromkeys(ciphersuites))
        self._runtime = runtime
        self._persistent = state_file is not None
        self._watch = watch
        self._pool = key_package_pool
        with _mls_errors(watch):
            self._client = ob.Client(
                identity.seed(),
                clock_ms=runtime.wall_ms,
                rng_seed=runtime.mls_rng_seed(),
                storage_path=None if state_file is None else str(state_file),
                storage_key=state_key,
                key_package_lifetime_s=key_package_lifetime_s,
            )

    def group_ids(self) -> list[bytes]:
        """Groups kept in the state file (none for an in-memory client, which starts empty)."""
        if not self._persistent:
            return []
        with _mls_errors(self._watch):
            return list(self._client.group_ids())

    def load_group(self, group_id: bytes) -> MlsGroup:
        with _mls_errors(self._watch):
            return MlsGroup(self._client.load_group(group_id), self._watch)

    @property
    def identity(self) -> bytes:
        return self._client.identity

    def key_package(self, ciphersuite: int = CIPHERSUITE_DEFAULT) -> bytes:
        """A fresh single-use KeyPackage, for local use (a test, a simulation handing
        KeyPackages over out of band). It is not bounded: what peers ask for goes through
        :meth:`serve_key_packages`."""
        with _mls_errors(self._watch):
            return self._client.key_package(ciphersuite)

    def serve_key_packages(self) -> list[bytes]:
        """One KeyPackage per suite the node offers (its ``ciphersuites``), for a peer
        that asked: single-use ones while fewer than ``key_package_pool`` of a suite wait
        unused, the last-resort one after that. Used ones leave the pool and expired ones
        are pruned, so however many peers ask, the state stays bounded."""
        with _mls_errors(self._watch):
            return self._client.serve_key_packages(list(self._suites), pool_size=self._pool)

    @property
    def ciphersuites(self) -> tuple[int, ...]:
        """The suites this node offers KeyPackages of, preferred first."""
        return self._suites

    def unused_key_packages(self, ciphersuite: int) -> int:
        """How many served single-use KeyPackages of a suite wait unused and unexpired."""
        with _mls_errors(self._watch):
            return self._client.unused_key_packages(ciphersuite)

    def last_resort_key_package(self, ciphersuite: int = CIPHERSUITE_DEFAULT) -> bytes:
        """The KeyPackage that may be used more than once (it rides in the peer record)."""
        with _mls_errors(self._watch):
            return self._client.last_resort_key_package(ciphersuite)

    def create_group(
        self, group_id: bytes, ciphersuite: int = CIPHERSUITE_DEFAULT, *, interop: bool = False
    ) -> MlsGroup:
        """A group with this node as its only member and committer. ``interop``: without the
        committer record, so that other MLS implementations can be added (and so without the
        committer policy: ``openmls_bindings.Client.create_group``)."""
        with _mls_errors(self._watch):
            group = self._client.create_group(group_id, ciphersuite, interop=interop)
            return MlsGroup(group, self._watch)

    def inspect_welcome(self, welcome: bytes) -> WelcomeInfo:
        """Who invites this member, to which group and with whom; joins nothing and changes
        no state (the KeyPackage it was made for stays, so :meth:`join` can follow)."""
        with _mls_errors():
            info = self._client.inspect_welcome(welcome)
        return WelcomeInfo(
            info.group_id, info.ciphersuite, info.sender, list(info.members), info.committer
        )

    def join(self, welcome: bytes) -> MlsGroup:
        with _mls_errors(self._watch):
            return MlsGroup(self._client.join(welcome), self._watch)


def key_package_info(key_package: bytes, *, now_ms: int) -> tuple[bytes, int]:
    """:func:`key_package_identity` and the KeyPackage's ciphersuite. Raises
    :class:`UnsupportedSuiteError` for a valid KeyPackage of a suite the binding lacks."""
    with _mls_errors():
        return ob.key_package_info(key_package, now_ms=now_ms)


def key_package_identity(key_package: bytes, *, now_ms: int) -> bytes:
    """The identity key a KeyPackage's credential names, after checking its signature and
    that its lifetime covers ``now_ms`` (the runtime's wall clock)."""
    with _mls_errors():
        return ob.key_package_identity(key_package, now_ms=now_ms)
