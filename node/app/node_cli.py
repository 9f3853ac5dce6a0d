"""``quicnprotochat node run``: a node in the foreground with a line-based chat on stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from node.app.datadir import problems_of_layout
from node.app.events import InvitationReceived, MessageAdded
from node.app.invitations import PendingInvitation
from node.app.messages import DeliveryState, Direction, Message
from node.app.messenger import Messenger
from node.app.node import Node
from node.app.node_config import load_limits
from node.app.passphrase import get_passphrase, passphrase_file_option
from node.app.peer_ref import PeerRefError, parse_identity_key, parse_peer_ref
from node.app.presence import PresenceConfig
from node.app.router import RelayInfo
from node.app.running import (
    PeerSpec,
    RunningNode,
    RunOptions,
    conversation_with,
    find_invitees,
    running,
)
from node.app.store import NodeStore, SeenPeer, read_salt, store_keys
from node.core.addresses import Address, format_address
from node.core.addresses import parse_address as core_parse_address
from node.core.cli_errors import bind_error
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.core.invite_link import InviteLinkError
from node.core.keyfile import DEFAULT_KDF
from node.transport.runtime import RealRuntime

WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - compared against, never bound

F = TypeVar("F", bound=Callable[..., Any])


def parse_address(text: str, option: str) -> Address:
    try:
        return core_parse_address(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def parse_key(text: str, option: str) -> bytes:
    try:
        return parse_identity_key(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def parse_peer(text: str, now_ms: int) -> PeerSpec:
    """A ``qpc://`` invite link, ``NAME=LINK``, ``NAME=KEYHEX`` or ``NAME=KEYHEX@HOST:PORT``
    (``node.app.peer_ref``). Text in none of these forms raises ``PeerRefError``; a refused
    link raises ``InviteLinkError``."""
    ref = parse_peer_ref(text, now_ms=now_ms)
    relay = None if ref.relay is None else RelayInfo(ref.relay.address, ref.relay.identity_key)
    return PeerSpec(ref.name, ref.identity, ref.address, relay, ref.envelope_key)


def _parse_peers(option: str, texts: tuple[str, ...]) -> list[PeerSpec]:
    now_ms = time.time_ns() // 1_000_000  # the command line reads the clock itself
    specs = []
    for text in texts:
        try:
            specs.append(parse_peer(text, now_ms))
        except PeerRefError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
        except InviteLinkError as exc:
            raise InviteLinkError(f"{option}: {exc}") from None
    return specs


@click.group("node")
def node_group() -> None:
    """Run a peer node."""


def node_options(func: F) -> F:
    """The options of ``node run``, for every command that runs a node (``chat`` too); the
    command hands them on to :func:`run_options`."""
    options = [
        click.option("--name", required=True, help="Your display name."),
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            required=True,
            help="Holds your identity key and encrypted state (created if absent).",
        ),
        passphrase_file_option,
        click.option("--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT (UDP)."),
        click.option(
            "--relay",
            "relay_address",
            multiple=True,
            help="Relay HOST:PORT (optional; repeat for more addresses of one relay service).",
        ),
        click.option(
            "--relay-key", default=None, help="The relay's identity key (hex), to pin it."
        ),
        click.option(
            "--relay-user",
            default=None,
            help="Your account at the relay: registered on first use, then logged in "
            "(password prompt, or $QUICNPROTOCHAT_RELAY_PASSWORD).",
        ),
        click.option(
            "--peer",
            "peers",
            multiple=True,
            help="A qpc:// link or NAME=KEYHEX[@HOST:PORT] of a known peer (repeatable).",
        ),
        click.option(
            "--invite",
            "invites",
            multiple=True,
            help="A qpc:// link or NAME=KEYHEX[@HOST:PORT]: create a group with these peers "
            "at start.",
        ),
        click.option("--no-mdns", is_flag=True, help="Neither advertise nor browse on the LAN."),
        click.option(
            "--mdns-interface",
            "mdns_interfaces",
            multiple=True,
            help="IP of an interface for mDNS (repeatable) [the --listen host].",
        ),
        click.option("--no-dht", is_flag=True, help="Do not join the DHT."),
        click.option(
            "--dht-port",
            type=click.IntRange(0, 65535),
            default=0,
            show_default=True,
            help="UDP port of this node's DHT node (0: any).",
        ),
        click.option("--bootstrap", "bootstrap", multiple=True, help="DHT bootstrap HOST:PORT."),
        click.option(
            "--limits",
            "limits_file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="A TOML file whose [limits] table sets the node's limits (defaults otherwise).",
        ),
        click.option(
            "--no-sealed-sender",
            is_flag=True,
            envvar="QUICNPROTOCHAT_NO_SEALED_SENDER",
            help="Through relays, send as yourself: do not seal envelopes to the recipient's "
            "envelope key (the relay then learns who writes to whom).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_options(
    name: str,
    data_dir: Path,
    passphrase_file: Path | None,
    listen: str,
    relay_address: tuple[str, ...] | str | None,
    relay_key: str | None,
    relay_user: str | None,
    peers: tuple[str, ...],
    invites: tuple[str, ...],
    no_mdns: bool,
    mdns_interfaces: tuple[str, ...],
    no_dht: bool,
    dht_port: int,
    bootstrap: tuple[str, ...],
    limits_file: Path | None = None,
    no_sealed_sender: bool = False,
) -> RunOptions:
    """What :func:`node_options` parsed, checked: a bad value is a usage error naming its
    option; the passphrase is asked for last, once everything else is known to be right."""
    addresses = (relay_address,) if isinstance(relay_address, str) else tuple(relay_address or ())
    relay_address = addresses[0] if addresses else None
    if (relay_address is None) != (relay_key is None):
        raise click.UsageError("--relay and --relay-key go together")
    if relay_user is not None and relay_address is None:
        raise click.UsageError("--relay-user needs --relay and --relay-key")
    relay = (
        RelayInfo(
            parse_address(relay_address, "--relay"),
            parse_key(relay_key, "--relay-key"),
            tuple(parse_address(more, "--relay") for more in addresses[1:]),
        )
        if relay_address is not None and relay_key is not None
        else None
    )
    listen_address = parse_address(listen, "--listen")
    if not no_mdns and not mdns_interfaces and listen_address[0] in WILDCARDS:
        raise click.UsageError("listening on all interfaces: name one with --mdns-interface")
    for interface in mdns_interfaces:
        _check_interface(interface)
    presence = PresenceConfig(
        mdns=not no_mdns,
        mdns_interfaces=mdns_interfaces,
        dht=not no_dht,
        dht_port=dht_port,
        bootstrap=[parse_address(b, "--bootstrap") for b in bootstrap],
    )
    known, invited = _parse_peers("--peer", peers), _parse_peers("--invite", invites)
    limits = None if limits_file is None else load_limits(limits_file)
    is_new, _ = problems_of_layout(data_dir)
    passphrase = get_passphrase(passphrase_file, creating=is_new, what=str(data_dir))
    return RunOptions(
        name=name,
        data_dir=data_dir,
        listen=listen_address,
        relay=relay,
        passphrase=passphrase,
        peers=known,
        invites=invited,
        presence=presence,
        relay_user=relay_user,
        limits=limits,
        sealed_sender=not no_sealed_sender,
    )


def _check_interface(text: str) -> None:
    """An ``--mdns-interface`` must be an IP address this machine has: mDNS joins its
    multicast group there, and an error from deep in zeroconf would name neither."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(text).version == 6 else socket.AF_INET
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an IP address", param_hint="--mdns-interface"
        ) from None
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind((text, 0))
    except OSError as exc:
        raise bind_error("--mdns-interface", text, exc) from None
    finally:
        probe.close()


