"""node.db schema 3: the migration from version 2, and the bounds the store enforces (real
SQLCipher files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlcipher3

from node.app.store import NodeStore, OutboxFullError, Stashed
from node.core import wire
from node.core.identity import mailbox_of

KEY = b"\x11" * 32
DAY = 24 * 3600 * 1000
NOW = 1_800_000_000_000

# The version-2 schema as released (a known-answer fixture: never edit).
SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE contacts (identity BLOB PRIMARY KEY, name TEXT NOT NULL, host TEXT, port INTEGER);
CREATE TABLE seen (envelope_id BLOB PRIMARY KEY);
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, envelope BLOB NOT NULL, path TEXT NOT NULL
);
CREATE TABLE messages (
    envelope_id BLOB PRIMARY KEY, seq INTEGER NOT NULL, group_id BLOB NOT NULL,
    sender BLOB NOT NULL, text TEXT NOT NULL, path TEXT NOT NULL
);
CREATE TABLE secrets (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE peers (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL,
    host TEXT NOT NULL, port INTEGER NOT NULL, status TEXT NOT NULL, seen_at_ms INTEGER NOT NULL
);
CREATE TABLE outbox (
    envelope_id BLOB PRIMARY KEY, recipient BLOB NOT NULL, envelope BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE commits_queued (group_id BLOB PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE mls_bases (salt BLOB PRIMARY KEY);
PRAGMA user_version = 2;
"""


def envelope(
    n: int, created_at_ms: int = NOW, kind: wire.EnvelopeKind = wire.EnvelopeKind.APPLICATION
) -> wire.Envelope:
    return wire.Envelope(
        bytes([n]) * 16, mailbox_of(b"\x05" * 32), kind, b"p", b"g" * 16, created_at_ms
    )


def version_2_database(path: Path) -> None:
    db = sqlcipher3.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO contacts VALUES (?, 'alice', '127.0.0.1', 7001)", (b"\x02" * 32,))
    db.execute("INSERT INTO contacts VALUES (?, 'bob', NULL, NULL)", (b"\x03" * 32,))
    db.execute("INSERT INTO seen VALUES (?)", (envelope(1).id,))
    db.execute(
        "INSERT INTO inbox (envelope, path) VALUES (?, 'relay')",
        (wire.encode_envelope(envelope(2)),),
    )
    db.execute(
        "INSERT INTO messages VALUES (?, 1, ?, ?, 'kept from version 2', 'direct')",
        (b"\x07" * 16, b"g" * 16, b"\x02" * 32),
    )
    db.close()


def test_a_version_2_database_is_migrated_in_place_and_keeps_its_contacts(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    version_2_database(path)
    store = NodeStore(path, KEY, create=False)
    try:
        assert store.contacts_chosen() == [
            (b"\x02" * 32, "alice", ("127.0.0.1", 7001), True),
            (b"\x03" * 32, "bob", None, True),
        ]
        assert [env.id for _, env, _ in store.pending_incoming()] == [envelope(2).id]
        # Messages read before keep their text, as received ones of unknown time.
        [message] = store.messages()
        assert (message.text, message.direction, message.time_ms) == (
            "kept from version 2",
            "in",
            0,
        )
        assert store.conversations() == []
        # The id seen before migration is still a duplicate, and gets a full window.
        stashed = store.stash_bounded(
            [envelope(1), envelope(3)],
            "direct",
            [b"a", b"a"],
            now_ms=NOW,
            window_ms=DAY,
            max_seen=10,
            max_share=10,
        )
        assert (stashed.duplicate, stashed.fresh) == ([envelope(1).id], [envelope(3).id])
    finally:
        store.close()
    db = sqlcipher3.connect(str(path))
    db.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    db.close()
    # Opening again changes nothing more.
    NodeStore(path, KEY, create=False).close()


def test_seen_ids_expire_after_the_window_and_are_bounded(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db", KEY)
    try:

        def stash(envs: list[wire.Envelope], now: int, owner: bytes = b"a") -> Stashed:
            return store.stash_bounded(
                envs,
                "direct",
                [owner] * len(envs),
                now_ms=now,
                window_ms=DAY,
                max_seen=3,
                max_share=2,
            )

        first = stash([envelope(1), envelope(2), envelope(3, NOW + 1)], NOW)
        assert first.fresh == [envelope(1).id, envelope(2).id]
        assert first.refused == {envelope(3, NOW + 1).id: "deferred_share_full"}
        other = stash([envelope(4), envelope(5)], NOW, owner=b"b")
        assert other.fresh == [envelope(4).id]
        assert other.refused == {envelope(5).id: "seen_full"}
        assert store.seen_count() == 3
        # A day later every id has expired and is forgotten.
        later = stash([envelope(6, NOW + DAY + 5)], NOW + DAY + 5, owner=b"c")
        assert later.fresh == [envelope(6).id]
        assert store.seen_count() == 1
    finally:
        store.close()


def test_the_outbox_refuses_application_envelopes_past_its_bounds_and_expires(
    tmp_path: Path,
) -> None:
    store = NodeStore(tmp_path / "node.db", KEY)
    store.set_outbox_bounds(3, 2)
    peer, other = b"\x07" * 32, b"\x08" * 32
    try:
        store.outbox_put([(peer, envelope(1)), (peer, envelope(2))])
        with pytest.raises(OutboxFullError, match="at most 2"):
            store.outbox_put([(peer, envelope(3))])
        # Membership changes are never refused: a group must not fork over a full queue.
        store.outbox_put([(peer, envelope(4, kind=wire.EnvelopeKind.COMMIT))])
        with pytest.raises(OutboxFullError, match="outbox is full"):
            store.outbox_put([(other, envelope(5))])
        assert store.outbox_count() == 3
        assert len(store.outbox_expire(NOW + 1, NOW + 2)) == 3
        assert store.outbox_count() == 0
    finally:
        store.close()
