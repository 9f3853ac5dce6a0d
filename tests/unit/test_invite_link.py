"""Invite links: round trip, fixed vectors (v2, and v1 still read), the envelope key they carry,
and every way a link is refused."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest

import schemas
from node.app.qr import qr_matrix
from node.core.hybrid_kem import HybridPrivateKey
from node.core.identity import Identity
from node.core.invite_link import (
    MAX_LINK_LENGTH,
    SIGNATURE_CONTEXT,
    SIGNATURE_CONTEXTS,
    InviteLink,
    InviteLinkError,
    InviteLinkExpiredError,
    InviteLinkFormatError,
    InviteLinkSignatureError,
    InviteLinkVersionError,
    LinkRelay,
    decode_invite_link,
    encode_invite_link,
    looks_like_invite_link,
)

ALICE = Identity.from_seed(bytes(range(32)))
RELAY = Identity.from_seed(bytes(range(32, 64)))
MALLORY = Identity.from_seed(bytes(range(64, 96)))
NOW = 1_780_000_000_000

LINK = InviteLink(
    identity_key=ALICE.public_key,
    display_name="alice",
    addresses=(("192.0.2.7", 4433), ("2001:db8::7", 4433)),
    relay=LinkRelay(("relay.example.org", 7000), RELAY.public_key),
    issued_at_ms=NOW,
)
ENVELOPE_KEY = HybridPrivateKey(bytes(range(96, 128))).public_key
SEALED_LINK = dataclasses.replace(LINK, envelope_key=ENVELOPE_KEY)
# The same link as bytes on the page: pins the encoding (packed Cap'n Proto, then Ed25519).
VECTOR = (
    "qpc://v2/ECFQAgU-iERwngEAADERAgERHTIRHScRPR8RZQL_A6EHv_POEL4DHXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    "H2FsaWNlUQgBAQNREREJUgNREREJYv8xOTIuMC4yLgABN_8yMDAxOmRiOAAHOjo3UQQBAgNYGxEFkjENAgH_cmVs"
    "YXkuZXgBYW1wbGUub3IBZ_8prLrhQbzK8AOyLhqU000LxzYeUm0L_hLIl5S8kyKWbdeunmQhWtlp--BlsUTc2szDc-yD"
    "rLQlPjNAdQO1EXqfeCgp3Fex-EWgdh0jsaZahxoRm0p7qzPnX93SoFn2rr0E"
)
# What version 1 of this program made of LINK: still read, as a link without an envelope key.
V1_VECTOR = (
    "qpc://v1/ECBQAgQ-iERwngEAADENAgERGTIRGScROR__A6EHv_POEL4DHXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    "H2FsaWNlUQgBAQNREREJUgNREREJYv8xOTIuMC4yLgABN_8yMDAxOmRiOAAHOjo3UQQBAgNYGxEFkjENAgH_cmVs"
    "YXkuZXgBYW1wbGUub3IBZ_8prLrhQbzK8AOyLhqU000LxzYeUm0L_hLIl5S8kyKWbddF89LelwjnRXI24N4YffRD"
    "B-tviyipow8n02TaXZhbcemFyHkvStaHHfl93bUKutxUqNYrFFBQkS34QGPr8usN"
)


def body(text: str) -> bytes:
    b64 = text.split("/", 3)[3]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


def wrap(raw: bytes, version: int = 2) -> str:
    return f"qpc://v{version}/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(msg: object, identity: Identity, version: int = 2) -> str:
    """A link of a hand-built message, signed properly (to reach the checks after the signature)."""
    packed = bytes(msg.to_bytes_packed())  # type: ignore[attr-defined]
    context = SIGNATURE_CONTEXTS[version]
    return wrap(packed + identity.private_key.sign(context + packed), version)


def test_a_link_round_trips() -> None:
    for link in (LINK, SEALED_LINK):
        text = encode_invite_link(link, ALICE)
        assert text.startswith("qpc://v2/")
        assert decode_invite_link(text, now_ms=NOW) == link
    assert decode_invite_link(encode_invite_link(SEALED_LINK, ALICE), now_ms=NOW).envelope_key == (
        ENVELOPE_KEY
    )


def test_the_encoding_matches_the_known_vectors() -> None:
    assert SIGNATURE_CONTEXT == b"quicnprotochat invite link v2\x00"
    assert encode_invite_link(LINK, ALICE) == VECTOR
    assert decode_invite_link(VECTOR, now_ms=NOW) == LINK
    sealed = encode_invite_link(SEALED_LINK, ALICE)
    assert hashlib.sha256(sealed.encode()).hexdigest() == (
        "6078093aadede73f86c1873d4bc0ffbf6a3a0efad39b15d0f3256a88ad06e35b"
    )


def test_a_version_1_link_still_reads_and_carries_no_envelope_key() -> None:
    link = decode_invite_link(V1_VECTOR, now_ms=NOW)
    assert link == LINK
    assert link.envelope_key is None


def test_a_version_1_link_never_yields_an_envelope_key_even_if_it_holds_one() -> None:
    # Version 1 had no such field: bytes there were never meant (nor checked) as a key.
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = ALICE.public_key
    msg.displayName = "alice"
    msg.envelopeKey = ENVELOPE_KEY
    as_v1 = signed(msg, ALICE, version=1)
    msg.clear_write_flag()
    as_v2 = signed(msg, ALICE, version=2)
    assert decode_invite_link(as_v1, now_ms=NOW).envelope_key is None
    assert decode_invite_link(as_v2, now_ms=NOW).envelope_key == ENVELOPE_KEY


def test_a_version_2_link_relabelled_as_version_1_is_refused() -> None:
    # Otherwise anyone could strip the envelope key from a link by changing two characters.
    text = encode_invite_link(SEALED_LINK, ALICE)
    with pytest.raises(InviteLinkSignatureError, match="altered"):
        decode_invite_link("qpc://v1/" + text[len("qpc://v2/") :], now_ms=NOW)


def test_a_swapped_envelope_key_fails_the_signature() -> None:
    # mallory puts their own envelope key into alice's link, to read what is sealed "to alice".
    raw = body(encode_invite_link(SEALED_LINK, ALICE))
    theirs = HybridPrivateKey(bytes(range(128, 160))).public_key
    start = raw.find(ENVELOPE_KEY[:64])
    assert start > 0
    evil = bytearray(raw)
    # Packing copies runs of non-zero words verbatim: the key's bytes sit in the link as is,
    # bar tag bytes; replace the first 64 where they are.
    evil[start : start + 64] = theirs[:64]
    with pytest.raises(InviteLinkSignatureError, match="altered"):
        decode_invite_link(wrap(bytes(evil)), now_ms=NOW)


def test_a_signed_link_with_an_unusable_envelope_key_is_refused() -> None:
    for key in (bytes(100), ENVELOPE_KEY[:-1], b"\xff" * len(ENVELOPE_KEY)):
        msg = schemas.invite_link.InviteLink.new_message()
        msg.identityKey = ALICE.public_key
        msg.displayName = "alice"
        msg.envelopeKey = key
        with pytest.raises(InviteLinkFormatError, match=r"malformed: (an|the) envelope public key"):
            decode_invite_link(signed(msg, ALICE), now_ms=NOW)


def test_the_longest_link_still_fits_a_qr_code() -> None:
    link = dataclasses.replace(
        SEALED_LINK,
        display_name="x" * 64,
        addresses=(("2001:db8:1234:5678:9abc:def0:1234:5678", 44333),) * 4,
    )
    text = encode_invite_link(link, ALICE)
    assert len(text) <= MAX_LINK_LENGTH
    padded = text + "A" * (MAX_LINK_LENGTH - len(text))
    assert len(qr_matrix(padded)) == 177 + 2 * 4  # version 40, quiet zone included


def test_a_minimal_link_has_no_addresses_relay_or_expiry() -> None:
    minimal = InviteLink(ALICE.public_key, "alice")
    back = decode_invite_link(encode_invite_link(minimal, ALICE), now_ms=NOW)
    assert back == minimal
    assert back.addresses == () and back.relay is None and back.expires_at_ms is None


def test_the_name_is_kept_exactly_as_signed_control_characters_too() -> None:
    name = "\x1b[31mZoë 👩‍👩‍👧\u202e"
    link = InviteLink(ALICE.public_key, name)
    assert decode_invite_link(encode_invite_link(link, ALICE), now_ms=NOW).display_name == name


def test_a_pasted_link_may_be_wrapped_and_padded_with_white_space() -> None:
    text = encode_invite_link(LINK, ALICE)
    pasted = "  " + text[:40] + "\n" + text[40:90] + "\r\n " + text[90:] + "\n"
    assert decode_invite_link(pasted, now_ms=NOW) == LINK
    assert looks_like_invite_link(pasted)
    assert looks_like_invite_link("QPC://v1/x")
    assert not looks_like_invite_link("alice=" + "00" * 32)


def test_every_altered_byte_is_refused() -> None:
    raw = body(encode_invite_link(SEALED_LINK, ALICE))
    for position in range(len(raw)):
        for bit in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[position] ^= bit
            with pytest.raises(InviteLinkError):
                decode_invite_link(wrap(bytes(tampered)), now_ms=NOW)


def test_a_changed_name_or_address_fails_the_signature() -> None:
    raw = body(encode_invite_link(LINK, ALICE))
    packed, signature = raw[:-64], raw[-64:]
    evil = packed.replace(b"alice", b"alicf")
    assert evil != packed
    with pytest.raises(InviteLinkSignatureError, match="altered"):
        decode_invite_link(wrap(evil + signature), now_ms=NOW)


def test_a_link_naming_alices_key_but_signed_by_another_is_refused() -> None:
    # mallory signs a link that claims alice's identity key (and mallory's address).
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = ALICE.public_key
    msg.displayName = "alice"
    address = msg.init("addresses", 1)
    address[0].host, address[0].port = "203.0.113.66", 4433
    with pytest.raises(InviteLinkSignatureError):
        decode_invite_link(signed(msg, MALLORY), now_ms=NOW)


def test_expiry() -> None:
    link = InviteLink(ALICE.public_key, "alice", issued_at_ms=NOW, expires_at_ms=NOW + 1000)
    text = encode_invite_link(link, ALICE)
    assert decode_invite_link(text, now_ms=NOW + 999) == link
    with pytest.raises(InviteLinkExpiredError, match="expired"):
        decode_invite_link(text, now_ms=NOW + 1000)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("https://example.org/v1/abc", InviteLinkFormatError, "starts with qpc://"),
        ("qpc://", InviteLinkFormatError, "qpc://v2/"),
        ("qpc://v1", InviteLinkFormatError, "qpc://v2/"),
        ("qpc://x1/abcd", InviteLinkFormatError, "qpc://v2/"),
        ("qpc://v3/abcd", InviteLinkVersionError, "version 3"),
        ("qpc://v0/abcd", InviteLinkVersionError, "version 0"),
        ("qpc://v1/%%%%", InviteLinkFormatError, "base64url"),
        ("qpc://v1/ab+/", InviteLinkFormatError, "base64url"),
        ("qpc://v1/abcde", InviteLinkFormatError, "base64url"),
        ("qpc://v1/abcd", InviteLinkFormatError, "cut short"),
        ("qpc://v1/" + "A" * (MAX_LINK_LENGTH), InviteLinkFormatError, "at most"),
        (
            wrap(bytes(schemas.invite_link.InviteLink.new_message().to_bytes_packed()) + bytes(64)),
            InviteLinkFormatError,
            "identity key",
        ),
    ],
)
def test_what_is_not_a_link_is_refused_with_a_reason(
    text: str, error: type[InviteLinkError], match: str
) -> None:
    with pytest.raises(error, match=match):
        decode_invite_link(text, now_ms=NOW)


def test_a_truncated_link_is_refused() -> None:
    text = encode_invite_link(LINK, ALICE)
    for cut in (10, 40, len(text) // 2, len(text) - 1):
        with pytest.raises(InviteLinkError):
            decode_invite_link(text[:cut], now_ms=NOW)


def test_a_signed_but_malformed_link_is_refused() -> None:
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = ALICE.public_key
    msg.displayName = "alice"
    msg.init("addresses", 9)  # more than a link may list, and hosts left empty
    with pytest.raises(InviteLinkFormatError, match="malformed"):
        decode_invite_link(signed(msg, ALICE), now_ms=NOW)
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = ALICE.public_key
    msg.displayName = ""
    with pytest.raises(InviteLinkFormatError, match="display name"):
        decode_invite_link(signed(msg, ALICE), now_ms=NOW)
    msg = schemas.invite_link.InviteLink.new_message()
    msg.identityKey = ALICE.public_key
    msg.displayName = "alice"
    relays = msg.init("relays", 2)
    for r in relays:
        r.host, r.port, r.identityKey = "relay", 7000, RELAY.public_key
    with pytest.raises(InviteLinkFormatError, match="more than one relay"):
        decode_invite_link(signed(msg, ALICE), now_ms=NOW)


def test_local_misuse_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="signed by the identity it names"):
        encode_invite_link(LINK, MALLORY)
    with pytest.raises(ValueError, match="display name"):
        InviteLink(ALICE.public_key, "x" * 65)
    with pytest.raises(ValueError, match="port"):
        InviteLink(ALICE.public_key, "alice", addresses=(("192.0.2.1", 0),))
    with pytest.raises(ValueError, match="spaces"):
        InviteLink(ALICE.public_key, "alice", addresses=(("a\x1bb", 1),))
