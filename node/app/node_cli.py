"""``quicnprotochat node run``: a node in the foreground with a line-based chat on stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from node.app.backup import take_restore_notice
from node.app.node import ChatMessage, Node
from node.app.peer_ref import PeerRefError, parse_peer_ref
from node.app.presence import Presence, PresenceConfig
from node.app.profile import open_node
from node.app.router import RelayInfo
from node.app.store import NodeStore, SeenPeer, read_salt, store_keys
from node.core.addresses import Address, format_address
from node.core.addresses import parse_address as core_parse_address
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.core.invite_link import InviteLinkError
from node.core.keyfile import DEFAULT_KDF
from node.transport.runtime import RealRuntime

WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - compared against, never bound
PASSPHRASE_ENV = "QUICNPROTOCHAT_PASSPHRASE"  # noqa: S105 - a variable name
FIND_DEADLINE = 20.0  # seconds to wait for discovery to place an invitee


def parse_address(text: str) -> Address:
    try:
        return core_parse_address(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise click.BadParameter("an identity key is 64 hex digits")
    return key


@dataclass(frozen=True)
class PeerSpec:
    name: str
    identity: bytes
    address: Address | None  # None: discovery finds it (mDNS, DHT)
    relay: RelayInfo | None = None  # the relay the peer reads (from its invite link)


def parse_peer(text: str, now_ms: int) -> PeerSpec:
    """A ``qpc://`` invite link, ``NAME=LINK``, ``NAME=KEYHEX`` or ``NAME=KEYHEX@HOST:PORT``
    (``node.app.peer_ref``). A refused link raises ``InviteLinkError``."""
    try:
        ref = parse_peer_ref(text, now_ms=now_ms)
    except PeerRefError as exc:
        raise click.BadParameter(str(exc)) from None
    relay = None if ref.relay is None else RelayInfo(ref.relay.address, ref.relay.identity_key)
    return PeerSpec(ref.name, ref.identity, ref.address, relay)


def _parse_peers(option: str, texts: tuple[str, ...]) -> list[PeerSpec]:
    now_ms = time.time_ns() // 1_000_000  # the command line reads the clock itself
    specs = []
    for text in texts:
        try:
            specs.append(parse_peer(text, now_ms))
        except InviteLinkError as exc:
            click.echo(f"ERROR: {option}: {terminal_safe(str(exc))}", err=True)
            sys.exit(1)
    return specs


@click.group("node")
def node_group() -> None:
    """Run a peer node."""


@node_group.command("run")
@click.option("--name", required=True, help="Your display name.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Holds your identity key and encrypted state ($QUICNPROTOCHAT_PASSPHRASE).",
)
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT (UDP).")
@click.option("--relay", "relay_address", default=None, help="Relay HOST:PORT (optional).")
@click.option("--relay-key", default=None, help="The relay's identity key (hex), to pin it.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    help="A qpc:// link or NAME=KEYHEX[@HOST:PORT] of a known peer (repeatable).",
)
@click.option(
    "--invite",
    "invites",
    multiple=True,
    help="A qpc:// link or NAME=KEYHEX[@HOST:PORT]: create a group with these peers at start.",
)
@click.option("--no-mdns", is_flag=True, help="Neither advertise nor browse on the LAN.")
@click.option(
    "--mdns-interface",
    "mdns_interfaces",
    multiple=True,
    help="IP of an interface for mDNS (repeatable) [the --listen host].",
)
@click.option("--no-dht", is_flag=True, help="Do not join the DHT.")
@click.option(
    "--dht-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="UDP port of this node's DHT node (0: any).",
)
@click.option("--bootstrap", "bootstrap", multiple=True, help="DHT bootstrap HOST:PORT.")
def run_command(
    name: str,
    data_dir: Path,
    listen: str,
    relay_address: str | None,
    relay_key: str | None,
    peers: tuple[str, ...],
    invites: tuple[str, ...],
    no_mdns: bool,
    mdns_interfaces: tuple[str, ...],
    no_dht: bool,
    dht_port: int,
    bootstrap: tuple[str, ...],
) -> None:
    """Run a node: lines typed go to the group, messages received are printed."""
    passphrase = _passphrase()
    if (relay_address is None) != (relay_key is None):
        raise click.ClickException("--relay and --relay-key go together")
    relay = (
        RelayInfo(parse_address(relay_address), parse_key(relay_key))
        if relay_address is not None and relay_key is not None
        else None
    )
    listen_address = parse_address(listen)
    if not no_mdns and not mdns_interfaces and listen_address[0] in WILDCARDS:
        raise click.ClickException("listening on all interfaces: name one with --mdns-interface")
    options = RunOptions(
        name=name,
        data_dir=data_dir,
        listen=listen_address,
        relay=relay,
        passphrase=passphrase,
        peers=_parse_peers("--peer", peers),
        invites=_parse_peers("--invite", invites),
        presence=PresenceConfig(
            mdns=not no_mdns,
            mdns_interfaces=mdns_interfaces,
            dht=not no_dht,
            dht_port=dht_port,
            bootstrap=[parse_address(b) for b in bootstrap],
        ),
    )
    try:
        asyncio.run(_run(options))
    except NodeError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)


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


def _passphrase() -> bytes:
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode()
    if not passphrase:
        raise click.ClickException(f"set {PASSPHRASE_ENV} to the passphrase of your identity key")
    return passphrase


async def _run(opts: RunOptions) -> None:
    runtime = RealRuntime(f"qpc-{opts.name}")
    try:
        await _run_node(opts, runtime)
    finally:
        runtime.close()


async def _run_node(opts: RunOptions, runtime: RealRuntime) -> None:
    node, created = await open_node(
        opts.data_dir, opts.passphrase, runtime, name=opts.name, relay=opts.relay
    )
    identity = node.identity
    node.on_message = _print_message
    restored_from = await runtime.run_blocking(lambda: take_restore_notice(node.store))
    for spec in [*opts.peers, *opts.invites]:
        await node.remember_peer(spec.identity, spec.name, spec.address)
        if spec.relay is not None:
            # The invite link names the relay its owner reads: mail that cannot go direct
            # waits there for them.
            node.router.peer_relays[spec.identity] = spec.relay
    host, port = await node.start(*opts.listen)
    if restored_from is not None:
        _warn_restored(node, restored_from)
    presence = Presence(node, opts.presence)
    try:
        await presence.start()
        click.echo(f"{'new identity' if created else 'identity'}: {identity.public_key.hex()}")
        click.echo(f"fingerprint: {fingerprint(identity.public_key)}")
        click.echo(f"listening on {host}:{port}")
        if presence.dht_address is not None:
            click.echo(f"dht on {format_address(presence.dht_address)}")
        if opts.invites:
            await _find(presence, [spec for spec in opts.invites if spec.address is None])
            await _invite(node, opts.invites)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reader = runtime.spawn(_read_lines(node))
        try:
            await stop.wait()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        await presence.stop()
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


async def _find(presence: Presence, specs: list[PeerSpec]) -> None:
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


async def _invite(node: Node, invites: list[PeerSpec]) -> None:
    try:
        made = await node.create_group_with([spec.identity for spec in invites])
    except NodeError as exc:
        click.echo(f"ERROR: could not create the group: {terminal_safe(str(exc))}", err=True)
        return
    for peer, why in made.report.failed.items():
        click.echo(
            f"could not invite {terminal_safe(node.contacts.name(peer))}: {terminal_safe(why)}",
            err=True,
        )
    names = {spec.identity: terminal_safe(spec.name) for spec in invites}
    suite = made.choice.describe(names)
    invited = ", ".join(terminal_safe(s.name) for s in invites)
    click.echo(f"group created with {invited} (ciphersuite {suite})")


@click.command("peers")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The data directory of the node to ask ($QUICNPROTOCHAT_PASSPHRASE opens it).",
)
def peers_command(data_dir: Path) -> None:
    """List the nodes that node has seen by discovery (LAN or DHT)."""
    passphrase = _passphrase()
    try:
        seen, now = asyncio.run(_read_peers(data_dir, passphrase))
    except NodeError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    if not seen:
        click.echo("no peers seen yet")
        return
    click.echo(f"{'NAME':<16} {'FINGERPRINT':<20} {'SOURCE':<6} {'STATUS':<10} {'ADDRESS':<22} AGE")
    for peer in seen:
        age = max(0, now - peer.seen_at_ms) // 1000
        address = format_address((peer.host, peer.port))
        name, print_ = terminal_safe(peer.name)[:16], terminal_safe(peer.fingerprint)[:20]
        click.echo(
            f"{name:<16} {print_:<20} {peer.source:<6} {peer.status:<10} {address:<22} {age}s"
        )


async def _read_peers(data_dir: Path, passphrase: bytes) -> tuple[list[SeenPeer], int]:
    """What the node's store lists, and the wall time now (to tell each entry's age). Creates
    nothing: a directory without its salt or database is refused by name."""
    if not (data_dir / "node.db").exists():
        raise NodeError(f"{data_dir} holds no node (run 'quicnprotochat node run' first)")
    runtime = RealRuntime("qpc-peers")
    run = runtime.run_blocking
    try:
        salt = await run(lambda: read_salt(data_dir / "store.salt"))
        db_key, _ = await run(lambda: store_keys(passphrase, salt, DEFAULT_KDF))
        store = await run(lambda: NodeStore(data_dir / "node.db", db_key, create=False))
        try:
            seen: list[SeenPeer] = await run(store.peers)
            return seen, runtime.wall_ms()
        finally:
            await run(store.close)
    finally:
        runtime.close()


def _print_message(message: ChatMessage) -> None:
    # Both the name and the text are the peer's choice: shown, never obeyed (node.core.display).
    prefix = f"[{terminal_safe(message.sender_name)}] "
    click.echo(prefix + terminal_safe(message.text, multiline=True, continuation=" " * len(prefix)))


async def _read_lines(node: Node) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        if not node.groups:
            click.echo("(no group yet: start with --invite, or wait to be invited)", err=True)
            continue
        group_id = next(reversed(node.groups))
        try:
            report = await node.send_text(group_id, text)
        except NodeError as exc:
            click.echo(f"ERROR: {terminal_safe(str(exc))}", err=True)
            continue
        for peer, why in report.failed.items():
            who = terminal_safe(node.contacts.name(peer))
            click.echo(f"(not delivered to {who}: {terminal_safe(why)})", err=True)
