"""A node running in the foreground, as ``node run``, ``chat`` and ``web`` run it: opened from
its data directory (and signed in at its relay), its application layer, discovery, and the
control socket through which one-shot commands reach it (``node.app.control_socket``).

Every front end starts and stops it through :func:`running`, so each one gets the same
errors for a busy port or a discovery that cannot start, and each one serves the one-shot
commands while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import click

from node.app.backup import take_restore_notice
from node.app.control_socket import ControlServer
from node.app.conversations import Conversation
from node.app.limits import NodeLimits
from node.app.messenger import Messenger
from node.app.node import Node
from node.app.oneshot_cli import RELAY_SETTING, relay_setting
from node.app.presence import Presence, PresenceConfig
from node.app.profile import open_node
from node.app.relay_account import sign_in_node
from node.app.router import RelayInfo
from node.core.addresses import Address, format_address
from node.core.cli_errors import bind_error
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.core.invite_link import InviteLink, LinkRelay, encode_invite_link
from node.core.runtime import Runtime

__all__ = [
    "FIND_DEADLINE",
    "PeerSpec",
    "RunOptions",
    "RunningNode",
    "conversation_with",
    "find_invitees",
    "learn_routes",
    "open_run_node",
    "running",
]

FIND_DEADLINE = 20.0  # seconds to wait for discovery to place an invitee


@dataclass(frozen=True)
class PeerSpec:
    name: str
    identity: bytes
    address: Address | None  # None: discovery finds it (mDNS, DHT)
    relay: RelayInfo | None = None  # the relay the peer reads (from its invite link)
    envelope_key: bytes | None = None  # to seal relayed mail to (from its invite link)


@dataclass(frozen=True)
class RunOptions:
    name: str
    data_dir: Path
    listen: Address
    relay: RelayInfo | None
    passphrase: bytes
    peers: list[PeerSpec]
    invites: list[PeerSpec]
    presence: PresenceConfig
    relay_user: str | None = None
    limits: NodeLimits | None = None
    sealed_sender: bool = True  # seal relayed envelopes when the recipient's key is known


@dataclass
class RunningNode:
    node: Node
    presence: Presence
    messenger: Messenger
    envelope_key: bytes  # the node's public one, for its invite link

    def own_link(self, name: str) -> str:
        """This node's signed ``qpc://`` invite link: where it listens, its relay, its key."""
        node = self.node
        relay = node.router.relay
        link = InviteLink(
            identity_key=node.public_key,
            display_name=name,
            addresses=(node.address,),
            relay=None if relay is None else LinkRelay(relay.address, relay.identity),
            issued_at_ms=node.clock_ms(),
            expires_at_ms=None,
            envelope_key=self.envelope_key,
        )
        return encode_invite_link(link, node.identity)


async def open_run_node(opts: RunOptions, runtime: Runtime) -> tuple[Node, bool]:
    """The node, opened from its data directory and, with ``--relay-user``, signed in at its
    relay. Returns (node, whether the directory is new)."""
    node, created = await open_node(
        opts.data_dir,
        opts.passphrase,
        runtime,
        name=opts.name,
        relay=opts.relay,
        limits=opts.limits,
        sealed_sender=opts.sealed_sender,
    )
    if opts.relay_user is not None and opts.relay is not None:
        try:
            signed = await sign_in_node(
                node, opts.relay, opts.relay_user, opts.data_dir, opts.passphrase, opts.listen[0]
            )
        except BaseException:
            node.kill()
            raise
        click.echo(f"relay account {signed.session.username}: {signed.how}")
    return node, created


async def learn_routes(node: Node, spec: PeerSpec) -> None:
    """What a ``--peer``/``--invite`` link says beyond the contact itself."""
    if spec.relay is not None:
        # The invite link names the relay its owner reads: mail that cannot go direct waits
        # there for them.
        node.router.peer_relays[spec.identity] = spec.relay
    if spec.envelope_key is not None:
        await node.learn_envelope_key(spec.identity, spec.envelope_key)


