"""Interoperability of the binding (OpenMLS) with an independent RFC 9420 implementation:
mls-rs, through its Python bindings from PyPI (``agentvault-mls-rs-uniffi``).

Our client creates a group (suite 0x0001) with ``interop=True`` -- a group without our private
committer record, which RFC 9420 would require every member to support -- and adds an mls-rs
client from its KeyPackage; mls-rs joins from our Welcome. Application messages, commits and
exporter secrets then agree both ways. A default group (with the committer record) refuses the
mls-rs KeyPackage, and our clients join an interop group only when they ask to.

mls-rs keeps KeyPackage private keys in memory, so each mls-rs client makes its KeyPackage and
joins in this process; its credential identity is chosen freely, and we choose its Ed25519
signature public key, which is the credential rule of our binding.
"""

from __future__ import annotations

import os

import mls_rs_uniffi as mls_rs
import pytest
from openmls_bindings import (
    CIPHERSUITE_X25519_AES128GCM,
    Client,
    Group,
    InvalidInputError,
    InvalidMessageError,
    NotCommitterError,
)

from node.core import suites
from node.core.identity import Identity
from node.mls import GroupError, MlsClient, key_package_info
from node.transport.runtime import RealRuntime
from tests.mls_support import new_client, wall_clock_ms


class MlsRsMember:
    """An mls-rs client whose BasicCredential identity is its signature public key."""

    def __init__(self) -> None:
        keypair = mls_rs.generate_signature_keypair(mls_rs.CipherSuite.CURVE25519_AES128)
        self.identity: bytes = keypair.public_key.bytes
        self.client = mls_rs.Client(self.identity, keypair, mls_rs.client_config_default())
        self.group: mls_rs.Group | None = None

    def key_package(self) -> bytes:
        return self.client.generate_key_package_message().to_bytes()

    def join(self, welcome: bytes) -> None:
        # Our Welcomes carry the ratchet tree, so none is passed out of band.
        self.group = self.client.join_group(None, mls_rs.Message.from_bytes(welcome)).group

    @property
    def g(self) -> mls_rs.Group:
        assert self.group is not None
        return self.group

    def process(self, message: bytes) -> mls_rs.ReceivedMessage:
        return self.g.process_incoming_message(mls_rs.Message.from_bytes(message))

    def encrypt(self, plaintext: bytes) -> bytes:
        return self.g.encrypt_application_message(plaintext).to_bytes()


def ours_with_mls_rs() -> tuple[Client, Group, MlsRsMember]:
    """Our group (we are the creator) with one mls-rs member who joined from our Welcome."""
    alice = new_client(os.urandom(32))
    group = alice.create_group(b"interop", CIPHERSUITE_X25519_AES128GCM, interop=True)
    theirs = MlsRsMember()
    _commit, welcome = group.add_members([theirs.key_package()])
    theirs.join(welcome)
    return alice, group, theirs


def test_mls_rs_joins_our_group_and_messages_decrypt_both_ways() -> None:
    alice, group, theirs = ours_with_mls_rs()
    assert group.interop is True
    assert group.committer == b""
    assert group.epoch == 1
    assert group.members() == [(0, alice.identity), (1, theirs.identity)]

    # Ours -> mls-rs.
    received = theirs.process(group.encrypt(b"hello from OpenMLS"))
    assert isinstance(received, mls_rs.ReceivedMessage.APPLICATION_MESSAGE)
    assert received.data == b"hello from OpenMLS"
    assert received.sender != theirs.client.signing_identity()

    # mls-rs -> ours, with the right sender.
    processed = group.process(theirs.encrypt(b"hello from mls-rs"))
    assert processed.kind == "application"
    assert processed.plaintext == b"hello from mls-rs"
    assert processed.sender == theirs.identity
    assert processed.epoch == 1

    # Both derive the same key schedule (RFC 9420 §8.5 exporter).
    assert group.exporter("interop", b"ctx", 32) == theirs.g.export_secret(b"interop", b"ctx", 32)


