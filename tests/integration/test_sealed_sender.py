"""Sealed sender through a real relay process (ADR 0008): the message arrives with the right
sender, the relay's files and logs never hold the sender's identity, a replayed or forged
sealed envelope is refused, and a relay that does not take sealed envelopes says so."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.app import chat_cli, node_cli
from node.app.cli import main
from node.app.messenger import Messenger
from node.app.node import Node
from node.app.presence import PresenceConfig
from node.app.profile import open_node
from node.app.qr import qr_text
from node.app.router import Path as RoutePath
from node.app.router import RelayInfo
from node.app.running import RunOptions, running
from node.core import sealed, wire
from node.core.addresses import Address, format_address
from node.core.errors import ErrorCode
from node.core.hybrid_kem import HybridPrivateKey
from node.core.identity import Identity, fingerprint, mailbox_of
from node.core.invite_link import InviteLink, decode_invite_link, encode_invite_link
from node.core.keyfile import FAST_KDF
from node.transport.runtime import RealRuntime
from tests.conftest import LOOPBACK, RelayProcess, configured_relay, running_endpoint
from tests.e2e.test_node_chat import SCRIPT
from tests.node_support import relay_info, wait_until

DEADLINE = 20.0


@contextlib.contextmanager
def relay_process(tmp_path: Path, settings: str = "") -> Iterator[RelayProcess]:
    with configured_relay(tmp_path, settings, "sealed test") as relay:
        yield relay


@contextlib.asynccontextmanager
async def pair(relay: RelayInfo) -> AsyncIterator[tuple[Node, Node]]:
    """Bob collects his mail at ``relay``; alice has no relay of her own, so her identity key
    never reaches it: she knows bob's relay and envelope key as his peer record tells them."""
    runtimes = [RealRuntime("qpc-alice"), RealRuntime("qpc-bob")]
    alice = Node(Identity.generate(), runtimes[0], name="alice")
    bob = Node(Identity.generate(), runtimes[1], name="bob", relay=relay)
    try:
        for n in (alice, bob):
            await n.start(LOOPBACK, 0)
        await alice.remember_peer(bob.public_key, "bob", bob.address)
        await bob.remember_peer(alice.public_key, "alice", alice.address)
        alice.router.peer_relays[bob.public_key] = relay
        alice.router.learn_envelope_key(bob.public_key, (await bob.envelope_key()).public_key)
        yield alice, bob
    finally:
        for n in (alice, bob):
            await n.stop()
        for runtime in runtimes:
            runtime.close()


async def dm_while_bob_is_away(alice: Node, bob: Node, text: str) -> bytes:
    """A DM group made while both are online; bob then drops off, and alice's message can go
    only through his relay."""
    # Until bob has collected his mailbox he takes nothing directly (the Welcome would go by
    # the relay too): wait for that, so only the message below goes by the relay.
    await wait_until(bob.relay_synced.is_set, DEADLINE, "bob collected his mailbox")
    made = await alice.create_group_with([bob.public_key])
    await wait_until(lambda: made.group_id in bob.groups, DEADLINE, "bob joined")
    bob.go_offline()
    report = await alice.send_text(made.group_id, text)
    assert not report.failed
    return made.group_id


def identity_traces(identity: bytes) -> list[bytes]:
    """Every form an identity key could be written in: raw, hex, base64, its fingerprint
    (grouped and compact), and its mailbox, raw and hex."""
    mailbox = mailbox_of(identity)
    grouped = fingerprint(identity)
    return [
        identity,
        identity.hex().encode(),
        base64.b64encode(identity),
        base64.urlsafe_b64encode(identity).rstrip(b"="),
        grouped.encode(),
        grouped.replace(" ", "").encode(),
        grouped.replace(" ", "").upper().encode(),
        mailbox,
        mailbox.hex().encode(),
        hashlib.sha256(identity).hexdigest()[:16].encode(),
    ]


def relay_bytes(relay: RelayProcess) -> bytes:
    """Everything the relay's data directory holds, every file, as bytes."""
    return b"".join(p.read_bytes() for p in sorted(relay.data_dir.rglob("*")) if p.is_file())


def assert_relay_kept_no_trace(relay: RelayProcess, identity: bytes) -> None:
    """Stop the relay, then scan its files and everything it logged for ``identity``."""
    logs = relay.stop_and_read_output().encode()
    assert logs  # it did log (at least its stop): the scan read something
    stored = relay_bytes(relay)
    for trace in identity_traces(identity):
        assert trace not in stored
        assert trace not in logs


