"""The node's MLS wrapper: reading a message's cleartext header, and the binding's proposal
and committer errors as the node sees them."""

from __future__ import annotations

import pytest
from openmls_bindings import CIPHERSUITE_X25519_AES128GCM, CIPHERSUITE_XWING

from node.core.identity import Identity
from node.mls import (
    ContentType,
    GroupError,
    MessageHeader,
    MissingProposalError,
    MlsClient,
    MlsGroup,
    NotCommitterError,
    read_header,
)
from node.transport.runtime import RealRuntime
from tests.mls_support import new_client

# The adapter takes only the clock and the RNG seed from its runtime (no loop, no thread).
RUNTIME = RealRuntime("qpc-mls-test")


@pytest.fixture
def trio() -> tuple[MlsGroup, MlsGroup, MlsGroup]:
    alice, bob, carol = (MlsClient(Identity.generate(), RUNTIME) for _ in range(3))
    group = alice.create_group(b"room")
    _commit, welcome = group.commit([bob.key_package(), carol.key_package()])
    assert welcome is not None
    return group, bob.join(welcome), carol.join(welcome)


def test_the_header_of_each_kind_of_group_message(
    trio: tuple[MlsGroup, MlsGroup, MlsGroup],
) -> None:
    alice, bob, _carol = trio
    assert read_header(bob.encrypt(b"hi")) == MessageHeader(b"room", 1, ContentType.APPLICATION)
    assert read_header(bob.propose_update()) == MessageHeader(b"room", 1, ContentType.PROPOSAL)
    commit, _ = alice.commit()
    assert read_header(commit) == MessageHeader(b"room", 1, ContentType.COMMIT)


def test_anything_else_has_no_header(trio: tuple[MlsGroup, MlsGroup, MlsGroup]) -> None:
    alice, bob, _carol = trio
    key_package = MlsClient(Identity.generate(), RUNTIME).key_package()
    _commit, welcome = alice.commit([key_package])
    message = bob.encrypt(b"hi")
    for data in (
        b"",
        b"\x00\x01",
        b"garbage bytes that are not MLS",
        key_package,
        welcome or b"",
        message[:12],  # truncated inside the epoch
        b"\x00\x02" + message[2:],  # another protocol version
        message[:4] + b"\xc0" + message[5:],  # a 0b11 length prefix is invalid
    ):
        assert read_header(data) is None, data[:8].hex()
    # An unknown content type after a valid epoch.
    length = 1 + len(b"room")
    tampered = bytearray(message)
    tampered[4 + length + 8] = 9
    assert read_header(bytes(tampered)) is None


def test_a_commit_before_its_update_proposal_is_a_missing_proposal(
    trio: tuple[MlsGroup, MlsGroup, MlsGroup],
) -> None:
    alice, bob, carol = trio
    proposal = bob.propose_update()
    alice.process(proposal)
    commit, _ = alice.commit()
    with pytest.raises(MissingProposalError):
        carol.process(commit)
    assert carol.epoch == 1
    carol.process(proposal)
    assert carol.process(commit).epoch == 2


def test_only_the_committer_commits(trio: tuple[MlsGroup, MlsGroup, MlsGroup]) -> None:
    _alice, bob, _carol = trio
    with pytest.raises(NotCommitterError):
        bob.commit()
    with pytest.raises(NotCommitterError):
        bob.self_update()


def test_the_header_of_a_public_message() -> None:
    # External commits are always PublicMessages (ADR 0003), with a new_member_commit sender.
    creator = new_client(bytes([1]) * 32).create_group(b"open room", external_joins=True)
    _joined, commit = new_client(bytes([2]) * 32).join_external(creator.export_group_info())
    assert read_header(commit) == MessageHeader(b"open room", 0, ContentType.COMMIT)


def test_the_node_makes_post_quantum_groups_and_key_packages() -> None:
    alice, bob = MlsClient(Identity.generate(), RUNTIME), MlsClient(Identity.generate(), RUNTIME)
    group = alice.create_group(b"room")
    assert group.ciphersuite == CIPHERSUITE_XWING
    _commit, welcome = group.commit([bob.key_package()])
    assert welcome is not None
    assert bob.join(welcome).ciphersuite == CIPHERSUITE_XWING
    # A KeyPackage of the classical suite cannot join the node's groups.
    classical = new_client(bytes([9]) * 32).key_package(CIPHERSUITE_X25519_AES128GCM)
    with pytest.raises(GroupError):
        group.commit([classical])
