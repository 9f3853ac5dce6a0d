"""The relay's directory over real QUIC on loopback (KeyPackages, usernames), nodes that invite
an offline peer through it, and the new-mailbox allowance a reader who keeps up no longer
costs its senders."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node.app.directory import UnknownUserError
from node.app.node import Node
from node.app.relay_account import RelayAccountClient, sign_in
from node.app.router import RelayInfo
from node.core import suites, wire
from node.core.errors import ErrorCode, NodeError
from node.core.identity import Identity
from node.core.keyfile import FAST_KDF
from node.core.runtime import Runtime
from node.mls import MlsClient, key_package_info
from node.transport.connection import Caller, PeerConnection
from node.transport.runtime import RealRuntime
from relay.directory_store import DirectoryStore, SuiteCount
from relay.migrations import SCHEMA_VERSION
from tests.conftest import LOOPBACK, RelayProcess, configured_relay, running_endpoint
from tests.node_support import relay_info, wait_until
from tests.runtime_support import Runtimes

DEADLINE = 20.0
PASSWORD = "correct horse battery staple"

GENEROUS = """
calls_per_second = 10000.0
call_burst = 10000
envelopes_per_mailbox_per_second = 10000.0
envelope_burst_per_mailbox = 100000
"""


@contextlib.contextmanager
def relay_process(tmp_path: Path, settings: str) -> Iterator[RelayProcess]:
    with configured_relay(tmp_path, GENEROUS + settings, "directory test") as relay:
        yield relay


@contextlib.asynccontextmanager
async def connected(
    relay: RelayProcess, identity: Identity | None = None
) -> AsyncIterator[PeerConnection]:
    assert relay.address is not None and relay.identity is not None
    async with running_endpoint(identity or Identity.generate(), None) as endpoint:
        yield await endpoint.dial(relay.address, relay.identity)


def envelope(recipient: bytes) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), recipient, wire.EnvelopeKind.APPLICATION, b"ciphertext", b"g", 1
    )


def code_of(answer: wire.Response) -> ErrorCode | None:
    return answer.code if isinstance(answer, wire.ErrorResult) else None


# --- the new-mailbox allowance ----------------------------------------------------------------


async def test_a_mailbox_its_owner_reads_is_not_new_when_acks_emptied_it(tmp_path: Path) -> None:
    """The fault: every message to a reader who keeps up (fetch, ack, mailbox empty) cost the
    sender a new-mailbox token, so relay chat stalled at 1 message a second after 60."""
    reader = Identity.generate()
    settings = "new_mailboxes_per_second = 0.001\nnew_mailbox_burst = 3\n"
    with relay_process(tmp_path, settings) as relay:
        async with connected(relay) as sender, connected(relay, reader) as owner:
            # The allowance is live: three never-read mailboxes spend it, a fourth is refused.
            for _ in range(3):
                stranger = Identity.generate().mailbox
                assert isinstance(
                    await sender.call(wire.Deliver((envelope(stranger),))), wire.DeliverResult
                )
            fourth = await sender.call(wire.Deliver((envelope(Identity.generate().mailbox),)))
            assert code_of(fourth) is ErrorCode.RATE_LIMITED
            # The reader's mailbox: read, emptied by acks, and written to again, 10 times over.
            cursor = 0
            for i in range(10):
                fetched = await owner.call(wire.Fetch(reader.mailbox, cursor, 10))
                assert isinstance(fetched, wire.FetchResult)
                if fetched.envelopes:
                    ids = tuple(e.id for e in fetched.envelopes)
                    assert await owner.call(wire.Ack(reader.mailbox, ids)) == wire.AckResult(1)
                cursor = fetched.cursor
                sent = envelope(reader.mailbox)
                answer = await sender.call(wire.Deliver((sent,)))
                assert answer == wire.DeliverResult((sent.id,)), f"message {i}: {answer}"


# --- KeyPackages at the relay ---------------------------------------------------------------


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_published_key_packages_are_handed_out_once_then_the_last_resort_one(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    bob = Identity.generate()
    mls = MlsClient(bob, runtimes())
    xwing, classic = suites.XWING, suites.X25519_AES128GCM
    singles = (mls.key_package(xwing), mls.key_package(xwing), mls.key_package(classic))
    lasts = (mls.last_resort_key_package(xwing), mls.last_resort_key_package(classic))
    with relay_process(tmp_path, "key_package_low_water = 2\n") as relay:
        async with connected(relay, bob) as owner, connected(relay) as alice:
            # Nothing yet: notFound, and the owner is not told to publish what it never did.
            absent = await alice.call(wire.FetchKeyPackage(bob.public_key))
            assert code_of(absent) is ErrorCode.NOT_FOUND
            before = await owner.call(wire.Fetch(bob.mailbox, 0, 1))
            assert isinstance(before, wire.FetchResult) and not before.key_packages_low

            published = await owner.call(wire.PublishKeyPackages(singles, lasts))
            assert published == wire.PublishKeyPackagesResult(
                (wire.KeyPackageCount(classic, 1, True), wire.KeyPackageCount(xwing, 2, True)),
                32,
            )
            answers = []
            for _ in range(4):
                answer = await alice.call(wire.FetchKeyPackage(bob.public_key))
                assert isinstance(answer, wire.FetchKeyPackageResult)
                answers.append(answer.key_packages)
            # Preferred suite first (the order of the last-resort ones), single-use ones once.
            assert answers == [
                (singles[0], singles[2]),
                (singles[1], lasts[1]),
                lasts,
                lasts,
            ]
            now = wall_ms()
            assert [key_package_info(kp, now_ms=now) for kp in answers[0]] == [
                (bob.public_key, xwing),
                (bob.public_key, classic),
            ]
            # The owner's next fetch says the pool runs low; a status publish shows it empty.
            after = await owner.call(wire.Fetch(bob.mailbox, 0, 1))
            assert isinstance(after, wire.FetchResult) and after.key_packages_low
            status = await owner.call(wire.PublishKeyPackages(()))
            assert isinstance(status, wire.PublishKeyPackagesResult)
            assert (status.single_use(xwing), status.single_use(classic)) == (0, 0)


async def test_a_key_package_naming_anyone_else_is_refused_and_nothing_is_stored(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    runtime = runtimes()
    alices = MlsClient(alice, runtime).key_package(suites.XWING)
    own = MlsClient(mallory, runtime).key_package(suites.XWING)
    with relay_process(tmp_path, "max_key_packages_per_suite = 2\n") as relay:
        async with connected(relay, mallory) as forger, connected(relay) as stranger:
            # Alice's own KeyPackage, published by mallory, and with one of mallory's: refused
            # whole, so mallory cannot hand out Alice's (nor stuff Alice's pool).
            answer = await forger.call(wire.PublishKeyPackages((own, alices)))
            assert code_of(answer) is ErrorCode.UNAUTHORIZED
            answer = await forger.call(wire.PublishKeyPackages((), (alices,)))
            assert code_of(answer) is ErrorCode.UNAUTHORIZED
            for identity in (alice, mallory):
                gone = await stranger.call(wire.FetchKeyPackage(identity.public_key))
                assert code_of(gone) is ErrorCode.NOT_FOUND
            # Not a KeyPackage at all; one past the pool's bound.
            garbage = await forger.call(wire.PublishKeyPackages((b"\x00\x01" * 100,)))
            assert code_of(garbage) is ErrorCode.MALFORMED_REQUEST
            mls = MlsClient(mallory, runtime)
            three = tuple(mls.key_package(suites.XWING) for _ in range(3))
            assert code_of(await forger.call(wire.PublishKeyPackages(three))) is (
                ErrorCode.LIMIT_EXCEEDED
            )
            status = await forger.call(wire.PublishKeyPackages(three[:2]))
            assert isinstance(status, wire.PublishKeyPackagesResult)
            assert status.single_use(suites.XWING) == 2


async def test_fetching_key_packages_is_rate_limited_per_caller(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    bob = Identity.generate()
    mls = MlsClient(bob, runtimes())
    settings = "key_package_fetches_per_minute = 0.01\nkey_package_fetch_burst = 2\n"
    with relay_process(tmp_path, settings) as relay:
        async with connected(relay, bob) as owner:
            last = (mls.last_resort_key_package(suites.XWING),)
            assert isinstance(
                await owner.call(wire.PublishKeyPackages((), last)), wire.PublishKeyPackagesResult
            )
        async with connected(relay) as drainer, connected(relay) as other:
            answers = [await drainer.call(wire.FetchKeyPackage(bob.public_key)) for _ in range(3)]
            assert [code_of(a) for a in answers] == [None, None, ErrorCode.RATE_LIMITED]
            # Another caller has its own allowance.
            assert isinstance(
                await other.call(wire.FetchKeyPackage(bob.public_key)), wire.FetchKeyPackageResult
            )


# --- usernames -------------------------------------------------------------------------------


async def register_and_log_in(conn: PeerConnection, relay: RelayProcess, user: str) -> None:
    assert relay.identity is not None
    runtime = RealRuntime("qpc-account")
    try:
        client = RelayAccountClient(conn.call, relay.identity, runtime)
        with contextlib.suppress(Exception):
            await client.register(user, PASSWORD)
        await client.login(user, PASSWORD)
    finally:
        runtime.close()


async def test_a_login_binds_the_username_to_the_identity_both_ways(tmp_path: Path) -> None:
    alice, alice_new, bob = Identity.generate(), Identity.generate(), Identity.generate()
    with relay_process(tmp_path, "") as relay:
        async with connected(relay, alice) as a, connected(relay, bob) as b:
            # Registered, not logged in: not bound yet.
            assert relay.identity is not None
            runtime = RealRuntime("qpc-account")
            try:
                await RelayAccountClient(a.call, relay.identity, runtime).register(
                    "alice", PASSWORD
                )
            finally:
                runtime.close()
            assert code_of(await b.call(wire.ResolveUser("alice"))) is ErrorCode.NOT_FOUND
            await register_and_log_in(a, relay, "alice")
            assert await b.call(wire.ResolveUser("alice")) == wire.ResolveUserResult(
                alice.public_key
            )
            assert await b.call(wire.ResolveIdentity(alice.public_key)) == (
                wire.ResolveIdentityResult("alice")
            )
            assert code_of(await b.call(wire.ResolveUser("carol"))) is ErrorCode.NOT_FOUND
            unnamed = await a.call(wire.ResolveIdentity(bob.public_key))
            assert code_of(unnamed) is ErrorCode.NOT_FOUND
            malformed = await a.call(wire.ResolveUser("Not A Name!"))
            assert code_of(malformed) is ErrorCode.MALFORMED_REQUEST
        # Alice logs in from a new device (identity): the name moves, the old key has none.
        async with connected(relay, alice_new) as a2:
            await register_and_log_in(a2, relay, "alice")
            assert await a2.call(wire.ResolveUser("alice")) == wire.ResolveUserResult(
                alice_new.public_key
            )
            old = await a2.call(wire.ResolveIdentity(alice.public_key))
            assert code_of(old) is ErrorCode.NOT_FOUND


async def test_names_cannot_be_enumerated_fast(tmp_path: Path) -> None:
    settings = "lookups_per_minute = 0.01\nlookup_burst = 3\n"
    with relay_process(tmp_path, settings) as relay:
        async with connected(relay) as prober:
            answers = [await prober.call(wire.ResolveUser(f"user{i}")) for i in range(4)]
            assert [code_of(a) for a in answers] == [ErrorCode.NOT_FOUND] * 3 + [
                ErrorCode.RATE_LIMITED
            ]
            # One allowance for both lookups: the other one is refused too.
            reverse = await prober.call(wire.ResolveIdentity(Identity.generate().public_key))
            assert code_of(reverse) is ErrorCode.RATE_LIMITED


# --- nodes -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def node(
    name: str, relay: RelayInfo, data: Path, *, user: str | None = None
) -> AsyncIterator[Node]:
    """A started node on its own real runtime, with no contacts; with ``user`` it first signs
    in at the relay under that name (registering it)."""
    identity = Identity.generate()
    runtime = RealRuntime(f"qpc-{name}")
    made = Node(identity, runtime, name=name, relay=relay)
    made.directory.min_interval = 0.0  # this test's relay may ask for a top-up at once
    try:
        if user is not None:
            await sign_in_as(identity, relay, user, data / name, runtime)
        await made.start(LOOPBACK, 0)
        yield made
    finally:
        await made.stop()
        runtime.close()


async def sign_in_as(
    identity: Identity, relay: RelayInfo, user: str, data: Path, runtime: Runtime
) -> None:
    await sign_in(
        identity,
        relay,
        user,
        data,
        b"node pass",
        runtime,
        bind_host=LOOPBACK,
        password=lambda: PASSWORD,
        kdf=FAST_KDF,
    )


def pool_at_relay(n: Node) -> tuple[int, ...]:
    counts = n.directory.last_counts
    return () if counts is None else tuple(counts.single_use(s) for s in n.mls.ciphersuites)


async def test_a_node_keeps_its_pool_at_the_relay_topped_up(tmp_path: Path) -> None:
    settings = "key_package_low_water = 6\n"
    with relay_process(tmp_path, settings) as relay:
        async with node("bob", relay_info(relay), tmp_path) as bob:
            await wait_until(lambda: pool_at_relay(bob) == (8, 8), DEADLINE, "bob published 8+8")
            async with connected(relay) as alice:
                for _ in range(3):
                    answer = await alice.call(wire.FetchKeyPackage(bob.public_key))
                    assert isinstance(answer, wire.FetchKeyPackageResult)
            # The relay tells bob at his next fetch (the long poll ends with this delivery).
            async with connected(relay) as sender:
                await sender.call(wire.Deliver((envelope(bob.identity.mailbox),)))
            await wait_until(
                lambda: pool_at_relay(bob) == (8, 8) and bob.directory.publishes >= 2,
                DEADLINE,
                "bob topped his pool up again",
            )


async def test_names_resolve_through_the_relay(tmp_path: Path) -> None:
    with relay_process(tmp_path, "") as relay:
        info = relay_info(relay)
        async with (
            node("bob", info, tmp_path, user="bob") as bob,
            node("alice", info, tmp_path) as alice,
        ):
            assert await alice.resolve_user("bob") == bob.public_key
            assert await alice.username_of(bob.public_key) == "bob"
            assert await alice.username_of(alice.public_key) is None
            with pytest.raises(UnknownUserError, match="@carol"):
                await alice.resolve_user("carol")


async def test_an_offline_peer_is_invited_through_the_relay_and_joins_on_return(
    tmp_path: Path,
) -> None:
    """Alice finds bob by name, bob is offline: his KeyPackage comes from the relay, the
    Welcome waits in his mailbox, and when he is back he accepts the stranger's invitation
    and reads what she wrote meanwhile."""
    with relay_process(tmp_path, "") as relay:
        info = relay_info(relay)
        async with (
            node("bob", info, tmp_path, user="bob") as bob,
            node("alice", info, tmp_path) as alice,
        ):
            await wait_until(lambda: pool_at_relay(bob) == (8, 8), DEADLINE, "bob published")
            bob.go_offline()
            bob_key = await alice.resolve_user("bob")
            made = await alice.create_group_with([bob_key])
            assert made.choice.suite == suites.XWING
            assert not made.report.failed
            await alice.send_text(made.group_id, "hello while you were away")

            await bob.start(LOOPBACK, 0)
            await wait_until(lambda: bool(bob.invitations()), DEADLINE, "bob sees the invitation")
            (invitation,) = bob.invitations()
            assert invitation.inviter == alice.public_key
            assert made.group_id not in bob.groups  # a stranger's invitation waits for consent
            assert await bob.accept_invitation(invitation.id) == made.group_id
            (message,) = await bob.wait_for_messages(1, DEADLINE)
            assert message.text == "hello while you were away"
            assert message.sender == alice.public_key


async def test_a_key_package_from_the_relay_must_name_the_peer(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """A relay that hands out someone else's KeyPackage for an offline peer is caught: the
    node checks what a relay sends as it checks what a peer sends."""
    bob, mallory, relay_key = Identity.generate(), Identity.generate(), Identity.generate()
    forged = MlsClient(mallory, runtimes()).key_package(suites.XWING)

    async def lying_relay(caller: Caller, request: wire.Request) -> wire.Response:
        if isinstance(request, wire.FetchKeyPackage):
            return wire.FetchKeyPackageResult(forged)
        return wire.ErrorResult(ErrorCode.UNKNOWN_METHOD, "not here")

    async with running_endpoint(relay_key, lying_relay) as endpoint:
        info = RelayInfo(endpoint.local_address, relay_key.public_key)
        async with node("alice", info, tmp_path) as alice:
            with pytest.raises(NodeError, match="someone else's KeyPackage"):
                await alice.create_group_with([bob.public_key])
            assert not alice.groups


async def test_the_directory_survives_a_restart_of_its_store(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    bob = Identity.generate()
    mls = MlsClient(bob, runtimes())
    path = tmp_path / "directory.sqlite3"
    store = DirectoryStore(path)
    singles = [(suites.XWING, mls.key_package(suites.XWING)) for _ in range(2)]
    last = [(suites.XWING, mls.last_resort_key_package(suites.XWING))]
    store.publish(bob.public_key, singles, last, wall_ms())
    store.bind("bob", bob.public_key, wall_ms())
    size = store.total_bytes
    store.close()
    again = DirectoryStore(path)
    try:
        assert again.schema_version == SCHEMA_VERSION
        assert again.counts(bob.public_key) == [SuiteCount(suites.XWING, 2, True)]
        assert again.total_bytes == size
        assert again.identity_of("bob") == bob.public_key
        assert again.take(bob.public_key, 0) == [singles[0][1]]
    finally:
        again.close()


async def test_with_accounts_required_the_directory_serves_logged_in_identities_only(
    tmp_path: Path,
) -> None:
    with relay_process(tmp_path, 'accounts = "required"\n') as relay:
        async with connected(relay) as stranger:
            for request in (
                wire.ResolveUser("bob"),
                wire.ResolveIdentity(Identity.generate().public_key),
                wire.FetchKeyPackage(Identity.generate().public_key),
                wire.PublishKeyPackages(()),
            ):
                assert code_of(await stranger.call(request)) is ErrorCode.UNAUTHENTICATED