async def deliver_from_a_one_time_key(relay: RelayInfo, envelope: wire.Envelope) -> wire.Response:
    async with running_endpoint(Identity.generate(), None) as endpoint:
        conn = await endpoint.dial(relay.address, relay.identity)
        return await conn.call(wire.Deliver((envelope,)))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[wire.Envelope]:
    """The sealed envelopes alice's router hands to the relay (what a replayer would copy)."""
    boxes: list[wire.Envelope] = []
    real = sealed.seal_envelope

    def recording(*args: object, **kwargs: object) -> wire.Envelope:
        outer = real(*args, **kwargs)  # type: ignore[arg-type]
        boxes.append(outer)
        return outer

    monkeypatch.setattr(sealed, "seal_envelope", recording)
    return boxes


async def test_a_sealed_message_arrives_from_its_sender_and_the_relay_never_learns_who(
    tmp_path: Path, captured: list[wire.Envelope]
) -> None:
    with relay_process(tmp_path) as relay:
        info = relay_info(relay)
        async with pair(info) as (alice, bob):
            await dm_while_bob_is_away(alice, bob, "only bob knows this is from me")
            assert alice.router.sealed_sent == 1
            assert len(captured) == 1 and captured[0].kind is wire.EnvelopeKind.SEALED
            # The envelope waits at the relay now: its mailbox is in the store, the scan sees it.
            stored = relay_bytes(relay)
            assert bob.identity.mailbox in stored
            for trace in identity_traces(alice.public_key):
                assert trace not in stored

            await bob.start(LOOPBACK, 0)
            (message,) = await bob.wait_for_messages(1, DEADLINE)
            assert message.text == "only bob knows this is from me"
            assert message.sender == alice.public_key
            assert message.path is RoutePath.RELAY
            assert bob.counters()["sealed_unopened"] == 0

        assert_relay_kept_no_trace(relay, alice.public_key)


async def test_a_replayed_sealed_envelope_is_refused_even_under_a_new_outer_id(
    tmp_path: Path, captured: list[wire.Envelope]
) -> None:
    with relay_process(tmp_path) as relay:
        info = relay_info(relay)
        async with pair(info) as (alice, bob):
            await dm_while_bob_is_away(alice, bob, "say it once")
            await bob.start(LOOPBACK, 0)
            await bob.wait_for_messages(1, DEADLINE)
            (original,) = captured
            again = wire.Envelope(
                id=Identity.generate().public_key[:16],  # any fresh 16 bytes
                recipient=original.recipient,
                kind=original.kind,
                payload=original.payload,
                group_id=original.group_id,
                created_at_ms=original.created_at_ms,
            )
            answer = await deliver_from_a_one_time_key(info, again)
            assert isinstance(answer, wire.DeliverResult) and again.id in answer.accepted
            await wait_until(
                lambda: bob.counters()["sealed_replayed"] == 1, DEADLINE, "bob saw the replay"
            )
            assert [m.text for m in bob.inbox] == ["say it once"]
            # Acknowledged: the relay no longer holds it, bob is not offered it again.
            assert await bob.sync_relay() == 0


async def test_a_forged_inner_signature_is_dropped_and_counted(tmp_path: Path) -> None:
    with relay_process(tmp_path) as relay:
        info = relay_info(relay)
        async with pair(info) as (alice, bob):
            mallory = Identity.generate()
            inner = wire.Envelope(
                id=bytes(range(16)),
                recipient=bob.identity.mailbox,
                kind=wire.EnvelopeKind.APPLICATION,
                payload=b"pretending to be alice",
                group_id=b"",
                created_at_ms=bob.clock_ms(),
            )
            # Claims alice, signed by mallory.
            forged_signature = mallory.private_key.sign(sealed.signed_bytes(inner))
            box = sealed.seal_box(
                (await bob.envelope_key()).public_key,
                inner.recipient,
                sealed.encode_content(alice.public_key, inner, forged_signature),
            )
            outer = wire.Envelope(
                bytes(16), inner.recipient, wire.EnvelopeKind.SEALED, box, b"", inner.created_at_ms
            )
            answer = await deliver_from_a_one_time_key(info, outer)
            assert isinstance(answer, wire.DeliverResult)
            await wait_until(
                lambda: bob.counters()["sealed_bad_signature"] == 1, DEADLINE, "bob dropped it"
            )
            assert bob.inbox == []
            assert await bob.sync_relay() == 0  # dropped for good, not offered again


