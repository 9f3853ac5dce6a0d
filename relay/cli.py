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
from relay.config import DB_KEY_ENV, DSN_ENV, ConfigError, FileSettings, load_config, store_settings
from relay.migrations import SCHEMA_VERSION, migrate_pg
from relay.server import Relay, RelayConfig
from relay.store import open_sqlite
from relay.store_move import move_sqlite_to_pg
from relay.store_pg import connect_pg

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
    limits = store_settings(file.limits, dict(os.environ))
    config = RelayConfig(host=host, port=port, data_dir=where, passphrase=passphrase, **limits)
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


@relay_group.command("migrate")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The relay's TOML file: its store, dsn and data_dir.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The embedded store's directory [./relay-data].",
)
@click.option(
    "--from-sqlite",
    "from_sqlite",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Move this embedded store (a data directory or its mailboxes.sqlite3) into the"
    f" PostgreSQL store named by dsn / ${DSN_ENV}.",
)
def migrate_command(
    config_path: Path | None, data_dir: Path | None, from_sqlite: Path | None
) -> None:
    """Bring the relay's store to this version's schema, or move a SQLite store to PostgreSQL.

    Run it with the relays stopped. An embedded store's key comes from db_key or
    $QUICNPROTOCHAT_RELAY_DB_KEY.
    """
    file = load_config(config_path) if config_path is not None else FileSettings()
    settings = dict(file.limits)
    if os.environ.get(DSN_ENV):
        settings["dsn"] = os.environ[DSN_ENV]
    if os.environ.get(DB_KEY_ENV):
        settings["db_key"] = os.environ[DB_KEY_ENV]
    key_text = settings.pop("db_key", "")
    # A dsn (or --from-sqlite) with no store named means PostgreSQL: there is nothing else
    # it could mean.
    wants_pg = from_sqlite is not None or bool(settings.get("dsn"))
    store = settings.get("store", "postgresql" if wants_pg else "sqlite")
    probe = RelayConfig(host="", port=0, data_dir=Path(), passphrase=b"", db_key=key_text)
    key = probe.raw_db_key()
    if from_sqlite is not None or store == "postgresql":
        dsn = settings.get("dsn")
        if not dsn:
            raise ConfigError(f"relay migrate to PostgreSQL needs dsn (or ${DSN_ENV})")
        asyncio.run(_migrate_pg(dsn, from_sqlite, key))
        return
    where = data_dir or file.data_dir or Path(DEFAULT_DATA_DIR)
    if not where.is_dir():
        raise ConfigError(f"the relay's data directory {where} does not exist")
    for name, part in (("mailboxes.sqlite3", "mailboxes"), ("accounts.sqlite3", "accounts")):
        path = where / name
        if path.exists():
            db = open_sqlite(path, key, part)  # type: ignore[arg-type]
            db.close()
            print(f"{path}: schema version {SCHEMA_VERSION}")


async def _migrate_pg(dsn: str, from_sqlite: Path | None, key: bytes | None) -> None:
    conn = await connect_pg(dsn)
    try:
        if from_sqlite is None:
            before, after = await migrate_pg(conn)
            print(f"PostgreSQL store: schema version {before} -> {after}")
            return
        report = await move_sqlite_to_pg(conn, from_sqlite, key)
    finally:
        await conn.close()
    print(
        f"moved {report.envelopes} envelopes in {report.mailboxes} mailboxes,"
        f" {report.accounts} accounts and {report.sessions} sessions to PostgreSQL"
    )
