"""Behaviour of the OpenMLS binding (``openmls_bindings``), without sockets.

Build it first: ``cd openmls-bindings && maturin develop --release``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
    Processed,
    StorageError,
    WrongCiphersuiteError,
    WrongEpochError,
    key_package_identity,
    key_package_info,
)

from tests.mls_support import Member as Party
from tests.mls_support import new_client, seed, wall_clock_ms

CHACHA_SUITE = 0x0003  # MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
P256_SUITE = 0x0002  # needs an ECDSA key, which a Client does not have


@pytest.fixture
def trio() -> tuple[Party, Party, Party]:
    """alice's group with bob and carol added in one commit; all at epoch 1."""
    alice, bob, carol = (
        Party(new_client(seed(1))),
        Party(new_client(seed(2))),
        Party(new_client(seed(3))),
    )
    alice.group = alice.client.create_group(b"room-1")
    assert alice.g.epoch == 0
    _commit, welcome = alice.g.add_members([bob.client.key_package(), carol.client.key_package()])
    bob.group = bob.client.join(welcome)
    carol.group = carol.client.join(welcome)
    return alice, bob, carol


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


# --- clients and key packages --------------------------------------------


def test_identity_is_the_ed25519_public_key_of_the_signing_key() -> None:
    expected = Ed25519PrivateKey.from_private_bytes(seed(7)).public_key().public_bytes_raw()
    assert new_client(seed(7)).identity == expected
    assert new_client(seed(8)).identity != expected


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_signing_key_of_wrong_length_is_invalid_input(length: int) -> None:
    with pytest.raises(InvalidInputError, match=f"must be 32 bytes, got {length}"):
        new_client(b"\x01" * length)


def test_key_package_identity_returns_the_owner_identity() -> None:
    bob = new_client(seed(2))
    kp = bob.key_package()
    assert key_package_identity(kp, now_ms=wall_clock_ms()) == bob.identity
    assert (
        key_package_identity(new_client(seed(3)).key_package(), now_ms=wall_clock_ms())
        != bob.identity
    )
    # Each call makes a fresh KeyPackage.
    assert bob.key_package() != kp


