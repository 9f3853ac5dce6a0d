"""``quicnprotochat whoami`` and ``quicnprotochat verify``: identities people can check.

``whoami`` shows who this data directory is (name, fingerprint) and an invite link to hand out,
with its QR code. ``verify`` shows the safety number of this identity and a peer's, to compare
out of band. Both only read ``identity.key`` (its passphrase: ``node.app.passphrase``): they never
create or change anything in the data directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from node.app.identity_view import verify_lines, whoami_lines
from node.app.passphrase import get_passphrase, passphrase_file_option
from node.app.peer_ref import PeerRef, PeerRefError, parse_identity_key, parse_peer_ref
from node.core.addresses import Address, format_address, parse_address
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.core.identity import Identity, fingerprint
from node.core.invite_link import InviteLink, LinkRelay, encode_invite_link
from node.core.safety_number import safety_number
from node.transport.keystore import load_identity
from node.transport.runtime import RealRuntime

NAME_ENV = "QUICNPROTOCHAT_NAME"
IDENTITY = "identity.key"
DAY_MS = 24 * 3600 * 1000

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The data directory whose identity to use.",
)


def fail(message: str) -> NoReturn:
    """One line for the person, exit status 1 (a usage error is click's, status 2)."""
    click.echo(f"ERROR: {terminal_safe(message)}", err=True)
    sys.exit(1)


@dataclass(frozen=True)
class _Opened:
    identity: Identity
    now_ms: int


async def _open(data_dir: Path, passphrase: bytes) -> _Opened:
    runtime = RealRuntime("qpc-identity")
    try:
        identity = await load_identity(data_dir / IDENTITY, passphrase, runtime)
        return _Opened(identity, runtime.wall_ms())
    finally:
        runtime.close()


def _open_identity(data_dir: Path, passphrase_file: Path | None) -> _Opened:
    if not (data_dir / IDENTITY).exists():
        # Said before asking for a passphrase that would open nothing.
        fail(
            f"no identity key at {data_dir / IDENTITY} (a node makes one: quicnprotochat node run)"
        )
    passphrase = get_passphrase(passphrase_file, creating=False, what=str(data_dir))
    try:
        return asyncio.run(_open(data_dir, passphrase))
    except NodeError as exc:
        fail(str(exc))


def _addresses(texts: tuple[str, ...]) -> tuple[Address, ...]:
    try:
        return tuple(parse_address(t) for t in texts)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--address") from None


@click.command("whoami")
@DATA_DIR
@passphrase_file_option
@click.option(
    "--name", required=True, envvar=NAME_ENV, help="Your display name, as the link carries it."
)
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="HOST:PORT",
    help="Where your node listens, for the link (repeatable; none: peers find you by discovery).",
)
@click.option("--relay", "relay_address", default=None, help="Your relay's HOST:PORT.")
@click.option("--relay-key", default=None, help="Your relay's identity key (hex).")
@click.option(
    "--expires-in",
    type=click.IntRange(1, 3650),
    default=None,
    metavar="DAYS",
    help="Make the link expire after this many days [never].",
)
@click.option("--no-qr", is_flag=True, help="Do not draw the QR code.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def whoami_command(
    data_dir: Path,
    passphrase_file: Path | None,
    name: str,
    addresses: tuple[str, ...],
    relay_address: str | None,
    relay_key: str | None,
    expires_in: int | None,
    no_qr: bool,
    as_json: bool,
) -> None:
    """Show your name, fingerprint and invite link (with its QR code)."""
    if (relay_address is None) != (relay_key is None):
        raise click.UsageError("--relay and --relay-key go together")
    try:
        relay = (
            LinkRelay(parse_address(relay_address), parse_identity_key(relay_key))
            if relay_address is not None and relay_key is not None
            else None
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--relay/--relay-key") from None
    where = _addresses(addresses)
    opened = _open_identity(data_dir, passphrase_file)
    identity, now = opened.identity, opened.now_ms
    try:
        link = InviteLink(
            identity_key=identity.public_key,
            display_name=name,
            addresses=where,
            relay=relay,
            issued_at_ms=now,
            expires_at_ms=None if expires_in is None else now + expires_in * DAY_MS,
        )
        text = encode_invite_link(link, identity)
    except ValueError as exc:
        fail(f"cannot make the link: {exc}")
    if as_json:
        click.echo(json.dumps(_link_json(link, text), ensure_ascii=False))
        return
    for line in whoami_lines(name, identity.public_key, text, qr=not no_qr):
        click.echo(line)


def _link_json(link: InviteLink, text: str) -> dict[str, Any]:
    return {
        "name": link.display_name,
        "identity": link.identity_key.hex(),
        "fingerprint": fingerprint(link.identity_key),
        "link": text,
        "addresses": [format_address(a) for a in link.addresses],
        "relay": None
        if link.relay is None
        else {
            "address": format_address(link.relay.address),
            "identity": link.relay.identity_key.hex(),
        },
        "issued_at_ms": link.issued_at_ms,
        "expires_at_ms": link.expires_at_ms,
    }


@click.command("verify")
@DATA_DIR
@passphrase_file_option
@click.argument("peer", metavar="PEER")
@click.option("--no-qr", is_flag=True, help="Do not draw the QR code.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify_command(
    data_dir: Path, passphrase_file: Path | None, peer: str, no_qr: bool, as_json: bool
) -> None:
    """Show the safety number of you and PEER (a qpc:// link, KEYHEX or NAME=KEYHEX).

    Compare it with the number PEER's side shows: equal means no one is in between.
    """
    opened = _open_identity(data_dir, passphrase_file)
    try:
        ref = parse_peer_ref(peer, now_ms=opened.now_ms, allow_bare_key=True)
    except PeerRefError as exc:
        raise click.BadParameter(str(exc), param_hint="PEER") from None
    except NodeError as exc:  # the link was refused
        fail(str(exc))
    own = opened.identity.public_key
    if ref.identity == own:
        fail("that is your own identity: a safety number is for you and someone else")
    digits = safety_number(own, ref.identity)
    if as_json:
        click.echo(json.dumps(_verify_json(own, ref, digits), ensure_ascii=False))
        return
    for line in verify_lines(ref.name, ref.identity, digits, qr=not no_qr):
        click.echo(line)


def _verify_json(own: bytes, ref: PeerRef, digits: str) -> dict[str, Any]:
    return {
        "safety_number": digits,
        "identity": own.hex(),
        "peer": ref.identity.hex(),
        "peer_name": ref.name,
        "peer_fingerprint": fingerprint(ref.identity),
    }
