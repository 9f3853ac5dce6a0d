"""Signed peer records: encode, sign, validate, and keep the newest per identity.

A node publishes one record saying where it can be reached: its identity key,
envelope key, addresses, relay hints, an optional last-resort KeyPackage, a sequence number and
an expiry. On the wire it travels as a ``SignedPeerRecord`` (schemas/peer_record.capnp): the
exact record bytes plus an Ed25519 signature over :data:`SIGNATURE_CONTEXT` followed by those
bytes, so a signature can never be replayed as anything but a peer record.

Readers trust nothing they did not check: :func:`validate` returns either an
:class:`AcceptedRecord` or a :class:`RejectedRecord` carrying a :class:`Rejection`, and
:class:`RecordBook` keeps the highest valid sequence per identity. Everything here is pure:
time comes in as ``now_ms`` (milliseconds since the Unix epoch), never from a clock.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

import schemas
from node.core.errors import RemoteProtocolError
from node.core.hybrid_kem import PUBLIC_KEY_SIZE as ENVELOPE_KEY_SIZE
from node.core.identity import IDENTITY_KEY_SIZE, Identity
from node.core.wire import DECODE_EXCEPTIONS

# kademlia's store RPC must fit one 8,192-byte msgpack datagram with the method name, node id
# and key around the value: 8,000 bytes leaves room for that framing.
MAX_SIGNED_RECORD_SIZE = 8000
MAX_ADDRESSES = 8
MAX_RELAY_HINTS = 4
MAX_HOST_LENGTH = 253  # the longest DNS name
MAX_SEQUENCE = 2**64 - 1
SIGNATURE_SIZE = 64
SIGNATURE_CONTEXT = b"quicnprotochat peer record v1\x00"
# No honest node signs a record that lives longer than this; a longer claim is malformed, which
# bounds how long a stolen old record can be replayed to readers that never saw a newer one.
MAX_LIFETIME_MS = 7 * 24 * 3600 * 1000
DEFAULT_TTL_MS = 3600 * 1000
_NESTING_LIMIT = 8

Address = tuple[str, int]


class AddressFamily(enum.Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")


@dataclass(frozen=True)
class PeerAddress:
    """One QUIC address of a node: an IP literal, a port and the literal's family."""

    host: str
    port: int
    family: AddressFamily

    def __post_init__(self) -> None:
        _check_port(self.port)
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"{self.host!r} is not an IP address") from None
        wanted = AddressFamily.IPV4 if ip.version == 4 else AddressFamily.IPV6
        if wanted is not self.family:
            raise ValueError(f"{self.host} is not an {self.family.value} address")

    @classmethod
    def of(cls, address: Address) -> PeerAddress:
        """The record form of a ``(host, port)`` pair; the family follows from the host."""
        host, port = address
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        return cls(host, port, AddressFamily.IPV4 if version == 4 else AddressFamily.IPV6)

    @property
    def address(self) -> Address:
        return (self.host, self.port)


@dataclass(frozen=True)
class RelayHint:
    """A relay that keeps the node's mailbox, and the relay's key to pin when dialing it."""

    host: str
    port: int
    identity_key: bytes

    def __post_init__(self) -> None:
        _check_port(self.port)
        if not 0 < len(self.host) <= MAX_HOST_LENGTH or not self.host.isprintable():
            raise ValueError("a relay host is 1-253 printable characters")
        if any(c.isspace() for c in self.host):
            raise ValueError("a relay host has no spaces")
        if len(self.identity_key) != IDENTITY_KEY_SIZE:
            raise ValueError(f"a relay identity key is {IDENTITY_KEY_SIZE} bytes")

    @property
    def address(self) -> Address:
        return (self.host, self.port)


@dataclass(frozen=True)
class PeerRecord:
    """Where a node can be reached and how to seal envelopes to it, as it signed it."""

    identity_key: bytes
    envelope_key: bytes
    addresses: tuple[PeerAddress, ...]
    relay_hints: tuple[RelayHint, ...]
    key_package: bytes | None
    sequence: int
    expires_at_ms: int

    def __post_init__(self) -> None:
        if len(self.identity_key) != IDENTITY_KEY_SIZE:
            raise ValueError(f"an identity key is {IDENTITY_KEY_SIZE} bytes")
        if len(self.envelope_key) != ENVELOPE_KEY_SIZE:
            raise ValueError(f"an envelope key is {ENVELOPE_KEY_SIZE} bytes")
        if len(self.addresses) > MAX_ADDRESSES:
            raise ValueError(f"a record lists at most {MAX_ADDRESSES} addresses")
        if len(self.relay_hints) > MAX_RELAY_HINTS:
            raise ValueError(f"a record lists at most {MAX_RELAY_HINTS} relay hints")
        if self.key_package is not None and not self.key_package:
            raise ValueError("an absent key package is None, not empty bytes")
        if not 0 <= self.sequence <= MAX_SEQUENCE or not 0 <= self.expires_at_ms <= MAX_SEQUENCE:
            raise ValueError("sequence and expiry are unsigned 64-bit integers")

    @property
    def dial_addresses(self) -> tuple[Address, ...]:
        """The record's addresses as ``(host, port)`` pairs, best first."""
        return tuple(a.address for a in self.addresses)

    def __repr__(self) -> str:
        return (
            f"PeerRecord(identity={self.identity_key.hex()[:16]}…, seq={self.sequence}, "
            f"addresses={list(self.dial_addresses)}, expires={self.expires_at_ms})"
        )