def test_commits_cross_both_ways_in_an_interop_group() -> None:
    alice, group, theirs = ours_with_mls_rs()

    # Our commit (a PrivateMessage) -> mls-rs.
    received = theirs.process(group.self_update())
    assert isinstance(received, mls_rs.ReceivedMessage.COMMIT)
    assert received.effect.is_new_epoch()
    assert group.epoch == 2

    # An interop group has no committer policy: an mls-rs member's commit is accepted. mls-rs
    # sends it as a PublicMessage (wire format 1), which an interop group accepts.
    commit = theirs.g.commit().commit_message.to_bytes()
    assert commit[2:4] == b"\x00\x01"
    processed = group.process(commit)
    assert processed.kind == "commit"
    assert processed.sender == theirs.identity
    assert processed.epoch == 3
    # mls-rs merges its own commit when it processes it.
    assert isinstance(theirs.process(commit), mls_rs.ReceivedMessage.COMMIT)
    assert group.exporter("after", b"", 16) == theirs.g.export_secret(b"after", b"", 16)

    # Another of our clients joins (it must opt in), and messages reach everyone.
    bob = new_client(os.urandom(32))
    add_commit, welcome = group.add_members([bob.key_package()])
    assert isinstance(theirs.process(add_commit), mls_rs.ReceivedMessage.COMMIT)
    with pytest.raises(InvalidMessageError, match="does not record a committer"):
        bob.join(welcome)
    bob_group = bob.join(welcome, interop=True)
    assert bob_group.interop is True and bob_group.epoch == 4
    got = bob_group.process(theirs.encrypt(b"to both"))
    assert (got.plaintext, got.sender) == (b"to both", theirs.identity)
    assert group.process(theirs.encrypt(b"again")).plaintext == b"again"
    received = theirs.process(bob_group.encrypt(b"from bob"))
    assert isinstance(received, mls_rs.ReceivedMessage.APPLICATION_MESSAGE)
    assert received.data == b"from bob"

    # We remove the mls-rs member; it sees its removal.
    remove = group.remove_members([theirs.identity])
    received = theirs.process(remove)
    assert isinstance(received, mls_rs.ReceivedMessage.COMMIT)
    assert received.effect.is_removed()
    assert bob_group.process(remove).removed == [theirs.identity]
    assert [identity for _, identity in bob_group.members()] == [alice.identity, bob.identity]


def test_a_default_group_refuses_an_mls_rs_key_package() -> None:
    """Our committer record is a required capability that mls-rs KeyPackages cannot advertise."""
    alice = new_client(os.urandom(32))
    group = alice.create_group(b"policy")
    theirs = MlsRsMember()
    with pytest.raises(InvalidInputError, match="does not support the committer policy"):
        group.add_members([theirs.key_package()])
    assert group.epoch == 0
    assert group.interop is False and group.committer == alice.identity


def test_interop_group_limits() -> None:
    alice = new_client(os.urandom(32))
    with pytest.raises(InvalidInputError, match="external joins"):
        alice.create_group(b"x", interop=True, external_joins=True)
    _alice, group, theirs = ours_with_mls_rs()
    with pytest.raises(InvalidInputError, match="no committer role"):
        group.hand_over(theirs.identity)
    # Nobody may join an interop group by external commit.
    with pytest.raises(NotCommitterError):
        new_client(os.urandom(32)).join_external(group.export_group_info())


def test_our_node_invites_a_0x0001_only_mls_rs_client_and_they_talk_both_ways() -> None:
    """The node's own MLS engine (``node.mls``) and its suite choice: an mls-rs client offers
    0x0001 alone, so the group is 0x0001 (an X-Wing group cannot take its KeyPackage), and
    messages cross both ways."""
    runtime = RealRuntime("qpc-interop")
    try:
        theirs = MlsRsMember()
        key_package = theirs.key_package()
        identity, suite = key_package_info(key_package, now_ms=wall_clock_ms())
        assert (identity, suite) == (theirs.identity, suites.X25519_AES128GCM)
        choice = suites.choose({identity: {suite}}, {identity: "rs"})
        assert choice.describe({identity: "rs"}) == "0x0001: rs offers no X-Wing"

        ours = MlsClient(Identity.generate(), runtime)
        post_quantum = ours.create_group(b"pq", suites.XWING, interop=True)
        with pytest.raises(GroupError, match="ciphersuite"):
            post_quantum.commit([key_package])
        # mls-rs cannot advertise our committer record: an interop group (no committer policy).
        group = ours.create_group(b"interop-node", choice.suite, interop=True)
        _commit, welcome = group.commit([key_package])
        assert welcome is not None
        theirs.join(welcome)
        assert group.members() == [ours.identity, theirs.identity]

        received = theirs.process(group.encrypt(b"hello from our node"))
        assert isinstance(received, mls_rs.ReceivedMessage.APPLICATION_MESSAGE)
        assert received.data == b"hello from our node"
        back = group.process(theirs.encrypt(b"hello back from mls-rs"))
        assert (back.kind, back.sender, back.plaintext) == (
            "application",
            theirs.identity,
            b"hello back from mls-rs",
        )
    finally:
        runtime.close()
