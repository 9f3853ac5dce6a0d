"""Group operations of the OpenMLS binding: the committer policy, proposals, removal,
hand-over, external joins, the exporter, X-Wing groups and the KeyPackage pool.

In memory only (no files); persistence is in tests/integration/test_mls_persistence.py.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openmls_bindings import (
    CIPHERSUITE_X25519_AES128GCM,
    CIPHERSUITE_XWING,
    InvalidInputError,
    InvalidMessageError,
    MlsError,
    NotCommitterError,
    NotMemberError,
    WrongCiphersuiteError,
    key_package_identity,
)

from tests.mls_support import Member, new_client, seed, wall_clock_ms


def make_group(
    n: int, suite: int = CIPHERSUITE_X25519_AES128GCM, *, external_joins: bool = False
) -> list[Member]:
    """Member 0 creates the group (and is its committer) and adds members 1..n-1."""
    members = [Member(new_client(seed(i + 1))) for i in range(n)]
    members[0].group = members[0].client.create_group(b"room", suite, external_joins=external_joins)
    if n > 1:
        _commit, welcome = members[0].g.add_members(
            [m.client.key_package(suite) for m in members[1:]]
        )
        for m in members[1:]:
            m.group = m.client.join(welcome)
    return members


@pytest.fixture
def trio() -> list[Member]:
    return make_group(3)


def deliver(message: bytes, *receivers: Member) -> None:
    for r in receivers:
        r.g.process(message)


# --- the committer policy --------------------------------------------------------------------


def test_the_creator_is_the_committer(trio: list[Member]) -> None:
    alice, bob, carol = trio
    for m in trio:
        assert m.g.committer == alice.identity
        assert m.g.external_joins is False
        assert m.g.is_active is True
        assert m.g.pending_proposals == 0
    assert bob.g.members() == [(0, alice.identity), (1, bob.identity), (2, carol.identity)]


def test_a_member_who_is_not_the_committer_cannot_commit(trio: list[Member]) -> None:
    _alice, bob, carol = trio
    dave_kp = new_client(seed(4)).key_package()
    attempts: list[Callable[[], object]] = [
        lambda: bob.g.commit(),
        lambda: bob.g.commit([dave_kp]),
        lambda: bob.g.add_members([dave_kp]),
        lambda: bob.g.remove_members([carol.identity]),
        lambda: bob.g.self_update(),
        lambda: bob.g.hand_over(carol.identity),
    ]
    for attempt in attempts:
        with pytest.raises(NotCommitterError, match="send a proposal"):
            attempt()
    assert bob.g.epoch == 1
    assert bob.g.last_commit() is None


def test_a_remove_proposal_is_committed_by_the_committer(trio: list[Member]) -> None:
    alice, bob, carol = trio
    proposal = bob.g.propose_remove(carol.identity)
    got = alice.g.process(proposal)
    assert (got.kind, got.sender, got.added, got.removed) == ("proposal", bob.identity, [], [])
    assert alice.g.pending_proposals == 1
    commit, welcome = alice.g.commit()
    assert welcome is None
    assert alice.g.pending_proposals == 0
    # Only the committer received the proposal: it was re-issued by value, so the
    # others can process the commit without it.
    got = bob.g.process(commit)
    assert (got.kind, got.sender, got.removed, got.self_removed) == (
        "commit",
        alice.identity,
        [carol.identity],
        False,
    )
    got = carol.g.process(commit)
    assert (got.removed, got.self_removed) == ([carol.identity], True)
    assert carol.g.is_active is False
    with pytest.raises(NotMemberError):
        carol.g.encrypt(b"still here?")
    with pytest.raises(NotMemberError):
        carol.g.propose_update()
    assert alice.g.members() == bob.g.members() == [(0, alice.identity), (1, bob.identity)]
    assert bob.g.process(alice.g.encrypt(b"just us")).plaintext == b"just us"


def test_leaving_is_a_proposal_the_committer_commits(trio: list[Member]) -> None:
    alice, bob, carol = trio
    alice.g.process(carol.g.leave())
    commit, _ = alice.g.commit()
    assert bob.g.process(commit).removed == [carol.identity]
    assert carol.g.process(commit).self_removed is True
    assert not carol.g.is_active


def test_a_removed_member_can_be_added_again(trio: list[Member]) -> None:
    alice, bob, carol = trio
    deliver(alice.g.remove_members([carol.identity]), bob, carol)
    assert not carol.g.is_active
    with pytest.raises(NotMemberError):
        carol.g.exporter("x", b"", 16)
    # A last-resort KeyPackage survives the join, so the second join below meets it.
    commit, welcome = alice.g.add_members([carol.client.last_resort_key_package()])
    bob.g.process(commit)
    carol.group = carol.client.join(welcome)  # replaces the state of the old membership
    assert carol.g.is_active
    assert carol.client.group_ids() == [b"room"]
    assert carol.g.process(bob.g.encrypt(b"welcome back")).plaintext == b"welcome back"
    with pytest.raises(MlsError, match="already a member"):
        carol.client.join(welcome)


def test_the_committer_must_hand_over_before_leaving(trio: list[Member]) -> None:
    alice, bob, carol = trio
    with pytest.raises(MlsError, match="hand_over"):
        alice.g.leave()
    with pytest.raises(InvalidInputError, match="hand_over first"):
        alice.g.remove_members([alice.identity])
    commit = alice.g.hand_over(bob.identity)
    deliver(commit, bob, carol)
    assert {m.g.committer for m in trio} == {bob.identity}
    bob.g.process(alice.g.leave())
    commit, _ = bob.g.commit()
    assert alice.g.process(commit).self_removed is True
    assert carol.g.process(commit).removed == [alice.identity]
    assert carol.g.committer == bob.identity


def test_hand_over_moves_the_role(trio: list[Member]) -> None:
    alice, bob, carol = trio
    commit = alice.g.hand_over(bob.identity)
    assert alice.g.committer == bob.identity
    got = carol.g.process(commit)
    assert (got.kind, got.sender) == ("commit", alice.identity)
    bob.g.process(commit)
    with pytest.raises(NotCommitterError):
        alice.g.self_update()
    commit = bob.g.self_update()
    deliver(commit, alice, carol)
    assert {m.g.epoch for m in trio} == {3}
    assert carol.g.process(bob.g.encrypt(b"new boss")).plaintext == b"new boss"


def test_hand_over_needs_another_member(trio: list[Member]) -> None:
    alice, _bob, _carol = trio
    with pytest.raises(InvalidInputError):
        alice.g.hand_over(new_client(seed(9)).identity)
    with pytest.raises(InvalidInputError):
        alice.g.hand_over(alice.identity)
    assert alice.g.epoch == 1


def test_an_update_proposal_is_committed_by_reference(trio: list[Member]) -> None:
    """Updates cannot be re-issued by value: every member needs the proposal first."""
    alice, bob, carol = trio
    proposal = bob.g.propose_update()
    alice.g.process(proposal)
    commit, _ = alice.g.commit()
    with pytest.raises(InvalidMessageError, match="has not received"):
        carol.g.process(commit)
    assert carol.g.epoch == 1
    carol.g.process(proposal)
    assert carol.g.process(commit).epoch == 2
    assert bob.g.process(commit).epoch == 2
    assert carol.g.process(bob.g.encrypt(b"fresh keys")).plaintext == b"fresh keys"


def test_members_keep_sending_while_proposals_wait_for_the_committer(
    trio: list[Member],
) -> None:
    alice, bob, carol = trio
    proposal = bob.g.propose_update()
    carol.g.process(proposal)
    assert bob.g.pending_proposals == carol.g.pending_proposals == 1
    # The committer is away: messages still flow, proposals stay pending.
    assert carol.g.process(bob.g.encrypt(b"from bob")).plaintext == b"from bob"
    assert bob.g.process(carol.g.encrypt(b"from carol")).plaintext == b"from carol"
    assert carol.g.pending_proposals == 1
    alice.g.process(proposal)
    commit, _ = alice.g.commit()
    deliver(commit, bob, carol)
    assert {m.g.epoch for m in trio} == {2}
    assert {m.g.pending_proposals for m in trio} == {0}


def test_one_commit_covers_every_pending_proposal(trio: list[Member]) -> None:
    alice, bob, carol = trio
    dave, erin = Member(new_client(seed(4))), Member(new_client(seed(5)))
    alice.g.process(bob.g.propose_add(dave.client.key_package()))
    # A second proposal for the same person is dropped, not an error.
    alice.g.process(carol.g.propose_add(dave.client.key_package()))
    alice.g.process(bob.g.propose_remove(carol.identity))
    commit, welcome = alice.g.commit([erin.client.key_package()])
    assert welcome is not None
    got = bob.g.process(commit)
    assert sorted(got.added) == sorted([dave.identity, erin.identity])
    assert got.removed == [carol.identity]
    dave.group = dave.client.join(welcome)
    erin.group = erin.client.join(welcome)
    assert dave.g.members() == alice.g.members() == erin.g.members()
    assert len(alice.g.members()) == 4
    assert alice.g.last_commit() == (commit, welcome)
    # Whom it goes to: the commit to the others of the epoch it ended (carol too, so she learns
    # she is out), the Welcome to the newcomers.
    recipients = alice.g.last_commit_recipients()
    assert recipients is not None
    assert recipients[0] == [bob.identity, carol.identity]
    assert sorted(recipients[1]) == sorted([dave.identity, erin.identity])
    assert bob.g.last_commit_recipients() is None


def test_pending_adds_need_a_call_that_returns_a_welcome(trio: list[Member]) -> None:
    alice, bob, carol = trio
    alice.g.process(bob.g.propose_add(new_client(seed(4)).key_package()))
    attempts: list[Callable[[], object]] = [
        lambda: alice.g.remove_members([carol.identity]),
        lambda: alice.g.self_update(),
        lambda: alice.g.hand_over(bob.identity),
    ]
    for attempt in attempts:
        with pytest.raises(MlsError, match="commit"):
            attempt()
    assert alice.g.epoch == 1
    assert alice.g.pending_proposals == 1
    _commit, welcome = alice.g.commit()
    assert welcome is not None


def test_the_committers_own_proposals_are_committed_too(trio: list[Member]) -> None:
    alice, bob, carol = trio
    alice.g.propose_remove(carol.identity)
    commit, _ = alice.g.commit()
    assert bob.g.process(commit).removed == [carol.identity]


def test_remove_members_and_self_update(trio: list[Member]) -> None:
    alice, bob, carol = trio
    secret = alice.g.exporter("test", b"ctx", 32)
    commit = alice.g.self_update()
    deliver(commit, bob, carol)
    assert alice.g.exporter("test", b"ctx", 32) != secret
    commit = alice.g.remove_members([bob.identity])
    assert carol.g.process(commit).removed == [bob.identity]
    assert bob.g.process(commit).self_removed
    with pytest.raises(InvalidInputError):
        alice.g.remove_members([bob.identity])
    with pytest.raises(InvalidInputError):
        alice.g.remove_members([])


def test_proposals_need_a_member(trio: list[Member]) -> None:
    _alice, bob, _carol = trio
    with pytest.raises(InvalidInputError):
        bob.g.propose_remove(new_client(seed(9)).identity)
    with pytest.raises(InvalidInputError, match="leave"):
        bob.g.propose_remove(bob.identity)
    with pytest.raises(InvalidInputError):
        bob.g.propose_add(b"not a key package")


def test_processed_has_no_membership_changes_for_messages(trio: list[Member]) -> None:
    alice, bob, _carol = trio
    got = bob.g.process(alice.g.encrypt(b"x"))
    assert (got.added, got.removed, got.self_removed) == ([], [], False)


# --- exporter and group info ----------------------------------------------------------------


def test_the_exporter_agrees_across_members(trio: list[Member]) -> None:
    alice, bob, carol = trio
    secrets = {m.g.exporter("quicnprotochat call", b"ctx", 32) for m in trio}
    assert len(secrets) == 1
    assert len(secrets.pop()) == 32
    assert alice.g.exporter("other label", b"ctx", 32) != bob.g.exporter("x", b"ctx", 32)
    assert alice.g.exporter("l", b"a", 16) != alice.g.exporter("l", b"b", 16)
    assert len(carol.g.exporter("l", b"", 8160)) == 8160  # 255 SHA-256 blocks
    for length in (0, 8161, 1 << 40):
        with pytest.raises(InvalidInputError, match="between 1 and 8160"):
            alice.g.exporter("l", b"", length)
    with pytest.raises(OverflowError):
        alice.g.exporter("l", b"", -1)


@pytest.mark.parametrize("suite", [CIPHERSUITE_X25519_AES128GCM, CIPHERSUITE_XWING])
def test_external_join_when_the_group_allows_it(suite: int) -> None:
    alice, bob = make_group(2, suite, external_joins=True)
    assert alice.g.external_joins and bob.g.external_joins
    erin = Member(new_client(seed(5)))
    erin.group, commit = erin.client.join_external(alice.g.export_group_info())
    assert erin.g.epoch == 2
    assert erin.g.committer == alice.identity
    for m in (alice, bob):
        got = m.g.process(commit)
        assert (got.kind, got.sender, got.added) == ("commit", erin.identity, [erin.identity])
    assert alice.g.process(erin.g.encrypt(b"knock knock")).plaintext == b"knock knock"
    assert erin.g.process(bob.g.encrypt(b"come in")).plaintext == b"come in"
    assert erin.g.last_commit() == (commit, None)
    with pytest.raises(NotCommitterError):
        erin.g.self_update()


def test_external_join_is_refused_by_default(trio: list[Member]) -> None:
    alice, _bob, _carol = trio
    erin = new_client(seed(5))
    with pytest.raises(NotCommitterError, match="external joins"):
        erin.join_external(alice.g.export_group_info())
    assert erin.group_ids() == []


def test_group_info_is_not_a_welcome_or_message(trio: list[Member]) -> None:
    alice, bob, _carol = trio
    info = alice.g.export_group_info()
    with pytest.raises(InvalidInputError):
        new_client(seed(5)).join(info)
    with pytest.raises(InvalidInputError):
        bob.g.process(info)
    with pytest.raises(InvalidInputError):
        new_client(seed(5)).join_external(alice.g.encrypt(b"x"))


# --- ciphersuites -------------------------------------------------------------------------------


def test_xwing_group_round_trip() -> None:
    alice, bob, carol = make_group(3, CIPHERSUITE_XWING)
    assert CIPHERSUITE_XWING == 0x004D
    assert {m.g.ciphersuite for m in (alice, bob, carol)} == {CIPHERSUITE_XWING}
    kp = new_client(seed(4)).key_package(CIPHERSUITE_XWING)
    assert len(kp) > 2000  # ML-KEM-768 + X25519 keys
    assert carol.g.process(bob.g.encrypt(b"post-quantum")).plaintext == b"post-quantum"
    commit = alice.g.self_update()
    deliver(commit, bob, carol)
    assert bob.g.process(carol.g.encrypt(b"after update")).plaintext == b"after update"


def test_key_packages_must_match_the_groups_suite() -> None:
    alice, _bob = make_group(2, CIPHERSUITE_XWING)
    dave = new_client(seed(4))
    with pytest.raises(WrongCiphersuiteError, match="0x0001"):
        alice.g.add_members([dave.key_package()])
    with pytest.raises(WrongCiphersuiteError):
        alice.g.propose_add(dave.key_package())
    classic, _ = make_group(2)
    with pytest.raises(WrongCiphersuiteError, match="0x004d"):
        classic.g.add_members([dave.key_package(CIPHERSUITE_XWING)])
    assert alice.g.epoch == classic.g.epoch == 1


# --- KeyPackages -------------------------------------------------------------------------------


def test_the_key_package_pool() -> None:
    bob = new_client(seed(2))
    kps = bob.key_packages(5)
    assert len(set(kps)) == 5
    assert {key_package_identity(kp, now_ms=wall_clock_ms()) for kp in kps} == {bob.identity}
    assert bob.unused_key_packages() == 5
    assert bob.unused_key_packages(CIPHERSUITE_XWING) == 0
    assert bob.key_packages(0) == []
    with pytest.raises(InvalidInputError):
        bob.key_packages(1001)
    alice = new_client(seed(1))
    group = alice.create_group(b"g")
    _commit, welcome = group.add_members([kps[2]])
    bob.join(welcome)
    assert bob.unused_key_packages() == 4


def test_the_last_resort_key_package_is_stable_and_reusable() -> None:
    bob = new_client(seed(2))
    last_resort = bob.last_resort_key_package()
    assert bob.last_resort_key_package() == last_resort
    assert bob.last_resort_key_package(CIPHERSUITE_XWING) != last_resort
    assert bob.unused_key_packages() == 0  # not part of the single-use pool
    # It joins any number of groups.
    for n in range(3):
        group = new_client(seed(10 + n)).create_group(b"g%d" % n)
        _commit, welcome = group.add_members([last_resort])
        bob_group = bob.join(welcome)
        assert bob_group.process(group.encrypt(b"hi")).plaintext == b"hi"
    rotated = bob.rotate_last_resort()
    assert rotated != last_resort
    assert bob.last_resort_key_package() == rotated
    # The previous one still works until the next rotation.
    group = new_client(seed(20)).create_group(b"late")
    bob.join(group.add_members([last_resort])[1])
    bob.rotate_last_resort()
    group = new_client(seed(21)).create_group(b"too late")
    with pytest.raises(InvalidMessageError):
        bob.join(group.add_members([last_resort])[1])


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """An RFC 9420 §2.1.2 variable-length integer: (value, next offset)."""
    prefix = data[at] >> 6
    size = 1 << prefix
    value = int.from_bytes(data[at : at + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, at + size


def _vector(data: bytes, at: int) -> int:
    length, at = _varint(data, at)
    return at + length


def _encode_vector(payload: bytes) -> bytes:
    n = len(payload)
    if n < 64:
        return bytes([n]) + payload
    if n < 16384:
        return struct.pack(">H", 0x4000 | n) + payload
    return struct.pack(">I", 0x80000000 | n) + payload


def _sign_with_label(key: Ed25519PrivateKey, label: bytes, content: bytes) -> bytes:
    """RFC 9420 §5.1.2 SignWithLabel."""
    return key.sign(_encode_vector(b"MLS 1.0 " + label) + _encode_vector(content))


def key_package_with_lifetime(signing_seed: bytes, not_before: int, not_after: int) -> bytes:
    """A valid KeyPackage of ``signing_seed``'s client, re-signed with another lifetime."""
    kp = new_client(signing_seed).key_package()
    key = Ed25519PrivateKey.from_private_bytes(signing_seed)
    # MLSMessage header (version, wire format), KeyPackage version and suite.
    at = 2 + 2 + 2 + 2
    at = _vector(kp, at)  # init_key
    leaf_start = at
    at = _vector(kp, at)  # encryption_key
    at = _vector(kp, at)  # signature_key
    at += 2  # credential_type
    at = _vector(kp, at)  # identity
    for _ in range(5):  # capabilities
        at = _vector(kp, at)
    assert kp[at] == 1  # leaf_node_source = key_package
    lifetime_at = at + 1
    at = lifetime_at + 16
    at = _vector(kp, at)  # leaf extensions
    leaf_tbs = (
        kp[leaf_start:lifetime_at]
        + struct.pack(">QQ", not_before, not_after)
        + kp[lifetime_at + 16 : at]
    )
    leaf = leaf_tbs + _encode_vector(_sign_with_label(key, b"LeafNodeTBS", leaf_tbs))
    at = _vector(kp, at)  # leaf signature
    extensions_end = _vector(kp, at)
    kp_tbs = kp[4:leaf_start] + leaf + kp[at:extensions_end]
    return kp[:4] + kp_tbs + _encode_vector(_sign_with_label(key, b"KeyPackageTBS", kp_tbs))