async def test_a_relay_without_sealed_sender_refuses_it_and_the_sender_falls_back(
    tmp_path: Path,
) -> None:
    with relay_process(tmp_path, "allow_sealed_sender = false\n") as relay:
        info = relay_info(relay)
        async with pair(info) as (alice, bob):
            probe = sealed.seal_envelope(
                alice.identity,
                (await bob.envelope_key()).public_key,
                wire.Envelope(
                    bytes(16), bob.identity.mailbox, wire.EnvelopeKind.APPLICATION, b"x", b"", 1
                ),
                bytes(range(16)),
            )
            answer = await deliver_from_a_one_time_key(info, probe)
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.SEALED_REFUSED

            await dm_while_bob_is_away(alice, bob, "sent in the clear to the relay")
            assert alice.router.sealed_sent == 0
            await bob.start(LOOPBACK, 0)
            (message,) = await bob.wait_for_messages(1, DEADLINE)
            assert message.text == "sent in the clear to the relay"
            assert message.sender == alice.public_key


async def whoami_link(data_dir: Path, name: str, address: Address, relay: RelayInfo | None) -> str:
    """The link ``quicnprotochat whoami`` prints for ``data_dir``: what a person hands out."""
    args = ["whoami", "--data-dir", str(data_dir), "--name", name, "--json"]
    args += ["--address", format_address(address)]
    if relay is not None:
        args += ["--relay", format_address(relay.address), "--relay-key", relay.identity.hex()]
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{name} passphrase")
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    link: str = json.loads(out)["link"]
    return link


@contextlib.asynccontextmanager
async def link_pair(
    tmp_path: Path, relay: RelayInfo, *, alice_seals: bool = True
) -> AsyncIterator[tuple[Messenger, Messenger]]:
    """Alice and bob as ``node run``/``chat`` make them (data directories), with no discovery:
    each knows the other only by the link the other's ``whoami`` printed, given to ``/dm``.
    Bob reads his mail at ``relay``; alice has none, so her key never reaches it (unless she
    turned sealed sender off: ``alice_seals``, what ``--no-sealed-sender`` sets)."""
    runtimes = [RealRuntime("qpc-alice"), RealRuntime("qpc-bob")]
    apps: list[Messenger] = []
    try:
        people = (("alice", runtimes[0], None, alice_seals), ("bob", runtimes[1], relay, True))
        for name, runtime, own_relay, seals in people:
            node, _ = await open_node(
                tmp_path / name,
                f"{name} passphrase".encode(),
                runtime,
                name=name,
                relay=own_relay,
                sealed_sender=seals,
            )
            app = Messenger(node)
            apps.append(app)
            await app.open()
            await node.start(LOOPBACK, 0)
        alice, bob = apps
        bob_link = await whoami_link(tmp_path / "bob", "bob", bob.node.address, relay)
        alice_link = await whoami_link(tmp_path / "alice", "alice", alice.node.address, None)
        assert await alice.resolve_person(bob_link) == bob.node.public_key
        assert await bob.resolve_person(alice_link) == alice.node.public_key
        yield alice, bob
    finally:
        for app in apps:
            await app.close()
            await app.node.stop()
        for runtime in runtimes:
            runtime.close()


async def test_contacts_known_only_by_link_are_sealed_to_and_the_relay_never_learns_who(
    tmp_path: Path, captured: list[wire.Envelope]
) -> None:
    with relay_process(tmp_path) as relay:
        info = relay_info(relay)
        async with link_pair(tmp_path, info) as (alice, bob):
            # Only the link could have told alice bob's envelope key: no DHT, no mDNS here.
            assert alice.node.router.resolver is None
            await wait_until(bob.node.relay_synced.is_set, DEADLINE, "bob collected his mailbox")
            dm = await alice.direct(bob.node.public_key)
            await wait_until(lambda: len(bob.node.groups) == 1, DEADLINE, "bob joined the DM")
            bob.node.go_offline()
            await alice.send(dm.id, "sealed from a link")
            await wait_until(lambda: alice.node.router.sealed_sent == 1, DEADLINE, "sealed")
            assert alice.node.router.sealed_fallbacks == 0
            assert [box.kind for box in captured] == [wire.EnvelopeKind.SEALED]
            stored = relay_bytes(relay)
            assert bob.node.identity.mailbox in stored  # the scan does see what waits there
            for trace in identity_traces(alice.node.public_key):
                assert trace not in stored

            await bob.node.start(LOOPBACK, 0)
            (message,) = await bob.node.wait_for_messages(1, DEADLINE)
            assert message.text == "sealed from a link"
            assert message.sender == alice.node.public_key
            assert message.path is RoutePath.RELAY

        assert_relay_kept_no_trace(relay, alice.node.public_key)


