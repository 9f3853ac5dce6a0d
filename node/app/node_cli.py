"""``quicnprotochat node run``: a node in the foreground with a line-based chat on stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from node.app.node import ChatMessage, Node
from node.app.router import RelayInfo
from node.core.addresses import Address
from node.core.addresses import parse_address as core_parse_address
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.transport.keystore import load_or_create_identity
from node.transport.runtime import ThreadRunner

PASSPHRASE_ENV = "QUICNPROTOCHAT_PASSPHRASE"  # noqa: S105 - a variable name


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
    address: Address


def parse_peer(text: str) -> PeerSpec:
    """``NAME=KEYHEX@HOST:PORT``"""
    name, eq, rest = text.partition("=")
    key, at, address = rest.partition("@")
    if not eq or not at or not name:
        raise click.BadParameter(f"expected NAME=KEYHEX@HOST:PORT, got {text!r}")
    return PeerSpec(name, parse_key(key), parse_address(address))


@click.group("node")
def node_group() -> None:
    """Run a peer node."""


@node_group.command("run")
@click.option("--name", required=True, help="Your display name.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Holds your identity key, sealed with $QUICNPROTOCHAT_PASSPHRASE.",
)
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT (UDP).")
@click.option("--relay", "relay_address", default=None, help="Relay HOST:PORT (optional).")
@click.option("--relay-key", default=None, help="The relay's identity key (hex), to pin it.")
@click.option("--peer", "peers", multiple=True, help="NAME=KEYHEX@HOST:PORT of a known peer.")
@click.option(
    "--invite",
    "invites",
    multiple=True,
    help="NAME=KEYHEX@HOST:PORT: create a group with these peers at start.",
)
def run_command(
    name: str,
    data_dir: Path,
    listen: str,
    relay_address: str | None,
    relay_key: str | None,
    peers: tuple[str, ...],
    invites: tuple[str, ...],
) -> None:
    """Run a node: lines typed go to the group, messages received are printed."""
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode()
    if not passphrase:
        raise click.ClickException(f"set {PASSPHRASE_ENV} to the passphrase of your identity key")
    if (relay_address is None) != (relay_key is None):
        raise click.ClickException("--relay and --relay-key go together")
    relay = (
        RelayInfo(parse_address(relay_address), parse_key(relay_key))
        if relay_address is not None and relay_key is not None
        else None
    )
    try:
        asyncio.run(
            _run(
                name,
                data_dir,
                parse_address(listen),
                relay,
                passphrase,
                [parse_peer(p) for p in peers],
                [parse_peer(p) for p in invites],
            )
        )
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc


async def _run(
    name: str,
    data_dir: Path,
    listen: Address,
    relay: RelayInfo | None,
    passphrase: bytes,
    peers: list[PeerSpec],
    invites: list[PeerSpec],
) -> None:
    runner = ThreadRunner()
    try:
        identity, created = await load_or_create_identity(
            data_dir / "identity.key", passphrase, runner
        )
    finally:
        runner.shutdown()
    node = Node(identity, name=name, relay=relay)
    node.on_message = _print_message
    for spec in [*peers, *invites]:
        node.remember_peer(spec.identity, spec.name, spec.address)
    host, port = await node.start(*listen)
    click.echo(f"{'new identity' if created else 'identity'}: {identity.public_key.hex()}")
    click.echo(f"fingerprint: {fingerprint(identity.public_key)}")
    click.echo(f"listening on {host}:{port}", nl=True)
    if invites:
        group_id = node.create_group()
        report = await node.invite(group_id, [spec.identity for spec in invites])
        for peer, why in report.failed.items():
            click.echo(f"could not invite {node.contacts.name(peer)}: {why}", err=True)
        click.echo(f"group created with {', '.join(s.name for s in invites)}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.create_task(_read_lines(node))
    try:
        await stop.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await node.stop()


def _print_message(message: ChatMessage) -> None:
    click.echo(f"[{message.sender_name}] {message.text}")


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
            click.echo(f"ERROR: {exc}", err=True)
            continue
        for peer, why in report.failed.items():
            click.echo(f"(not delivered to {node.contacts.name(peer)}: {why})", err=True)