@node_group.command("run")
@node_options
def run_command(**params: Any) -> None:
    """Run a node: lines typed go to the group, messages received are printed."""
    asyncio.run(_run(run_options(**params)))


async def _run(opts: RunOptions) -> None:
    runtime = RealRuntime(f"qpc-{opts.name}")
    try:
        await _run_node(opts, runtime)
    finally:
        runtime.close()


@click.command("peers")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The data directory of the node to ask.",
)
@passphrase_file_option
def peers_command(data_dir: Path, passphrase_file: Path | None) -> None:
    """List the nodes that node has seen by discovery (LAN or DHT)."""
    if not (data_dir / "node.db").exists():
        raise NodeError(f"{data_dir} holds no node (run 'quicnprotochat node run' first)")
    passphrase = get_passphrase(passphrase_file, creating=False, what=str(data_dir))
    seen, now = asyncio.run(_read_peers(data_dir, passphrase))
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


async def _stdin_lines(node: Node) -> AsyncIterator[bytes]:
    """Lines typed or piped in. A regular file or /dev/null cannot be watched by the event loop
    (epoll refuses them): those are read through the node's executor instead, which returns at
    once."""
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            yield line
        return
    while line := await node.run(sys.stdin.buffer.readline):
        yield line


async def _run_node(opts: RunOptions, runtime: RealRuntime) -> None:
    stop = asyncio.Event()
    async with running(opts, runtime, stop) as run:
        follower = runtime.spawn(_print_events(run.messenger))
        session = runtime.spawn(_session(run, opts, stop))
        fatal = runtime.spawn(run.node.wait_fatal())
        try:
            # A relay with another key ends the run at once, whatever the session is doing.
            await asyncio.wait({session, fatal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (session, fatal, follower):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if fatal.done() and not fatal.cancelled():
            raise fatal.result()


async def _session(run: RunningNode, opts: RunOptions, stop: asyncio.Event) -> None:
    """Invite, then send typed lines until SIGINT or SIGTERM."""
    if opts.invites:
        await find_invitees(run.presence, [spec for spec in opts.invites if spec.address is None])
        await _invite(run.messenger, opts.invites)
    reader = run.node.runtime.spawn(_read_lines(run))
    try:
        await stop.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _invite(app: Messenger, invites: list[PeerSpec]) -> None:
    invited = ", ".join(terminal_safe(spec.name) for spec in invites)
    had = {conv.id for conv in app.conversations()}
    try:
        conv = await conversation_with(app, invites)
    except NodeError as exc:
        click.echo(f"ERROR: could not create the group: {terminal_safe(str(exc))}", err=True)
        return
    if conv.id in had:
        click.echo(f"the group with {invited} is ready (made before)")
        return
    assert conv.group_id is not None
    suite = app.suite_notes.get(conv.group_id, "")
    click.echo(f"group created with {invited} (ciphersuite {terminal_safe(suite)})")


async def _print_events(app: Messenger) -> None:
    """What others send, and strangers' invitations, as lines on stdout."""
    sub = app.subscribe()
    try:
        async for event in sub:
            if isinstance(event, MessageAdded) and event.message.direction is Direction.IN:
                _print_message(event.message)
            elif isinstance(event, InvitationReceived):
                _print_invitation(event.invitation)
    finally:
        sub.close()


def _print_message(message: Message) -> None:
    # Both the name and the text are the peer's choice: shown, never obeyed (node.core.display).
    prefix = f"[{terminal_safe(message.sender_name)}] "
    click.echo(prefix + terminal_safe(message.text, multiline=True, continuation=" " * len(prefix)))


def _print_invitation(invitation: PendingInvitation) -> None:
    # Not joined: a stranger's Welcome waits for the user (DESIGN §11).
    click.echo(
        f"invitation {invitation.id} from {fingerprint(invitation.inviter)} to a group of "
        f"{invitation.members}: /accept {invitation.id} or /refuse {invitation.id}"
    )


async def _answer_invitation(app: Messenger, text: str) -> None:
    command, _, number = text.partition(" ")
    try:
        invitation_id = int(number)
        if command == "/accept":
            await app.accept_invitation(invitation_id)
            click.echo(f"joined the group of invitation {invitation_id}")
        else:
            await app.refuse_invitation(invitation_id)
            click.echo(f"refused invitation {invitation_id}")
    except ValueError:
        click.echo(f"ERROR: {command} takes an invitation number", err=True)
    except NodeError as exc:
        click.echo(f"ERROR: {terminal_safe(str(exc))}", err=True)


async def _read_lines(run: RunningNode) -> None:
    node, app = run.node, run.messenger
    async for line in _stdin_lines(node):
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        if text.startswith(("/accept", "/refuse")):
            await _answer_invitation(app, text)
            continue
        conv = app.newest_group()
        if conv is None:
            click.echo("(no group yet: start with --invite, or wait to be invited)", err=True)
            continue
        try:
            sent = await app.send(conv.id, text)
        except NodeError as exc:
            click.echo(f"ERROR: {terminal_safe(str(exc))}", err=True)
            continue
        for delivery in sent.deliveries:
            if delivery.reason and delivery.state in (DeliveryState.QUEUED, DeliveryState.FAILED):
                kept = " (kept for retry)" if delivery.state is DeliveryState.QUEUED else ""
                who, why = terminal_safe(delivery.recipient_name), terminal_safe(delivery.reason)
                click.echo(f"(not delivered to {who}: {why}{kept})", err=True)