async def test_with_sealed_sender_off_relayed_mail_goes_unsealed_though_the_key_is_known(
    tmp_path: Path, captured: list[wire.Envelope]
) -> None:
    with relay_process(tmp_path) as relay:
        info = relay_info(relay)
        async with link_pair(tmp_path, info, alice_seals=False) as (alice, bob):
            assert bob.node.public_key in alice.node.router.envelope_keys  # the link gave it
            await wait_until(bob.node.relay_synced.is_set, DEADLINE, "bob collected his mailbox")
            dm = await alice.direct(bob.node.public_key)
            await wait_until(lambda: len(bob.node.groups) == 1, DEADLINE, "bob joined the DM")
            bob.node.go_offline()
            await alice.send(dm.id, "as myself")
            await bob.node.start(LOOPBACK, 0)
            (message,) = await bob.node.wait_for_messages(1, DEADLINE)
            assert message.text == "as myself" and message.path is RoutePath.RELAY
            assert captured == [] and alice.node.router.sealed_sent == 0
            # Off is off, not a fallback: nothing counted as "no key known".
            assert alice.node.router.sealed_fallbacks == 0


def test_node_run_no_sealed_sender_reaches_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[RunOptions] = []

    async def instead(opts: RunOptions) -> None:
        seen.append(opts)

    monkeypatch.setattr(node_cli, "_run", instead)
    monkeypatch.setenv("QUICNPROTOCHAT_PASSPHRASE", "pw")
    monkeypatch.delenv("QUICNPROTOCHAT_NO_SEALED_SENDER", raising=False)
    base = ["node", "run", "--name", "a", "--data-dir", str(tmp_path / "a"), "--no-mdns"]
    runner = CliRunner()
    for args, env in (
        (base, {}),
        ([*base, "--no-sealed-sender"], {}),
        (base, {"QUICNPROTOCHAT_NO_SEALED_SENDER": "1"}),
    ):
        result = runner.invoke(main, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert [opts.sealed_sender for opts in seen] == [True, False, False]
    assert "--no-sealed-sender" in runner.invoke(main, ["node", "run", "--help"]).output


async def test_chat_learns_the_key_of_a_peer_given_by_link_and_its_whoami_link_carries_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = Identity.generate()
    bob_key = HybridPrivateKey(bytes(range(32))).public_key
    bob_link = encode_invite_link(InviteLink(bob.public_key, "bob", envelope_key=bob_key), bob)
    opts = RunOptions(
        name="alice",
        data_dir=tmp_path / "alice",
        listen=(LOOPBACK, 0),
        relay=None,
        passphrase=b"alice passphrase",
        peers=[node_cli.parse_peer(bob_link, now_ms=1)],
        invites=[],
        presence=PresenceConfig(mdns=False, dht=False),
    )
    runtime = RealRuntime("qpc-alice")
    try:
        async with running(opts, runtime) as run:
            assert run.node.router.envelope_keys[bob.public_key] == bob_key
            monkeypatch.setenv("COLUMNS", "400")
            wide = chat_cli._whoami(run, opts)
            (line,) = [x for x in wide if x.startswith("link: ")]
            own = decode_invite_link(line.removeprefix("link: "), now_ms=run.node.clock_ms())
            assert own.envelope_key == (await run.node.envelope_key()).public_key
            # The QR code (of that link, ~173 modules) is drawn only where it fits unwrapped.
            drawing = qr_text(line.removeprefix("link: ")).splitlines()
            assert wide[-1 - len(drawing) : -1] == drawing
            monkeypatch.setenv("COLUMNS", "140")
            narrow = chat_cli._whoami(run, opts)
            # (each /whoami signs a new link: its issue time is now)
            assert narrow[-1].startswith("link: qpc://v2/")
            assert not any(x and set(x) <= set("█▀▄ ") for x in narrow)
            assert "QR code needs a terminal" in narrow[-2]
    finally:
        runtime.close()


async def test_an_envelope_key_learned_from_a_link_is_still_used_after_a_restart(
    tmp_path: Path,
) -> None:
    """A contact added by ``/dm LINK`` stays sealed to when the node comes back: the key the
    link carried is kept (encrypted) in the node's store, not only in memory."""
    peer, peer_key = Identity.generate(), HybridPrivateKey(os.urandom(32)).public_key
    runtime = RealRuntime("qpc-restart")
    try:
        node, _ = await open_node(tmp_path / "alice", b"pass", runtime, name="alice", kdf=FAST_KDF)
        await node.learn_envelope_key(peer.public_key, peer_key)
        await node.stop()
        again, _ = await open_node(tmp_path / "alice", b"pass", runtime, name="alice", kdf=FAST_KDF)
        try:
            assert peer.public_key not in again.router.envelope_keys
            await again.resume()
            assert again.router.envelope_keys[peer.public_key] == peer_key
        finally:
            await again.stop()
    finally:
        runtime.close()
