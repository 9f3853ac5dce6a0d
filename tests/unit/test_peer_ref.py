"""parse_peer_ref: every form a person may name a peer in, and what is refused."""

from __future__ import annotations

import pytest

from node.app.peer_ref import PeerRefError, parse_peer_ref
from node.core.identity import Identity, short_fingerprint
from node.core.invite_link import (
    InviteLink,
    InviteLinkExpiredError,
    InviteLinkSignatureError,
    LinkRelay,
    encode_invite_link,
)

ALICE = Identity.from_seed(bytes(range(32)))
RELAY = Identity.from_seed(bytes(range(32, 64))).public_key
KEY = ALICE.public_key.hex()
NOW = 1_780_000_000_000
LINK = InviteLink(
    ALICE.public_key,
    "alice",
    (("192.0.2.7", 4433), ("192.0.2.8", 4433)),
    LinkRelay(("192.0.2.1", 7000), RELAY),
    NOW,
    NOW + 1000,
)
TEXT = encode_invite_link(LINK, ALICE)


def test_a_link() -> None:
    ref = parse_peer_ref(f"  {TEXT}\n", now_ms=NOW)
    assert ref.identity == ALICE.public_key and ref.name == "alice" and not ref.named
    assert ref.addresses == LINK.addresses and ref.address == ("192.0.2.7", 4433)
    assert ref.relay == LINK.relay and ref.link == LINK


def test_a_link_under_a_name_of_ones_own() -> None:
    ref = parse_peer_ref(f"ally={TEXT}", now_ms=NOW)
    assert ref.name == "ally" and ref.named and ref.link == LINK


def test_name_equals_key_with_and_without_an_address() -> None:
    ref = parse_peer_ref(f"alice={KEY}", now_ms=NOW)
    assert (ref.name, ref.identity, ref.addresses, ref.link) == (
        "alice",
        ALICE.public_key,
        (),
        None,
    )
    ref = parse_peer_ref(f"alice={KEY}@[2001:db8::1]:4433", now_ms=NOW)
    assert ref.address == ("2001:db8::1", 4433)


def test_a_bare_key_only_where_allowed() -> None:
    ref = parse_peer_ref(KEY, now_ms=NOW, allow_bare_key=True)
    assert ref.identity == ALICE.public_key and ref.name == short_fingerprint(ALICE.public_key)
    with pytest.raises(PeerRefError, match="qpc:// link or NAME=KEYHEX"):
        parse_peer_ref(KEY, now_ms=NOW)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (f"={KEY}", "with a name"),
        ("alice=abc", "64 hex digits"),
        (f"alice={KEY}@nowhere", "HOST:PORT"),
    ],
)
def test_what_names_no_peer_is_a_usage_error(text: str, match: str) -> None:
    with pytest.raises(PeerRefError, match=match):
        parse_peer_ref(text, now_ms=NOW)


def test_a_refused_link_raises_the_links_own_error() -> None:
    with pytest.raises(InviteLinkExpiredError):
        parse_peer_ref(TEXT, now_ms=NOW + 1000)
    with pytest.raises(InviteLinkSignatureError):
        parse_peer_ref(f"ally={TEXT[:-2]}{'A' if TEXT[-2] != 'A' else 'B'}{TEXT[-1]}", now_ms=NOW)


def test_node_run_takes_the_relay_a_link_names() -> None:
    from node.app.node_cli import parse_peer
    from node.app.router import RelayInfo
    from node.core.identity import Identity
    from node.core.invite_link import InviteLink, LinkRelay, encode_invite_link

    bob, relay_key = Identity.generate(), Identity.generate().public_key
    link = encode_invite_link(
        InviteLink(
            bob.public_key, "bob", (("127.0.0.1", 7002),), LinkRelay(("127.0.0.1", 7700), relay_key),
            issued_at_ms=1, expires_at_ms=None,
        ),
        bob,
    )  # fmt: skip
    spec = parse_peer(link, now_ms=2)
    assert spec.relay == RelayInfo(("127.0.0.1", 7700), relay_key)
    assert parse_peer(f"bob={bob.public_key.hex()}", now_ms=2).relay is None


def test_the_envelope_key_a_link_carries_reaches_node_run() -> None:
    from node.app.node_cli import parse_peer
    from node.core.hybrid_kem import HybridPrivateKey

    envelope_key = HybridPrivateKey(bytes(32)).public_key
    sealed = encode_invite_link(
        InviteLink(ALICE.public_key, "alice", envelope_key=envelope_key), ALICE
    )
    assert parse_peer_ref(sealed, now_ms=NOW).envelope_key == envelope_key
    assert parse_peer_ref(f"ally={sealed}", now_ms=NOW).envelope_key == envelope_key
    assert parse_peer(sealed, now_ms=NOW).envelope_key == envelope_key
    # A link without one, and a key without a link, carry none: the sender learns it elsewhere.
    assert parse_peer_ref(TEXT, now_ms=NOW).envelope_key is None
    assert parse_peer(f"alice={KEY}", now_ms=NOW).envelope_key is None