@contextlib.asynccontextmanager
async def running(
    opts: RunOptions, runtime: Runtime, stop: asyncio.Event | None = None
) -> AsyncIterator[RunningNode]:
    """A started node with its application layer, discovery and control socket, stopped on
    exit. With ``stop``, SIGINT and SIGTERM set it from before the "listening on" line: whoever
    sees that line may stop the node at once, cleanly."""
    node, created = await open_run_node(opts, runtime)
    messenger = Messenger(node)
    try:
        await messenger.open()
        restored_from = await runtime.run_blocking(lambda: take_restore_notice(node.store))
        for spec in [*opts.peers, *opts.invites]:
            await messenger.add_contact(spec.identity, spec.name, spec.address)
            await learn_routes(node, spec)
        try:
            host, port = await node.start(*opts.listen)
        except OSError as exc:
            raise bind_error("--listen", opts.listen, exc) from None
    except BaseException:
        await messenger.close()
        node.kill()
        raise
    if restored_from is not None:
        _warn_restored(node, restored_from)
    presence = Presence(node, opts.presence)
    control = ControlServer(messenger, opts.data_dir)
    try:
        if opts.relay is not None:
            # One-shot commands run without this node reach the same relay.
            store, saved = node.store, relay_setting(opts.relay)
            await runtime.run_blocking(lambda: store.set_secret(RELAY_SETTING, saved))
        await control.start()
        try:
            await presence.start()
        except OSError as exc:
            if opts.presence.dht and exc.errno == errno.EADDRINUSE:
                raise bind_error("--dht-port", (host, opts.presence.dht_port), exc) from None
            raise NodeError(f"discovery (mDNS, DHT) could not start: {exc.strerror}") from None
        if stop is not None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        click.echo(f"{'new identity' if created else 'identity'}: {node.public_key.hex()}")
        click.echo(f"fingerprint: {fingerprint(node.public_key)}")
        click.echo(f"listening on {host}:{port}")
        if presence.dht_address is not None:
            click.echo(f"dht on {format_address(presence.dht_address)}")
        yield RunningNode(node, presence, messenger, (await node.envelope_key()).public_key)
    finally:
        await control.stop()
        await presence.stop()
        await messenger.close()
        await node.stop()


def _warn_restored(node: Node, made_at_ms: int) -> None:
    """A restored node is behind: say how far its groups got, and what that means."""
    made = datetime.datetime.fromtimestamp(made_at_ms / 1000, tz=datetime.UTC)
    click.echo(
        f"WARNING: restored from the backup of {made:%Y-%m-%d %H:%M:%S} UTC: every group is "
        "at the epoch it had then. Commits made since were missed and their epochs' keys are "
        "gone (forward secrecy): messages of those epochs cannot be read, and the group's "
        "committer must remove and re-add this node.",
        err=True,
    )
    for group in node.groups.values():
        click.echo(f"WARNING: group {group.group_id.hex()[:16]}: at epoch {group.epoch}", err=True)


async def conversation_with(app: Messenger, invites: list[PeerSpec]) -> Conversation:
    """``--invite``: a DM with one person, a group with several; the same people again are the
    same conversation, never a second group."""
    peers = [spec.identity for spec in invites]
    if len(peers) == 1:
        return await app.direct(peers[0])
    return await app.create_group(", ".join(spec.name for spec in invites)[:64], peers)


async def start_conversation(app: Messenger, invites: list[PeerSpec]) -> None:
    """``chat --invite`` and ``web --invite``: start (or find again) the conversation with the
    invitees, and say which it is; a failure is one ``ERROR:`` line, and the front end runs on."""
    try:
        conv = await conversation_with(app, invites)
    except NodeError as exc:
        click.echo(f"ERROR: could not start the conversation: {terminal_safe(str(exc))}", err=True)
        return
    click.echo(f"conversation {terminal_safe(app.title(conv))} ({conv.id}) is ready")


async def find_invitees(presence: Presence, specs: list[PeerSpec]) -> None:
    """Wait (a while) until discovery can place invitees given without an address."""
    resolver = presence.resolver
    if resolver is None or not specs:
        return
    for spec in specs:
        click.echo(f"looking for {terminal_safe(spec.name)}...")
        try:
            async with asyncio.timeout(FIND_DEADLINE):
                # Both mDNS and the DHT may answer, on their own schedules: poll the resolver.
                while await resolver.resolve(spec.identity, deadline=1.0) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.25)
        except TimeoutError:
            click.echo(
                f"{terminal_safe(spec.name)} was not found on the LAN or in the DHT", err=True
            )
