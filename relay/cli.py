"""``quicnprotochat relay run``: a store-and-forward relay in the foreground until interrupted;
``quicnprotochat relay status``: what its data directory holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from prometheus_client import disable_created_metrics

from node.core.addresses import parse_address
from node.core.cli_errors import ReportingGroup, bind_error
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.transport.runtime import RealRuntime
from relay import data_lock
from relay.config import (
    DB_KEY_ENV,
    DSN_ENV,
    PRODUCTION_ENV,
    ConfigError,
    FileSettings,
    env_name,
    load_config,
    load_settings,
    production_problems,
    store_settings,
)
from relay.logging_setup import configure_logging
from relay.metrics import MAX_REQUEST_HEAD, RelayMetrics
from relay.migrations import SCHEMA_VERSION, migrate_pg
from relay.server import Relay, RelayConfig
from relay.status import read_status, status_lines
from relay.store import open_sqlite
from relay.store_move import move_sqlite_to_pg
from relay.store_pg import connect_pg

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "QUICNPROTOCHAT_RELAY_PASSPHRASE"  # noqa: S105 - a variable name
DEFAULT_LISTEN = "127.0.0.1:7700"
DEFAULT_DATA_DIR = "relay-data"
# The metrics port: scrapes served at once, and how long one may take to send its request.
MAX_SCRAPES = 8
SCRAPE_READ_TIMEOUT = 5.0
DEPTH_CACHE_S = 5.0  # mailbox depth is counted in the store at most this often


@click.group("relay", cls=ReportingGroup)
def relay_group() -> None:
    """Run a store-and-forward relay."""


_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file: listen, data_dir and the limits (docs/operations.md).",
)
_DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the sealed identity key and mailbox store live [./relay-data].",
)


@relay_group.command("run")
@_CONFIG_OPTION
@click.option("--listen", default=None, help="HOST:PORT to listen on [127.0.0.1:7700].")
@_DATA_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line when ready.")
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve /metrics and /healthz over HTTP there [off].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or one JSON object each [text].",
)
def run_command(
    config_path: Path | None,
    listen: str | None,
    data_dir: Path | None,
    as_json: bool,
    metrics_listen: str | None,
    log_format: str | None,
) -> None:
    """Serve Delivery calls (deliver, fetch, ack) until SIGINT or SIGTERM.

    The identity key is sealed with the passphrase in $QUICNPROTOCHAT_RELAY_PASSPHRASE. Every
    relay.toml key is also a variable, QUICNPROTOCHAT_RELAY_ and the key in capitals.
    """
    file = load_settings(config_path, os.environ)
    configure_logging(log_format or file.op("log_format"))
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode("utf-8", "surrogateescape")
    if not passphrase:
        raise click.ClickException(f"set {PASSPHRASE_ENV} to the passphrase of the relay key")
    if listen is not None:
        host, port = _address(listen, "--listen")
    else:
        host, port = _address(file.listen or DEFAULT_LISTEN, _source(config_path, "listen"))
    where = data_dir or file.data_dir or Path(DEFAULT_DATA_DIR)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"the relay's data directory {where} is not a directory")
    limits = store_settings(file.limits, dict(os.environ))
    if file.production:
        problems = production_problems(
            limits, where, allow_open_accounts=file.op("allow_open_accounts")
        )
        if problems:
            raise ConfigError(
                f"production mode (${PRODUCTION_ENV}) refuses: " + "; ".join(problems)
            )
    metrics_text = metrics_listen if metrics_listen is not None else file.op("metrics_listen")
    metrics_at = None
    if metrics_text:
        source = "--metrics-listen" if metrics_listen is not None else None
        metrics_at = _address(metrics_text, source or _source(config_path, "metrics_listen"))
    config = RelayConfig(host=host, port=port, data_dir=where, passphrase=passphrase, **limits)
    asyncio.run(_serve(config, as_json, metrics_at, float(file.op("shutdown_grace_s"))))


@relay_group.command("status")
@_CONFIG_OPTION
@_DATA_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
def status_command(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Mailboxes, accounts and limits of a relay's data directory (read only; the relay may
    be running)."""
    file = load_settings(config_path, os.environ)
    where = data_dir or file.data_dir or Path(DEFAULT_DATA_DIR)
    config = RelayConfig(host="", port=0, data_dir=where, passphrase=b"", **file.limits)
    status = read_status(config, now_ms=time.time_ns() // 1_000_000)
    if as_json:
        click.echo(json.dumps(status, sort_keys=True))
    else:
        for line in status_lines(status):
            click.echo(line)


def _source(config_path: Path | None, key: str) -> str:
    if env_name(key) in os.environ:
        return f"${env_name(key)}"
    return f"{config_path}: {key}"


def _address(text: str, source: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        if source.startswith("--"):
            raise click.BadParameter(str(exc), param_hint=source) from None
        raise ConfigError(f"{source}: {exc}") from None


async def _serve(
    config: RelayConfig, as_json: bool, metrics_at: tuple[str, int] | None, grace: float
) -> None:
    runtime = RealRuntime("qpc-relay")
    try:
        await _serve_with(config, as_json, Relay(config, runtime), runtime, metrics_at, grace)
    finally:
        runtime.close()


async def _serve_with(
    config: RelayConfig,
    as_json: bool,
    relay: Relay,
    runtime: RealRuntime,
    metrics_at: tuple[str, int] | None,
    grace: float,
) -> None:
    try:
        running = await relay.start()
    except OSError as exc:
        if exc.filename is not None:
            raise
        # No file named: it was the socket.
        raise bind_error("--listen", (config.host, config.port), exc) from None
    service = relay.service
    # A *_created series beside every counter would only double each scrape.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    depth = _DepthCache(config)
    metrics = RelayMetrics(relay.metrics, depth.get)
    metrics.in_flight.set_function(lambda: service.in_flight)
    service.observer = metrics.observe
    scrapes: asyncio.Server | None = None
    ready: dict[str, Any] = {}
    try:
        if metrics_at is not None:
            try:
                scrapes = await _serve_metrics(metrics, metrics_at, runtime, depth)
            except OSError as exc:
                raise bind_error("--metrics-listen", metrics_at, exc) from None
            sockname = scrapes.sockets[0].getsockname()
            ready["metrics"] = f"{sockname[0]}:{sockname[1]}"
        key = running.identity.public_key
        host, port = running.address
        if as_json:
            event = {"event": "ready", "address": f"{host}:{port}", "identity": key.hex()}
            print(json.dumps(event | ready), flush=True)
        else:
            print(f"relay listening on {host}:{port}")
            if "metrics" in ready:
                print(f"metrics on http://{ready['metrics']}/metrics")
            print(f"identity key: {key.hex()}")
            print(f"fingerprint:  {fingerprint(key)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        metrics.healthy = False
        # Calls in flight are answered (long polls at once, with what they have), new ones
        # refused busy; whatever outlives the grace period is cut off by closing.
        left = await service.drain(grace)
        if left:
            log.warning("stopping with %d calls unanswered after %g s", left, grace)
    finally:
        if scrapes is not None:
            scrapes.close()
        await relay.stop()
        print("relay stopped", file=sys.stderr, flush=True)


class _DepthCache:
    """Envelopes in the store and in its fullest mailbox, counted read-only at most every
    :data:`DEPTH_CACHE_S` (scrapes may come often; a count scans an index)."""

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self.value: tuple[int, int] | None = None
        self.read_at: float | None = None

    def get(self) -> tuple[int, int] | None:
        return self.value

    def refresh(self) -> None:
        status = read_status(self._config, accounts=False)
        store = status["mailboxes"]
        self.value = (int(store["envelopes"]), int(store["largest_mailbox"]))


async def _serve_metrics(
    metrics: RelayMetrics, at: tuple[str, int], runtime: RealRuntime, depth: _DepthCache
) -> asyncio.Server:
    active = 0

    async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_SCRAPES:
            writer.close()
            return
        active += 1
        try:
            async with asyncio.timeout(SCRAPE_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            now = runtime.monotonic()
            if depth.read_at is None or now - depth.read_at >= DEPTH_CACHE_S:
                depth.read_at = now
                with contextlib.suppress(NodeError):
                    await runtime.run_blocking(depth.refresh)
            writer.write(metrics.http_answer(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a scraper that sends nothing, or too much, gets nothing
        except ConnectionError:
            pass  # it left first
        finally:
            active -= 1
            writer.close()

    return await asyncio.start_server(scrape, at[0], at[1], limit=MAX_REQUEST_HEAD)


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
        if from_sqlite is not None:
            where = from_sqlite if from_sqlite.is_dir() else from_sqlite.parent
            data_lock.must_be_free(where, "what it accepted after the copy would be lost")
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
        f" {report.accounts} accounts and {report.sessions} sessions, and"
        f" {report.key_packages} KeyPackages and {report.usernames} usernames to PostgreSQL"
    )