def test_an_expired_key_package_is_refused(trio: list[Member]) -> None:
    alice, bob, _carol = trio
    now = int(time.time())
    fresh = key_package_with_lifetime(seed(4), now - 60, now + 3600)
    assert (
        key_package_identity(fresh, now_ms=wall_clock_ms()) == new_client(seed(4)).identity
    )  # the re-signing is right
    expired = key_package_with_lifetime(seed(4), now - 7200, now - 60)
    with pytest.raises(InvalidMessageError, match=r"(?i)lifetime|expired"):
        key_package_identity(expired, now_ms=wall_clock_ms())
    with pytest.raises(InvalidMessageError):
        alice.g.add_members([expired])
    with pytest.raises(InvalidMessageError):
        alice.g.commit([expired])
    with pytest.raises(InvalidMessageError):
        bob.g.propose_add(expired)
    assert alice.g.epoch == 1
    # The fresh one (whose private keys live in another client) is accepted.
    alice.g.add_members([fresh])
    assert alice.g.epoch == 2


def test_wrong_python_types_raise_type_error(trio: list[Member]) -> None:
    alice, _bob, _carol = trio
    with pytest.raises(TypeError):
        alice.g.remove_members(b"not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.g.exporter(b"label", b"", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        new_client(seed(1), storage_path=3, storage_key=b"k" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="together"):
        new_client(seed(1), storage_key=b"k" * 32)


# --- processing a delivery again (crash recovery) ----------------------------------------------


def test_the_same_delivery_processed_again_gets_the_same_outcome(trio: list[Member]) -> None:
    alice, bob, _carol = trio
    message = alice.g.encrypt(b"once")
    first = bob.g.process(message, delivery_id=b"envelope-1")
    again = bob.g.process(message, delivery_id=b"envelope-1")
    assert (first.plaintext, first.repeated) == (b"once", False)
    assert (again.plaintext, again.sender, again.repeated) == (b"once", alice.identity, True)
    # Under another id, or none, it is a replay, refused as MLS refuses it.
    for other in (b"envelope-2", None):
        with pytest.raises(InvalidMessageError):
            bob.g.process(message, delivery_id=other)
    commit = alice.g.self_update()
    assert bob.g.process(commit, delivery_id=b"commit").epoch == 2
    repeated = bob.g.process(commit, delivery_id=b"commit")
    assert (repeated.kind, repeated.epoch, repeated.repeated) == ("commit", 2, True)
    assert bob.g.epoch == 2


def test_only_the_last_256_deliveries_are_remembered(trio: list[Member]) -> None:
    alice, bob, _carol = trio
    first = alice.g.encrypt(b"first")
    bob.g.process(first, delivery_id=b"first")
    for i in range(255):
        bob.g.process(alice.g.encrypt(b"%d" % i), delivery_id=b"%d" % i)
    assert bob.g.process(first, delivery_id=b"first").repeated
    bob.g.process(alice.g.encrypt(b"one more"), delivery_id=b"one more")
    with pytest.raises(InvalidMessageError):
        bob.g.process(first, delivery_id=b"first")