def test_key_package_with_broken_signature_is_invalid_message() -> None:
    with pytest.raises(InvalidMessageError):
        key_package_identity(
            flip_last_byte(new_client(seed(2)).key_package()), now_ms=wall_clock_ms()
        )


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x00\x01\x00\x05", b"\xff" * 100, b"not an mls message at all"],
)
def test_key_package_identity_rejects_garbage(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        key_package_identity(data, now_ms=wall_clock_ms())


def test_key_package_identity_rejects_truncation_and_other_messages(
    trio: tuple[Party, Party, Party],
) -> None:
    alice, _bob, _carol = trio
    kp = new_client(seed(9)).key_package()
    with pytest.raises(InvalidInputError):
        key_package_identity(kp[:-10], now_ms=wall_clock_ms())
    with pytest.raises(InvalidInputError):
        key_package_identity(kp + b"\x00", now_ms=wall_clock_ms())
    with pytest.raises(InvalidInputError, match="not a key package"):
        key_package_identity(alice.g.encrypt(b"hi"), now_ms=wall_clock_ms())


# --- group life cycle -----------------------------------------------------


def test_three_members_exchange_messages(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, carol = trio
    assert alice.g.epoch == bob.g.epoch == carol.g.epoch == 1
    assert alice.g.group_id == bob.g.group_id == carol.g.group_id == b"room-1"
    assert alice.g.ciphersuite == bob.g.ciphersuite == CIPHERSUITE_X25519_AES128GCM == 0x0001

    everyone = [alice, bob, carol]
    for sender in everyone:
        text = b"hello from " + sender.identity[:4]
        ciphertext = sender.g.encrypt(text)
        assert text not in ciphertext
        for receiver in everyone:
            if receiver is sender:
                continue
            got = receiver.g.process(ciphertext)
            assert got.kind == "application"
            assert got.plaintext == text
            assert got.sender == sender.identity
            assert got.epoch == 1


def test_members_lists_identities_by_leaf_index(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, carol = trio
    expected = [(0, alice.identity), (1, bob.identity), (2, carol.identity)]
    assert alice.g.members() == expected
    assert bob.g.members() == expected
    assert carol.g.members() == expected


def test_second_add_is_processed_by_existing_members(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, carol = trio
    dave = Party(new_client(seed(4)))
    commit, welcome = alice.g.add_members([dave.client.key_package()])
    assert alice.g.epoch == 2
    for member in (bob, carol):
        got = member.g.process(commit)
        assert got.kind == "commit"
        assert got.sender == alice.identity
        assert got.plaintext is None
        assert got.epoch == 2
    dave.group = dave.client.join(welcome)
    assert {p.g.epoch for p in (alice, bob, carol, dave)} == {2}
    assert dave.g.members() == alice.g.members() == bob.g.members() == carol.g.members()
    assert [identity for _, identity in dave.g.members()] == [
        p.identity for p in (alice, bob, carol, dave)
    ]
    # The newcomer reads the others and is read by them.
    got = dave.g.process(carol.g.encrypt(b"welcome dave"))
    assert (got.plaintext, got.sender) == (b"welcome dave", carol.identity)
    got = bob.g.process(dave.g.encrypt(b"thanks"))
    assert (got.plaintext, got.sender) == (b"thanks", dave.identity)


def test_joiner_proposes_and_the_committer_commits(trio: tuple[Party, Party, Party]) -> None:
    """Only the committer commits; a joiner's add goes through a proposal, and the
    committer's Welcome carries the ratchet tree."""
    alice, bob, carol = trio
    erin = Party(new_client(seed(5)))
    erin_kp = erin.client.key_package()
    with pytest.raises(NotCommitterError):
        bob.g.add_members([erin_kp])
    assert bob.g.epoch == 1
    proposal = bob.g.propose_add(erin_kp)
    got = alice.g.process(proposal)
    assert (got.kind, got.sender) == ("proposal", bob.identity)
    commit, welcome = alice.g.commit()
    assert welcome is not None
    erin.group = erin.client.join(welcome)
    for member in (bob, carol):
        got = member.g.process(commit)
        assert (got.kind, got.sender, got.added) == ("commit", alice.identity, [erin.identity])
    assert erin.g.epoch == alice.g.epoch == bob.g.epoch == 2
    assert alice.g.process(erin.g.encrypt(b"hi")).plaintext == b"hi"


def test_group_keeps_working_after_its_client_is_dropped() -> None:
    alice, bob = new_client(seed(1)), new_client(seed(2))
    group = alice.create_group(b"g")
    _commit, welcome = group.add_members([bob.key_package()])
    alice_identity = alice.identity
    del alice
    gc.collect()
    bob_group = bob.join(welcome)
    got = bob_group.process(group.encrypt(b"still here"))
    assert (got.plaintext, got.sender) == (b"still here", alice_identity)


def test_group_can_be_used_from_another_thread(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    with ThreadPoolExecutor(max_workers=1) as pool:
        ciphertext = pool.submit(alice.g.encrypt, b"from a worker").result()
    assert bob.g.process(ciphertext).plaintext == b"from a worker"


def test_processed_is_read_only(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    got = bob.g.process(alice.g.encrypt(b"x"))
    assert isinstance(got, Processed)
    with pytest.raises(AttributeError):
        got.kind = "commit"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Processed()


# --- bad input and bad messages ------------------------------------------


GARBAGE = [b"", b"\x00", b"\x00\x01\x00\x02", b"\xff" * 64, bytes(range(256))]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_invalid_input_everywhere(trio: tuple[Party, Party, Party], data: bytes) -> None:
    alice, _bob, _carol = trio
    calls: list[Callable[[], object]] = [
        lambda: alice.g.process(data),
        lambda: new_client(seed(9)).join(data),
        lambda: alice.g.add_members([data]),
        lambda: key_package_identity(data, now_ms=wall_clock_ms()),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            call()
    assert alice.g.epoch == 1


def test_truncated_messages_are_rejected(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    ciphertext = alice.g.encrypt(b"hello")
    for cut in (1, 2, 16, len(ciphertext) // 2, len(ciphertext) - 1):
        with pytest.raises(InvalidInputError):
            bob.g.process(ciphertext[:cut])
    # The intact message still works afterwards.
    assert bob.g.process(ciphertext).plaintext == b"hello"


def test_every_single_byte_corruption_is_a_typed_error(
    trio: tuple[Party, Party, Party],
) -> None:
    alice, bob, _carol = trio
    ciphertext = alice.g.encrypt(b"x" * 40)
    seen: set[type[MlsError]] = set()
    for i in range(len(ciphertext)):
        corrupted = ciphertext[:i] + bytes([ciphertext[i] ^ 0x80]) + ciphertext[i + 1 :]
        with pytest.raises(MlsError) as excinfo:
            bob.g.process(corrupted)
        seen.add(type(excinfo.value))
    assert seen <= {InvalidInputError, InvalidMessageError, WrongEpochError}
    assert InvalidMessageError in seen
    assert bob.g.process(ciphertext).plaintext == b"x" * 40


def test_wrong_python_types_raise_type_error(trio: tuple[Party, Party, Party]) -> None:
    """Local misuse is a TypeError, not an MlsError."""
    alice, _bob, _carol = trio
    with pytest.raises(TypeError):
        alice.g.process("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.g.encrypt(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        new_client("0" * 32)  # type: ignore[arg-type]


def test_tampered_ciphertext_is_invalid_message(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    ciphertext = alice.g.encrypt(b"secret words")
    with pytest.raises(InvalidMessageError) as excinfo:
        bob.g.process(flip_last_byte(ciphertext))
    assert "secret words" not in str(excinfo.value)
    assert bob.g.process(ciphertext).plaintext == b"secret words"


def test_replayed_message_is_invalid_message(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    ciphertext = alice.g.encrypt(b"once")
    assert bob.g.process(ciphertext).plaintext == b"once"
    with pytest.raises(InvalidMessageError):
        bob.g.process(ciphertext)


def test_message_for_another_group_is_invalid_message(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    other = alice.client.create_group(b"room-2")
    _commit, welcome = other.add_members([bob.client.key_package()])
    bob.client.join(welcome)
    with pytest.raises(InvalidMessageError, match="another group"):
        bob.g.process(other.encrypt(b"wrong room"))


def test_own_message_cannot_be_processed_by_its_sender(trio: tuple[Party, Party, Party]) -> None:
    alice, _bob, _carol = trio
    with pytest.raises(InvalidMessageError, match="sent by this member"):
        alice.g.process(alice.g.encrypt(b"echo"))


def test_welcome_for_someone_else_is_invalid_message(trio: tuple[Party, Party, Party]) -> None:
    alice, _bob, _carol = trio
    _commit, welcome = alice.g.add_members([new_client(seed(4)).key_package()])
    with pytest.raises(InvalidMessageError):
        new_client(seed(5)).join(welcome)


def test_welcome_cannot_be_used_twice() -> None:
    alice, bob = new_client(seed(1)), new_client(seed(2))
    _commit, welcome = alice.create_group(b"g").add_members([bob.key_package()])
    bob.join(welcome)
    with pytest.raises(InvalidMessageError, match="already used"):
        bob.join(welcome)


def test_welcome_bytes_are_not_a_group_message(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    _commit, welcome = alice.g.add_members([new_client(seed(4)).key_package()])
    with pytest.raises(InvalidInputError, match="not a group message"):
        bob.g.process(welcome)


# --- epochs ---------------------------------------------------------------


def test_application_message_from_a_recent_past_epoch_still_decrypts(
    trio: tuple[Party, Party, Party],
) -> None:
    """The previous epoch keeps its message keys (max_past_epochs = 1)."""
    alice, bob, _carol = trio
    stale = bob.g.encrypt(b"sent at epoch 1")
    alice.g.add_members([new_client(seed(4)).key_package()])
    assert alice.g.epoch == 2
    got = alice.g.process(stale)
    assert (got.plaintext, got.sender, got.epoch) == (b"sent at epoch 1", bob.identity, 2)


def test_application_message_from_an_old_epoch_is_wrong_epoch(
    trio: tuple[Party, Party, Party],
) -> None:
    alice, bob, _carol = trio
    stale = bob.g.encrypt(b"sent at epoch 1")
    for _ in range(2):
        alice.g.self_update()
    assert alice.g.epoch == 3
    with pytest.raises(WrongEpochError, match="message is for epoch 1 but the group is at epoch 3"):
        alice.g.process(stale)


def test_commit_from_a_past_epoch_is_wrong_epoch(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    commit, _welcome = alice.g.add_members([new_client(seed(4)).key_package()])
    assert bob.g.process(commit).epoch == 2
    with pytest.raises(WrongEpochError, match="message is for epoch 1 but the group is at epoch 2"):
        bob.g.process(commit)


def test_message_from_a_future_epoch_is_wrong_epoch(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    alice.g.add_members([new_client(seed(4)).key_package()])
    with pytest.raises(WrongEpochError, match="message is for epoch 2 but the group is at epoch 1"):
        bob.g.process(alice.g.encrypt(b"from the future"))
    assert bob.g.epoch == 1


# --- ciphersuites ---------------------------------------------------------


@pytest.mark.parametrize("suite", [P256_SUITE, 0x0004, 0x0007, 0x9999, -1, 1 << 40])
def test_unsupported_ciphersuite_is_rejected(suite: int) -> None:
    client = new_client(seed(1))
    with pytest.raises(WrongCiphersuiteError):
        client.create_group(b"g", suite)
    with pytest.raises(WrongCiphersuiteError):
        client.key_package(suite)


def test_group_in_another_supported_ciphersuite() -> None:
    alice, bob = new_client(seed(1)), new_client(seed(2))
    group = alice.create_group(b"g", CHACHA_SUITE)
    assert group.ciphersuite == CHACHA_SUITE
    _commit, welcome = group.add_members([bob.key_package(CHACHA_SUITE)])
    bob_group = bob.join(welcome)
    assert bob_group.ciphersuite == CHACHA_SUITE
    assert bob_group.process(group.encrypt(b"chacha")).plaintext == b"chacha"


def test_key_package_of_another_ciphersuite_is_wrong_ciphersuite(
    trio: tuple[Party, Party, Party],
) -> None:
    alice, _bob, _carol = trio
    dave = new_client(seed(4))
    with pytest.raises(WrongCiphersuiteError, match="0x0003"):
        alice.g.add_members([dave.key_package(CHACHA_SUITE)])
    assert alice.g.epoch == 1
    assert len(alice.g.members()) == 3


def test_adding_an_existing_member_is_rejected(trio: tuple[Party, Party, Party]) -> None:
    alice, bob, _carol = trio
    with pytest.raises(InvalidInputError, match="cannot add member"):
        alice.g.add_members([bob.client.key_package()])
    assert alice.g.epoch == 1


def test_empty_group_id_and_empty_add_are_invalid_input(trio: tuple[Party, Party, Party]) -> None:
    alice, _bob, _carol = trio
    with pytest.raises(InvalidInputError):
        alice.client.create_group(b"")
    with pytest.raises(InvalidInputError):
        alice.g.add_members([])


def test_exception_family() -> None:
    for cls in (
        InvalidInputError,
        InvalidMessageError,
        WrongEpochError,
        WrongCiphersuiteError,
        StorageError,
        NotMemberError,
        NotCommitterError,
    ):
        assert issubclass(cls, MlsError)
    assert issubclass(MlsError, Exception)
    assert InvalidInputError.__module__ == "openmls_bindings.exceptions"


def test_key_package_info_gives_the_identity_and_the_suite() -> None:
    bob = new_client(seed(2))
    for suite in (CIPHERSUITE_XWING, CIPHERSUITE_X25519_AES128GCM, CHACHA_SUITE):
        kp = bob.key_package(suite)
        assert key_package_info(kp, now_ms=wall_clock_ms()) == (bob.identity, suite)
    with pytest.raises(InvalidInputError):
        key_package_info(b"\x00\x01 not a key package", now_ms=wall_clock_ms())


def test_served_key_packages_come_in_the_order_asked_from_a_bounded_pool() -> None:
    bob = new_client(seed(2))
    suites = [CIPHERSUITE_X25519_AES128GCM, CIPHERSUITE_XWING]
    first = bob.serve_key_packages(suites, pool_size=1)
    assert [key_package_info(kp, now_ms=wall_clock_ms())[1] for kp in first] == suites
    last_resort = [bob.last_resort_key_package(s) for s in suites]
    assert bob.serve_key_packages(suites, pool_size=1) == last_resort
    assert bob.serve_key_packages(suites, pool_size=2) not in (first, last_resort)
    with pytest.raises(InvalidInputError, match="pool_size"):
        bob.serve_key_packages(suites, pool_size=-1)
    with pytest.raises(WrongCiphersuiteError):
        bob.serve_key_packages([P256_SUITE], pool_size=1)