# --- codec ----------------------------------------------------------------------------------


def encode_record(record: PeerRecord) -> bytes:
    """The canonical Cap'n Proto bytes of ``record`` (what gets signed)."""
    msg = schemas.peer_record.PeerRecord.new_message()
    msg.identityKey = record.identity_key
    msg.envelopeKey = record.envelope_key
    addresses = msg.init("addresses", len(record.addresses))
    for i, address in enumerate(record.addresses):
        addresses[i].host = address.host
        addresses[i].port = address.port
        addresses[i].family = address.family.value
    hints = msg.init("relayHints", len(record.relay_hints))
    for i, hint in enumerate(record.relay_hints):
        hints[i].host = hint.host
        hints[i].port = hint.port
        hints[i].identityKey = hint.identity_key
    msg.keyPackage = record.key_package or b""
    msg.sequence = record.sequence
    msg.expiresAt = record.expires_at_ms
    return bytes(msg.to_bytes())


def _limits(data: bytes) -> dict[str, int]:
    # Each field is read once, so twice the message size in words is ample traversal budget.
    return {
        "traversal_limit_in_words": max(64, 2 * (len(data) // 8 + 1)),
        "nesting_limit": _NESTING_LIMIT,
    }


_FAMILIES = {0: AddressFamily.IPV4, 1: AddressFamily.IPV6}


def _read_record(reader: Any) -> PeerRecord:
    raw_addresses = reader.addresses
    raw_hints = reader.relayHints
    if len(raw_addresses) > MAX_ADDRESSES or len(raw_hints) > MAX_RELAY_HINTS:
        raise ValueError("too many addresses or relay hints")
    addresses = []
    for item in raw_addresses:
        family = _FAMILIES.get(int(item.family.raw))
        if family is None:
            raise ValueError("unknown address family")
        addresses.append(PeerAddress(str(item.host), int(item.port), family))
    hints = tuple(RelayHint(str(h.host), int(h.port), bytes(h.identityKey)) for h in raw_hints)
    key_package = bytes(reader.keyPackage)
    return PeerRecord(
        identity_key=bytes(reader.identityKey),
        envelope_key=bytes(reader.envelopeKey),
        addresses=tuple(addresses),
        relay_hints=hints,
        key_package=key_package or None,
        sequence=int(reader.sequence),
        expires_at_ms=int(reader.expiresAt),
    )


def decode_record(data: bytes) -> PeerRecord:
    """Parse record bytes. Raises :class:`RemoteProtocolError` on anything malformed.

    This checks shape only; :func:`validate` is what proves who wrote it.
    """
    try:
        with schemas.peer_record.PeerRecord.from_bytes(data, **_limits(data)) as reader:
            return _read_record(reader)
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed peer record") from exc


def _encode_signed(record_bytes: bytes, signature: bytes) -> bytes:
    msg = schemas.peer_record.SignedPeerRecord.new_message()
    msg.record = record_bytes
    msg.signature = signature
    return bytes(msg.to_bytes())


def _decode_signed(data: bytes) -> tuple[bytes, bytes]:
    try:
        with schemas.peer_record.SignedPeerRecord.from_bytes(data, **_limits(data)) as reader:
            return bytes(reader.record), bytes(reader.signature)
    except DECODE_EXCEPTIONS as exc:
        raise RemoteProtocolError("malformed signed peer record") from exc


def sign_record(identity: Identity, record: PeerRecord) -> bytes:
    """``record`` signed by ``identity``, as the bytes to publish (a ``SignedPeerRecord``).

    Raises :class:`ValueError` if the record names another identity or would not fit a DHT value.
    """
    if record.identity_key != identity.public_key:
        raise ValueError("a node signs only its own peer record")
    record_bytes = encode_record(record)
    signature = identity.private_key.sign(SIGNATURE_CONTEXT + record_bytes)
    signed = _encode_signed(record_bytes, signature)
    if len(signed) > MAX_SIGNED_RECORD_SIZE:
        raise ValueError(
            f"the signed record is {len(signed)} bytes, over {MAX_SIGNED_RECORD_SIZE}: "
            "drop the key package or some addresses"
        )
    return signed


# --- validation -----------------------------------------------------------------------------


class Rejection(enum.Enum):
    """Why a record was not accepted, in the order the checks run."""

    OVERSIZED = "oversized"  # longer than MAX_SIGNED_RECORD_SIZE
    MALFORMED = "malformed"  # not a decodable SignedPeerRecord/PeerRecord, or absurd lifetime
    UNSIGNED = "unsigned"  # no signature at all
    WRONG_IDENTITY = "wrong_identity"  # signed by someone other than the identity asked for
    BAD_SIGNATURE = "bad_signature"  # forged or altered
    EXPIRED = "expired"  # expiry at or before now
    STALE = "stale"  # a newer sequence of this identity is already known


@dataclass(frozen=True)
class AcceptedRecord:
    """A record whose signature, shape and lifetime checked out, with its exact signed bytes."""

    record: PeerRecord
    signed: bytes

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class RejectedRecord:
    reason: Rejection

    @property
    def ok(self) -> bool:
        return False


RecordVerdict = AcceptedRecord | RejectedRecord


def _signature_ok(identity_key: bytes, record_bytes: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(identity_key)
        key.verify(signature, SIGNATURE_CONTEXT + record_bytes)
    except (InvalidSignature, ValueError):
        return False
    return True


def validate(
    data: object,
    now_ms: int,
    expected_identity: bytes | None = None,
    known_sequence: int | None = None,
) -> RecordVerdict:
    """Check a signed record received from anyone, without raising.

    :param data: what arrived; anything but bytes (a DHT value can be any msgpack type) is
        malformed.
    :param now_ms: the current time, milliseconds since the Unix epoch.
    :param expected_identity: the identity key asked for; a record of another is rejected.
    :param known_sequence: the highest sequence already seen for this identity; an older
        record is stale (an equal one is the same record seen again, and passes).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        return RejectedRecord(Rejection.MALFORMED)
    if len(data) > MAX_SIGNED_RECORD_SIZE:
        return RejectedRecord(Rejection.OVERSIZED)
    signed = bytes(data)
    try:
        record_bytes, signature = _decode_signed(signed)
        record = decode_record(record_bytes)
    except RemoteProtocolError:
        return RejectedRecord(Rejection.MALFORMED)
    if not signature:
        return RejectedRecord(Rejection.UNSIGNED)
    if expected_identity is not None and record.identity_key != expected_identity:
        return RejectedRecord(Rejection.WRONG_IDENTITY)
    if not _signature_ok(record.identity_key, record_bytes, signature):
        return RejectedRecord(Rejection.BAD_SIGNATURE)
    if record.expires_at_ms <= now_ms:
        return RejectedRecord(Rejection.EXPIRED)
    if record.expires_at_ms > now_ms + MAX_LIFETIME_MS:
        return RejectedRecord(Rejection.MALFORMED)
    if known_sequence is not None and record.sequence < known_sequence:
        return RejectedRecord(Rejection.STALE)
    return AcceptedRecord(record, signed)


class RecordBook:
    """The newest valid record per identity, bounded, counting what it drops and why.

    A record replaces the one held for its identity only with a higher sequence. Two different
    records with the same sequence mean the signer equivocated (or reused a sequence after a
    restart): the first one seen is kept and the second counts as stale.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("a record book holds at least one record")
        self.capacity = capacity
        self._held: dict[bytes, AcceptedRecord] = {}
        self.dropped: Counter[Rejection] = Counter()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, identity_key: object) -> bool:
        return identity_key in self._held

    def offer(
        self, data: object, now_ms: int, expected_identity: bytes | None = None
    ) -> RecordVerdict:
        """Validate ``data``; keep it if it is the newest record of its identity.

        Returns the verdict; an accepted record is either newly kept or the one already held.
        """
        verdict = validate(data, now_ms, expected_identity)
        if isinstance(verdict, RejectedRecord):
            self.dropped[verdict.reason] += 1
            return verdict
        return self.keep(verdict, now_ms)

    def keep(self, accepted: AcceptedRecord, now_ms: int) -> RecordVerdict:
        """Keep an already validated record if it is newer than the one held."""
        identity = accepted.record.identity_key
        held = self._held.get(identity)
        if held is not None and held.record.expires_at_ms <= now_ms:
            del self._held[identity]
            held = None
        if held is not None:
            if accepted.record.sequence < held.record.sequence or (
                accepted.record.sequence == held.record.sequence and accepted.signed != held.signed
            ):
                self.dropped[Rejection.STALE] += 1
                return RejectedRecord(Rejection.STALE)
            if accepted.signed == held.signed:
                return held
        elif len(self._held) >= self.capacity:
            self._make_room(now_ms)
        self._held[identity] = accepted
        return accepted

    def _make_room(self, now_ms: int) -> None:
        self.expire(now_ms)
        if len(self._held) >= self.capacity:
            # The record closest to its expiry has the least useful life left.
            soonest = min(self._held, key=lambda k: self._held[k].record.expires_at_ms)
            del self._held[soonest]
            self.evicted += 1

    def get(self, identity_key: bytes, now_ms: int) -> AcceptedRecord | None:
        """The held record of ``identity_key`` if it has not expired."""
        held = self._held.get(identity_key)
        if held is None:
            return None
        if held.record.expires_at_ms <= now_ms:
            del self._held[identity_key]
            return None
        return held

    def known_sequence(self, identity_key: bytes) -> int | None:
        held = self._held.get(identity_key)
        return None if held is None else held.record.sequence

    def forget(self, identity_key: bytes) -> None:
        self._held.pop(identity_key, None)

    def expire(self, now_ms: int) -> int:
        """Drop every expired record; return how many went."""
        gone = [k for k, v in self._held.items() if v.record.expires_at_ms <= now_ms]
        for key in gone:
            del self._held[key]
        return len(gone)

    def records(self, now_ms: int) -> Iterator[AcceptedRecord]:
        """Every unexpired record held (expired ones are dropped on the way)."""
        self.expire(now_ms)
        return iter(list(self._held.values()))


# --- the node's own record ----------------------------------------------------------------


class OwnRecord:
    """This node's own record: what it advertises, re-signed when it changes or ages.

    Sequence numbers are ``max(previous + 1, now_ms)``: they keep growing across restarts (as
    long as the wall clock does), so a restarted node's first record is not rejected as stale by
    DHT nodes that still hold its previous one.
    """

    def __init__(
        self,
        identity: Identity,
        envelope_key: bytes,
        *,
        addresses: Sequence[Address] = (),
        relay_hints: Sequence[RelayHint] = (),
        key_package: bytes | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
    ) -> None:
        if not 60_000 <= ttl_ms <= MAX_LIFETIME_MS:
            raise ValueError("a record lives between one minute and one week")
        self.identity = identity
        self.envelope_key = envelope_key
        self.ttl_ms = ttl_ms
        self._addresses = tuple(PeerAddress.of(a) for a in addresses)
        self._relay_hints = tuple(relay_hints)
        self._key_package = key_package
        self._sequence = 0
        self._current: AcceptedRecord | None = None
        self._changed = True

    @property
    def current(self) -> AcceptedRecord | None:
        """The last record signed, if any."""
        return self._current

    def update(
        self,
        *,
        addresses: Sequence[Address] | None = None,
        relay_hints: Sequence[RelayHint] | None = None,
        key_package: bytes | None = None,
        drop_key_package: bool = False,
    ) -> bool:
        """Change what the record says (``None`` leaves a field as it is); True if it changed.

        The next :meth:`due` is then true, so the change is published at the next chance.
        """
        before = (self._addresses, self._relay_hints, self._key_package)
        if addresses is not None:
            self._addresses = tuple(PeerAddress.of(a) for a in addresses)
        if relay_hints is not None:
            self._relay_hints = tuple(relay_hints)
        if drop_key_package:
            self._key_package = None
        elif key_package is not None:
            self._key_package = key_package
        changed = before != (self._addresses, self._relay_hints, self._key_package)
        self._changed = self._changed or changed
        return changed

    def due(self, now_ms: int) -> bool:
        """Whether a new record should be signed and published now.

        True when nothing was signed yet, something changed, or less than half of the last
        record's lifetime is left.
        """
        if self._current is None or self._changed:
            return True
        return self._current.record.expires_at_ms - now_ms < self.ttl_ms // 2

    def sign(self, now_ms: int) -> bytes:
        """A new signed record with a higher sequence, valid for ``ttl_ms`` from ``now_ms``."""
        self._sequence = max(self._sequence + 1, now_ms)
        record = PeerRecord(
            identity_key=self.identity.public_key,
            envelope_key=self.envelope_key,
            addresses=self._addresses,
            relay_hints=self._relay_hints,
            key_package=self._key_package,
            sequence=self._sequence,
            expires_at_ms=now_ms + self.ttl_ms,
        )
        signed = sign_record(self.identity, record)
        self._current = AcceptedRecord(record, signed)
        self._changed = False
        return signed
