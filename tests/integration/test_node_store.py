"""The node's SQLCipher database on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.app.store import (
    NodeStore,
    SeenPeer,
    StoredDelivery,
    StoredMessage,
    derive_store_keys,
)
from node.core import wire
from node.core.errors import StorageError
from node.core.identity import mailbox_of
from node.core.keyfile import FAST_KDF


def envelope(n: int) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16),
        b"\x01" * 32,
        wire.EnvelopeKind.APPLICATION,
        b"ciphertext %d" % n,
        b"group",
        n,
    )


def test_keys_come_from_the_passphrase_and_a_private_salt(tmp_path: Path) -> None:
    db_key, mls_key = derive_store_keys(tmp_path, b"pw", FAST_KDF, bytes(range(16)))
    # The salt is made once: a later open with other fresh bytes derives the same keys.
    assert (db_key, mls_key) == derive_store_keys(tmp_path, b"pw", FAST_KDF, bytes(16))
    assert (tmp_path / "store.salt").read_bytes() == bytes(range(16))
    assert db_key != mls_key
    assert derive_store_keys(tmp_path, b"other", FAST_KDF, bytes(16))[0] != db_key
    assert (tmp_path / "store.salt").stat().st_mode & 0o777 == 0o600


def test_nothing_is_readable_on_disk_and_a_wrong_key_is_refused(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = NodeStore(tmp_path / "node.db", key)
    store.save_contact(b"\x02" * 32, "a-very-recognisable-name", ("127.0.0.1", 7001))
    store.close()
    for file in tmp_path.iterdir():
        assert b"a-very-recognisable-name" not in file.read_bytes()
    with pytest.raises(StorageError, match="wrong passphrase"):
        NodeStore(tmp_path / "node.db", os.urandom(32))
    reopened = NodeStore(tmp_path / "node.db", key)
    assert reopened.contacts() == [(b"\x02" * 32, "a-very-recognisable-name", ("127.0.0.1", 7001))]


def test_incoming_envelopes_are_kept_once_until_applied(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = NodeStore(tmp_path / "node.db", key)
    first, second = envelope(1), envelope(2)
    assert store.stash_incoming([first, second], "direct") == [first.id, second.id]
    assert store.stash_incoming([first], "relay") == []  # a duplicate is not stashed again
    store.close()
    store = NodeStore(tmp_path / "node.db", key)  # as after a crash before applying
    pending = store.pending_incoming()
    assert [(env.id, path) for _, env, path in pending] == [
        (first.id, "direct"),
        (second.id, "direct"),
    ]
    seq, env, path = pending[0]
    store.complete_incoming(seq, StoredMessage(env.id, env.group_id, b"\x03" * 32, "hi", path))
    assert [e.id for _, e, _ in store.pending_incoming()] == [second.id]
    assert [m.text for m in store.messages()] == ["hi"]


def test_outbox_survives_until_done(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = NodeStore(tmp_path / "node.db", key)
    env = envelope(1)
    store.outbox_put([(b"\x04" * 32, env)])
    store.outbox_failed(env.id)
    store.close()
    store = NodeStore(tmp_path / "node.db", key)
    assert store.outbox() == [(b"\x04" * 32, env, 1)]
    store.outbox_done(env.id)
    assert store.outbox() == []
    store.set_int("relay_cursor", 42)
    assert store.get_int("relay_cursor") == 42


def test_database_files_are_private(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db", os.urandom(32))
    store.save_contact(b"\x02" * 32, "x", None)
    for file in tmp_path.glob("node.db*"):
        assert file.stat().st_mode & 0o777 == 0o600, file.name


def test_an_mdns_claim_never_replaces_or_deletes_a_proven_peer(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db", os.urandom(32))
    proven = SeenPeer("bobfp", "bob", "lan", "127.0.0.2", 7002, "confirmed", 1)
    store.save_peer(proven)
    # A spoofed advertisement with bob's fingerprint, then its goodbye.
    store.save_peer_claim(SeenPeer("bobfp", "mallory", "lan", "127.0.0.9", 6666, "claimed", 2))
    store.forget_peer_claim("bobfp")
    assert store.peers() == [proven]
    # Claims of unproven peers come and go as advertised.
    claim = SeenPeer("carolfp", "carol", "lan", "127.0.0.3", 7003, "claimed", 3)
    store.save_peer_claim(claim)
    assert claim in store.peers()
    store.forget_peer_claim("carolfp")
    assert store.peers() == [proven]
    store.close()


def test_a_relay_failure_notice_fails_only_what_that_relay_took_for_that_recipient(
    tmp_path: Path,
) -> None:
    store = NodeStore(tmp_path / "node.db", os.urandom(32))
    bob, carol = b"\x0b" * 32, b"\x0c" * 32
    message = b"m" * 16
    relayed, direct, queued, for_carol = (os.urandom(16) for _ in range(4))
    store.save_deliveries(
        [
            StoredDelivery(relayed, message, bob, "relay", ""),
            StoredDelivery(direct, message, bob, "direct", ""),
            StoredDelivery(queued, message, bob, "queued", "unreachable"),
            StoredDelivery(for_carol, message, carol, "relay", ""),
        ]
    )
    # The notice names all four as bob's, and one id this node never sent.
    named = [(e, mailbox_of(bob)) for e in (relayed, direct, queued, for_carol, os.urandom(16))]
    failed = store.fail_relayed(named, "dropped")
    assert failed == [StoredDelivery(relayed, message, bob, "failed", "dropped")]
    states = {d.envelope_id: d.state for d in store.deliveries_of([message])}
    assert states == {relayed: "failed", direct: "direct", queued: "queued", for_carol: "relay"}
    assert store.fail_relayed(named, "dropped") == []  # told twice: changed once
