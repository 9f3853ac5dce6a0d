"""Peer records: codec, signatures, every rejection reason, the record book, our own record."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

import discovery
from discovery.records import (
    MAX_LIFETIME_MS,
    MAX_SIGNED_RECORD_SIZE,
    SIGNATURE_CONTEXT,
    AcceptedRecord,
    AddressFamily,
    OwnRecord,
    PeerAddress,
    PeerRecord,
    RecordBook,
    RejectedRecord,
    Rejection,
    RelayHint,
    _decode_signed,
    _encode_signed,
    decode_record,
    encode_record,
    sign_record,
    validate,
)
from node.core.errors import RemoteProtocolError
from node.core.hybrid_kem import generate_keypair
from node.core.identity import Identity

NOW = 1_800_000_000_000
ENVELOPE_KEY = generate_keypair(bytes(32))[1]


def make_record(
    identity: Identity, *, sequence: int = 1, expires: int = NOW + 60_000
) -> PeerRecord:
    return PeerRecord(
        identity_key=identity.public_key,
        envelope_key=ENVELOPE_KEY,
        addresses=(PeerAddress.of(("192.0.2.7", 4433)), PeerAddress.of(("2001:db8::7", 4433))),
        relay_hints=(RelayHint("relay.example.org", 7000, bytes(range(32))),),
        key_package=b"kp" * 100,
        sequence=sequence,
        expires_at_ms=expires,
    )


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


def test_record_round_trips_through_the_codec(alice: Identity) -> None:
    record = make_record(alice)
    assert decode_record(encode_record(record)) == record
    bare = PeerRecord(alice.public_key, ENVELOPE_KEY, (), (), None, 0, 1)
    assert decode_record(encode_record(bare)) == bare


def test_signed_record_validates(alice: Identity) -> None:
    record = make_record(alice)
    signed = sign_record(alice, record)
    verdict = validate(signed, NOW, expected_identity=alice.public_key)
    assert isinstance(verdict, AcceptedRecord) and verdict.ok
    assert verdict.record == record and verdict.signed == signed
    assert verdict.record.dial_addresses == (("192.0.2.7", 4433), ("2001:db8::7", 4433))


def test_signature_is_over_the_label_and_exact_record_bytes(alice: Identity) -> None:
    record_bytes, signature = _decode_signed(sign_record(alice, make_record(alice)))
    alice.private_key.public_key().verify(signature, SIGNATURE_CONTEXT + record_bytes)
    # The same signature over the bare record bytes (no label) must not verify as a record.
    bare_sig = alice.private_key.sign(record_bytes)
    assert validate(_encode_signed(record_bytes, bare_sig), NOW) == RejectedRecord(
        Rejection.BAD_SIGNATURE
    )


def test_cannot_sign_someone_elses_record(alice: Identity) -> None:
    with pytest.raises(ValueError, match="own"):
        sign_record(Identity.generate(), make_record(alice))


def test_oversized_record_cannot_be_signed(alice: Identity) -> None:
    big = PeerRecord(alice.public_key, ENVELOPE_KEY, (), (), b"x" * 7000, 1, NOW + 1)
    with pytest.raises(ValueError, match="over 8000"):
        sign_record(alice, big)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"x" * (MAX_SIGNED_RECORD_SIZE + 1), Rejection.OVERSIZED),
        (b"", Rejection.MALFORMED),
        (b"\x00" * 7, Rejection.MALFORMED),
        (b"\xff" * 64, Rejection.MALFORMED),
        ("text, not bytes", Rejection.MALFORMED),
        (12345, Rejection.MALFORMED),
        ([b"a", b"b"], Rejection.MALFORMED),
        (None, Rejection.MALFORMED),
    ],
)
def test_garbage_is_rejected_without_raising(data: object, reason: Rejection) -> None:
    assert validate(data, NOW) == RejectedRecord(reason)


def test_unsigned_record(alice: Identity) -> None:
    unsigned = _encode_signed(encode_record(make_record(alice)), b"")
    assert validate(unsigned, NOW) == RejectedRecord(Rejection.UNSIGNED)


def test_forged_record_has_a_bad_signature(alice: Identity) -> None:
    mallory = Identity.generate()
    record_bytes = encode_record(make_record(alice))
    forged = _encode_signed(
        record_bytes, mallory.private_key.sign(SIGNATURE_CONTEXT + record_bytes)
    )
    assert validate(forged, NOW) == RejectedRecord(Rejection.BAD_SIGNATURE)


def test_altered_record_has_a_bad_signature(alice: Identity) -> None:
    record_bytes, signature = _decode_signed(sign_record(alice, make_record(alice)))
    moved = encode_record(make_record(alice, sequence=2))  # any field changed after signing
    assert validate(_encode_signed(moved, signature), NOW) == RejectedRecord(
        Rejection.BAD_SIGNATURE
    )
    assert (
        validate(_encode_signed(record_bytes, signature[:-1] + bytes([signature[-1] ^ 1])), NOW).ok
        is False
    )


def test_wrong_identity(alice: Identity) -> None:
    signed = sign_record(alice, make_record(alice))
    verdict = validate(signed, NOW, expected_identity=Identity.generate().public_key)
    assert verdict == RejectedRecord(Rejection.WRONG_IDENTITY)


def test_expiry_is_checked_against_the_given_time(alice: Identity) -> None:
    signed = sign_record(alice, make_record(alice, expires=NOW + 10))
    assert validate(signed, NOW + 9).ok
    assert validate(signed, NOW + 10) == RejectedRecord(Rejection.EXPIRED)


def test_a_record_claiming_more_than_a_week_is_malformed(alice: Identity) -> None:
    signed = sign_record(alice, make_record(alice, expires=NOW + MAX_LIFETIME_MS + 1))
    assert validate(signed, NOW) == RejectedRecord(Rejection.MALFORMED)


def test_stale_when_a_newer_sequence_is_known(alice: Identity) -> None:
    signed = sign_record(alice, make_record(alice, sequence=5))
    assert validate(signed, NOW, known_sequence=6) == RejectedRecord(Rejection.STALE)
    assert validate(signed, NOW, known_sequence=5).ok


def test_bit_flips_never_raise_and_never_pass(alice: Identity) -> None:
    signed = sign_record(alice, make_record(alice))
    rng = random.Random(7)
    for _ in range(400):
        flipped = bytearray(signed)
        position = rng.randrange(len(flipped))
        flipped[position] ^= 1 << rng.randrange(8)
        verdict = validate(bytes(flipped), NOW)
        # A flip may land in padding capnp never reads; then the record is still the signed one.
        assert not verdict.ok or verdict.record == make_record(alice)


@pytest.mark.parametrize(
    "bad",
    [
        lambda a: PeerAddress("example.org", 1, AddressFamily.IPV4),
        lambda a: PeerAddress("192.0.2.1", 1, AddressFamily.IPV6),
        lambda a: PeerAddress("192.0.2.1", 0, AddressFamily.IPV4),
        lambda a: RelayHint("relay host", 1, bytes(32)),
        lambda a: RelayHint("relay", 1, bytes(31)),
        lambda a: PeerRecord(a, ENVELOPE_KEY[:-1], (), (), None, 1, 1),
        lambda a: PeerRecord(a, ENVELOPE_KEY, (), (), b"", 1, 1),
        lambda a: PeerRecord(a, ENVELOPE_KEY, (), (), None, -1, 1),
        lambda a: PeerRecord(
            a, ENVELOPE_KEY, tuple(PeerAddress.of(("::1", p)) for p in range(1, 10)), (), None, 1, 1
        ),
    ],
)
def test_local_misuse_raises_value_error(alice: Identity, bad: object) -> None:
    with pytest.raises(ValueError):
        bad(alice.public_key)  # type: ignore[operator]


def test_decode_rejects_a_bad_family_and_bad_addresses(alice: Identity) -> None:
    import schemas

    msg = schemas.peer_record.PeerRecord.new_message()
    msg.identityKey = alice.public_key
    msg.envelopeKey = ENVELOPE_KEY
    address = msg.init("addresses", 1)[0]
    address.host = "not-an-ip"
    address.port = 1
    with pytest.raises(RemoteProtocolError):
        decode_record(bytes(msg.to_bytes()))


# --- the record book ------------------------------------------------------------------------


def test_book_keeps_the_newest_and_counts_drops(alice: Identity) -> None:
    book = RecordBook()
    old = sign_record(alice, make_record(alice, sequence=1))
    new = sign_record(alice, make_record(alice, sequence=2))
    assert book.offer(new, NOW).ok
    assert book.offer(old, NOW) == RejectedRecord(Rejection.STALE)
    assert book.offer(new, NOW).ok  # the same record again is fine
    assert book.offer(b"junk", NOW) == RejectedRecord(Rejection.MALFORMED)
    held = book.get(alice.public_key, NOW)
    assert held is not None and held.record.sequence == 2
    assert book.known_sequence(alice.public_key) == 2
    assert book.dropped == {Rejection.STALE: 1, Rejection.MALFORMED: 1}


def test_book_first_of_two_equal_sequences_wins(alice: Identity) -> None:
    book = RecordBook()
    first = sign_record(alice, make_record(alice, sequence=3))
    second = sign_record(alice, make_record(alice, sequence=3, expires=NOW + 99_999))
    assert book.offer(first, NOW).ok
    assert book.offer(second, NOW) == RejectedRecord(Rejection.STALE)
    held = book.get(alice.public_key, NOW)
    assert held is not None and held.signed == first


def test_book_forgets_expired_records(alice: Identity) -> None:
    book = RecordBook()
    book.offer(sign_record(alice, make_record(alice, expires=NOW + 5)), NOW)
    assert book.get(alice.public_key, NOW + 4) is not None
    assert book.get(alice.public_key, NOW + 5) is None
    assert len(book) == 0
    # Once the newer one expired, an older but still valid record may be offered again.
    book.offer(sign_record(alice, make_record(alice, sequence=9, expires=NOW + 5)), NOW)
    assert book.offer(sign_record(alice, make_record(alice, sequence=1)), NOW + 6).ok


def test_book_is_bounded(alice: Identity) -> None:
    book = RecordBook(capacity=3)
    people = [Identity.generate() for _ in range(5)]
    for i, person in enumerate(people):
        book.offer(sign_record(person, make_record(person, expires=NOW + 1000 + i)), NOW)
    assert len(book) == 3
    assert book.evicted == 2
    # The ones closest to expiry made room.
    assert [p.public_key in book for p in people] == [False, False, True, True, True]


def test_book_expects_identity(alice: Identity) -> None:
    book = RecordBook()
    signed = sign_record(alice, make_record(alice))
    assert book.offer(signed, NOW, expected_identity=bytes(32)) == RejectedRecord(
        Rejection.WRONG_IDENTITY
    )


# --- our own record -------------------------------------------------------------------------


def test_own_record_sequences_grow_across_restarts(alice: Identity) -> None:
    own = OwnRecord(alice, ENVELOPE_KEY, addresses=[("127.0.0.1", 4433)])
    a = validate(own.sign(NOW), NOW)
    b = validate(own.sign(NOW), NOW)  # same millisecond: still a higher sequence
    assert isinstance(a, AcceptedRecord) and isinstance(b, AcceptedRecord)
    assert b.record.sequence == a.record.sequence + 1
    restarted = OwnRecord(alice, ENVELOPE_KEY, addresses=[("127.0.0.1", 4433)])
    c = validate(restarted.sign(NOW + 1000), NOW)
    assert isinstance(c, AcceptedRecord) and c.record.sequence > b.record.sequence


def test_own_record_is_due_when_new_changed_or_half_gone(alice: Identity) -> None:
    own = OwnRecord(alice, ENVELOPE_KEY, ttl_ms=600_000)
    assert own.due(NOW)
    own.sign(NOW)
    assert not own.due(NOW + 299_999)
    assert own.due(NOW + 300_001)
    own.sign(NOW + 300_001)
    assert not own.update(addresses=[])  # nothing changed
    assert not own.due(NOW + 300_002)
    assert own.update(addresses=[("10.0.0.2", 4433)])
    assert own.due(NOW + 300_002)
    signed = own.sign(NOW + 300_002)
    verdict = validate(signed, NOW + 300_002)
    assert isinstance(verdict, AcceptedRecord)
    assert verdict.record.dial_addresses == (("10.0.0.2", 4433),)
    assert own.current == verdict


def test_own_record_key_package_and_relays(alice: Identity) -> None:
    own = OwnRecord(alice, ENVELOPE_KEY, key_package=b"kp")
    own.update(relay_hints=[RelayHint("10.1.1.1", 7000, bytes(32))])
    verdict = validate(own.sign(NOW), NOW)
    assert isinstance(verdict, AcceptedRecord)
    assert verdict.record.key_package == b"kp"
    assert verdict.record.relay_hints[0].address == ("10.1.1.1", 7000)
    assert own.update(drop_key_package=True)
    verdict = validate(own.sign(NOW), NOW)
    assert isinstance(verdict, AcceptedRecord) and verdict.record.key_package is None


def test_own_record_ttl_is_bounded(alice: Identity) -> None:
    with pytest.raises(ValueError):
        OwnRecord(alice, ENVELOPE_KEY, ttl_ms=MAX_LIFETIME_MS + 1)


# --- purity ---------------------------------------------------------------------------------

PURE = ["records.py", "lan.py"]
FORBIDDEN = {"asyncio", "socket", "threading", "time", "random", "zeroconf", "kademlia", "rpcudp"}


@pytest.mark.parametrize("name", PURE)
def test_pure_discovery_modules_import_no_io_clock_or_randomness(name: str) -> None:
    path = Path(discovery.__file__).parent / name
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & FORBIDDEN == set()
