"""``quicnprotochat relay run``: a store-and-forward relay in the foreground until interrupted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import click

from node.core.addresses import parse_address
from node.core.cli_errors import ReportingGroup, bind_error
from node.core.identity import fingerprint
from node.transport.runtime import RealRuntime
from relay.config import ConfigError, FileSettings, load_config
from relay.server import Relay, RelayConfig

PASSPHRASE_ENV = "QUICNPROTOCHAT_RELAY_PASSPHRASE"  # noqa: S105 - a variable name
DEFAULT_LISTEN = "127.0.0.1:7700"
DEFAULT_DATA_DIR = "relay-data"


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
    file = load_config(config_path) if config_path is not None else FileSettings()
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode("utf-8", "surrogateescape")
    if not passphrase:
        raise click.ClickException(f"set {PASSPHRASE_ENV} to the passphrase of the relay key")
    if listen is not None:
        host, port = _address(listen, "--listen")
    else:
        host, port = _address(file.listen or DEFAULT_LISTEN, f"{config_path}: listen")
    where = data_dir or file.data_dir or Path(DEFAULT_DATA_DIR)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"the relay's data directory {where} is not a directory")
    config = RelayConfig(host=host, port=port, data_dir=where, passphrase=passphrase, **file.limits)
    asyncio.run(_serve(config, as_json))


def _address(text: str, source: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        if source == "--listen":
            raise click.BadParameter(str(exc), param_hint=source) from None
        raise ConfigError(f"{source}: {exc}") from None


async def _serve(config: RelayConfig, as_json: bool) -> None:
    runtime = RealRuntime("qpc-relay")
    try:
        await _serve_with(config, as_json, Relay(config, runtime))
    finally:
        runtime.close()


async def _serve_with(config: RelayConfig, as_json: bool, relay: Relay) -> None:
    try:
        running = await relay.start()
    except OSError as exc:
        if exc.filename is not None:
            raise
        # No file named: it was the socket.
        raise bind_error("--listen", (config.host, config.port), exc) from None
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
