"""``quicnprotochat whoami`` and ``quicnprotochat verify``: identities people can check.

``whoami`` shows who this data directory is (name, fingerprint) and an invite link to hand out,
with its QR code; the link carries the node's envelope key (sealed sender), read from its store.
``verify`` shows the safety number of this identity and a peer's, to compare out of band. Both
only read (``identity.key``, and for ``whoami`` ``node.db``; the passphrase:
``node.app.passphrase``): they change nothing the data directory keeps (reading ``node.db`` may
leave SQLite's own ``-wal``/``-shm`` side files, which the node uses anyway).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import click

from node.app.datadir import DATABASE, SALT
from node.app.identity_view import verify_lines, whoami_lines
from node.app.passphrase import get_passphrase, passphrase_file_option
from node.app.peer_ref import PeerRef, PeerRefError, parse_identity_key, parse_peer_ref
from node.app.store import NodeStore, read_salt, store_keys
from node.core.addresses import Address, format_address, parse_address
from node.core.display import terminal_safe
from node.core.errors import NodeError, StorageError
from node.core.hybrid_kem import HybridPrivateKey
from node.core.identity import Identity, fingerprint
from node.core.invite_link import InviteLink, LinkRelay, encode_invite_link
from node.core.keyfile import DEFAULT_KDF
from node.core.safety_number import safety_number
from node.transport.keystore import load_identity
from node.transport.runtime import RealRuntime

NAME_ENV = "QUICNPROTOCHAT_NAME"
IDENTITY = "identity.key"
ENVELOPE_SEED_NAME = "envelope_key_seed"  # the store secret Node.envelope_key keeps
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
    envelope_key: bytes | None = None  # public; None: not asked for, or none to be had
    why_no_key: str = "this node has no envelope key yet (start it once, then run whoami again)"


async def _open(data_dir: Path, passphrase: bytes, envelope_key: bool) -> _Opened:
    runtime = RealRuntime("qpc-identity")
    try:
        identity = await load_identity(data_dir / IDENTITY, passphrase, runtime)
        opened = _Opened(identity, runtime.wall_ms())
        if envelope_key:
            try:
                key = await runtime.run_blocking(lambda: _read_envelope_key(data_dir, passphrase))
            except StorageError as exc:
                # The identity opened: a link without the key still serves, so say why.
                return replace(opened, why_no_key=f"the envelope key could not be read: {exc}")
            opened = replace(opened, envelope_key=key)
        return opened
    finally:
        runtime.close()


def _read_envelope_key(data_dir: Path, passphrase: bytes) -> bytes | None:
    """The envelope public key the node of ``data_dir`` made (at its first start), read
    without writing anything; None if it has made none yet. Blocking."""
    if not (data_dir / DATABASE).exists():
        return None
    db_key, _ = store_keys(passphrase, read_salt(data_dir / SALT), DEFAULT_KDF)
    store = NodeStore(data_dir / DATABASE, db_key, create=False, read_only=True)
    try:
        seed = store.get_secret(ENVELOPE_SEED_NAME)
    finally:
        store.close()
    return None if seed is None else HybridPrivateKey(seed).public_key


def _open_identity(
    data_dir: Path, passphrase_file: Path | None, *, envelope_key: bool = False
) -> _Opened:
    if not (data_dir / IDENTITY).exists():
        # Said before asking for a passphrase that would open nothing.
        fail(
            f"no identity key at {data_dir / IDENTITY} (a node makes one: quicnprotochat node run)"
        )
    passphrase = get_passphrase(passphrase_file, creating=False, what=str(data_dir))
    try:
        return asyncio.run(_open(data_dir, passphrase, envelope_key))
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
    opened = _open_identity(data_dir, passphrase_file, envelope_key=True)
    identity, now = opened.identity, opened.now_ms
    try:
        link = InviteLink(
            identity_key=identity.public_key,
            display_name=name,
            addresses=where,
            relay=relay,
            issued_at_ms=now,
            expires_at_ms=None if expires_in is None else now + expires_in * DAY_MS,
            envelope_key=opened.envelope_key,
        )
        text = encode_invite_link(link, identity)
    except ValueError as exc:
        fail(f"cannot make the link: {exc}")
    if as_json:
        click.echo(json.dumps(_link_json(link, text), ensure_ascii=False))
        return
    if link.envelope_key is None:
        click.echo(
            f"note: {opened.why_no_key}: mail relayed to you from this link is not sealed "
            "until the sender finds your peer record",
            err=True,
        )
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
        "envelope_key": None if link.envelope_key is None else link.envelope_key.hex(),
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
