"""The pure pieces of relay accounts: the account calls on the wire, the account store's
versioned schema, and the refund of the login-attempt buckets."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.core import wire
from node.core.errors import ErrorCode, StorageError
from relay.limits import TokenBuckets
from relay.store_accounts import SCHEMA_VERSION, AccountStore, Session, UsernameTakenError


@pytest.mark.parametrize(
    "message",
    [
        wire.RegisterStart("alice", b"r" * 32),
        wire.RegisterFinish("alice", b"u" * 192),
        wire.LoginStart("bob.b", b"k" * 96),
        wire.LoginFinish(b"i" * 16, b"f" * 64),
        wire.Authenticate(b"t" * 32),
        wire.Logout(b"t" * 32),
    ],
)
def test_account_requests_round_trip(message: wire.Request) -> None:
    assert wire.decode_request(wire.encode_request(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        wire.RegisterStartResult(b"x" * 64),
        wire.RegisterFinishResult(),
        wire.LoginStartResult(b"i" * 16, b"k" * 320),
        wire.SessionResult(b"t" * 32, 1_700_000_000_000),
        wire.SessionInfo(5),
        wire.LogoutResult(),
        wire.ErrorResult(ErrorCode.UNAUTHENTICATED, "log in"),
        wire.ErrorResult(ErrorCode.CONFLICT, "taken"),
    ],
)
def test_account_responses_round_trip(message: wire.Response) -> None:
    assert wire.decode_response(wire.encode_response(message)) == message


def test_tokens_and_opaque_messages_stay_out_of_reprs() -> None:
    token = bytes(range(32))
    for value in (wire.Authenticate(token), wire.Logout(token), wire.SessionResult(token, 1)):
        assert token.hex() not in repr(value) and repr(token) not in repr(value)


def test_usernames_follow_one_rule() -> None:
    for good in ("alice", "a", "bob.smith_2-x", "0" * 32):
        assert wire.USERNAME.fullmatch(good)
    for bad in ("", "Alice", ".alice", "a" * 33, "al ice", "alice:x", "al\u00efce", "a\n"):
        assert wire.USERNAME.fullmatch(bad) is None, bad


def test_a_refund_restores_what_was_spent_and_never_more() -> None:
    buckets = TokenBuckets(rate=0.001, burst=3)
    for _ in range(3):
        assert buckets.take("alice", 0.0)
    assert not buckets.take("alice", 0.0)
    buckets.give_back("alice", 0.0)
    assert buckets.take("alice", 0.0)
    for _ in range(10):
        buckets.give_back("alice", 0.0)
    assert buckets.available("alice", 0.0) == 3


def test_the_store_survives_reopening_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    store = AccountStore(path)
    assert store.schema_version == SCHEMA_VERSION
    store.register("alice", b"r" * 192, 1)
    with pytest.raises(UsernameTakenError):
        store.register("alice", b"other", 2)
    store.open_session(b"h" * 32, Session("alice", b"k" * 32, expires_ms=100), 1, keep=8)
    store.close()

    again = AccountStore(path)
    assert again.record("alice") == b"r" * 192 and again.accounts == 1
    assert again.has_live_session(b"k" * 32, now_ms=99)
    assert not again.has_live_session(b"k" * 32, now_ms=100)
    assert again.purge_expired(now_ms=100) == 1 and again.sessions == 0
    again.close()

    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer"):
        AccountStore(path)


def test_an_account_keeps_only_its_newest_sessions(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.sqlite3")
    store.register("alice", b"r" * 192, 1)
    for n in range(5):
        store.open_session(bytes([n]) * 32, Session("alice", b"k" * 32, 10**9), n, keep=3)
    assert store.sessions == 3
    assert store.session(bytes([0]) * 32) is None and store.session(bytes([4]) * 32) is not None
    store.close()
