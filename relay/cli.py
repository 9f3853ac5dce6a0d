"""``quicnprotochat relay run``: a store-and-forward relay in the foreground until interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from node.core.addresses import parse_address
from node.core.cli_errors import ReportingGroup
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.transport.runtime import RealRuntime
from relay.server import Relay, RelayConfig

PASSPHRASE_ENV = "QUICNPROTOCHAT_RELAY_PASSPHRASE"  # noqa: S105 - a variable name


@click.group("relay", cls=ReportingGroup)
def relay_group() -> None:
    """Run a store-and-forward relay."""


@relay_group.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file: listen, data_dir and the limits (docs/operations.md).",
)
@click.option("--listen", default=None, help="HOST:PORT to listen on [127.0.0.1:7700].")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the sealed identity key and mailbox store live [./relay-data].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line when ready.")
def run_command(
    config_path: Path | None, listen: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Serve Delivery calls (deliver, fetch, ack) until SIGINT or SIGTERM.

    The identity key is sealed with the passphrase in $QUICNPROTOCHAT_RELAY_PASSPHRASE.
    """
    settings: dict[str, Any] = {}
    if config_path is not None:
        try:
            settings = tomllib.loads(config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise click.ClickException(f"cannot read {config_path}: {exc}") from exc
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode()
    if not passphrase:
        raise click.ClickException(f"set {PASSPHRASE_ENV} to the passphrase of the relay key")
    try:
        host, port = parse_address(listen or settings.get("listen", "127.0.0.1:7700"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc
    config = RelayConfig(
        host=host,
        port=port,
        data_dir=data_dir or Path(settings.get("data_dir", "relay-data")),
        passphrase=passphrase,
        **limit_settings(settings, config_path),
    )
    try:
        asyncio.run(_serve(config, as_json))
    except NodeError as exc:
        raise click.ClickException(str(exc)) from exc


_NOT_LIMITS = {"host", "port", "data_dir", "passphrase"}
LIMIT_KEYS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(RelayConfig) if f.name not in _NOT_LIMITS
}


def limit_settings(settings: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """The limit keys of a relay TOML file, type-checked; an unknown key or a wrong type is
    refused with one line naming it."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in ("listen", "data_dir"):
            continue
        field = LIMIT_KEYS.get(key)
        if field is None:
            raise click.ClickException(f"{source}: unknown key {key!r}")
        default = field.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or (not isinstance(value, bool) and value < 0):
            kind = type(default).__name__
            raise click.ClickException(f"{source}: {key} must be a non-negative {kind}")
        out[key] = value
    return out


async def _serve(config: RelayConfig, as_json: bool) -> None:
    runtime = RealRuntime("qpc-relay")
    try:
        await _serve_with(config, as_json, Relay(config, runtime))
    finally:
        runtime.close()


async def _serve_with(config: RelayConfig, as_json: bool, relay: Relay) -> None:
    running = await relay.start()
    key = running.identity.public_key
    host, port = running.address
    if as_json:
        print(
            json.dumps({"event": "ready", "address": f"{host}:{port}", "identity": key.hex()}),
            flush=True,
        )
    else:
        print(f"relay listening on {host}:{port}")
        print(f"identity key: {key.hex()}")
        print(f"fingerprint:  {fingerprint(key)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await relay.stop()
        print("relay stopped", file=sys.stderr, flush=True)
