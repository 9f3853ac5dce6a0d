"""Running a relay: its sealed identity key, its mailbox store, and a QUIC endpoint serving both."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node.core.addresses import Address
from node.core.errors import StorageError
from node.core.identity import Identity
from node.core.runtime import Runtime
from node.transport.endpoint import Endpoint, EndpointConfig
from node.transport.keystore import load_or_create_identity
from relay import data_lock
from relay.accounts import SETUP_FILE, AccountLimits, AccountService, load_or_create_setup
from relay.directory import DirectoryLimits, DirectoryService
from relay.directory_pg import PgDirectory
from relay.directory_store import DirectoryQuotas, DirectoryStore
from relay.service import RelayService, ServiceLimits
from relay.store import MailboxStore, StoreQuotas
from relay.store_accounts import AccountStore
from relay.store_api import (
    AccountBackend,
    DirectoryBackend,
    MailboxBackend,
    SqliteAccounts,
    SqliteDirectory,
    SqliteMailboxes,
)
from relay.store_pg import PgStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``relay.toml`` may set (``docs/operations.md`` lists each key)."""

    host: str
    port: int
    data_dir: Path
    passphrase: bytes
    max_frame: int = 1 << 20
    # Mailboxes and the store.
    max_per_mailbox: int = 10_000
    max_mailbox_bytes: int = 64 << 20
    max_mailboxes: int = 100_000
    max_store_bytes: int = 4 << 30
    max_envelope_bytes: int = 0  # 0: the most one fetch answer can carry (~1 MiB)
    # Sealed sender: take envelopes whose sender only the recipient can read (ADR 0008).
    allow_sealed_sender: bool = True
    envelope_ttl_s: float = 7 * 24 * 3600.0
    # Keep who delivered a plain envelope that asks, to tell them if it expires (ADR 0009).
    failure_notices: bool = True
    purge_interval_s: float = 60.0
    # Per caller (identity key proven in the handshake).
    calls_per_second: float = 50.0
    call_burst: int = 200
    envelopes_per_mailbox_per_second: float = 5.0
    envelope_burst_per_mailbox: int = 100
    new_mailboxes_per_second: float = 1.0
    new_mailbox_burst: int = 60
    # Connections from strangers.
    address_validation: bool = True
    max_half_open: int = 256
    handshake_timeout_s: float = 10.0
    max_connections: int = 4096
    max_connections_per_host: int = 256
    max_connections_per_identity: int = 16
    max_calls_per_connection: int = 64
    max_open_streams: int = 8192
    max_buffered_per_connection: int = 8 << 20
    max_buffered: int = 256 << 20
    request_read_timeout_s: float = 20.0
    # Accounts (OPAQUE): "open" serves any identity key, "required" only logged-in ones.
    accounts: str = "open"
    session_ttl_s: float = 30 * 24 * 3600.0
    max_sessions_per_account: int = 8
    login_attempts_per_minute: float = 5.0
    login_attempt_burst: int = 10
    registrations_per_minute: float = 1.0
    registration_burst: int = 5
    max_pending_logins: int = 1024
    login_timeout_s: float = 30.0
    max_accounts: int = 1_000_000
    # Directory: KeyPackages held for offline owners, and username lookups.
    max_key_packages_per_suite: int = 32
    max_key_package_bytes: int = 8192
    max_directory_bytes: int = 1 << 30
    key_package_max_age_s: float = 28 * 24 * 3600.0
    key_package_low_water: int = 4
    key_package_fetches_per_minute: float = 30.0
    key_package_fetch_burst: int = 20
    lookups_per_minute: float = 30.0
    lookup_burst: int = 20
    publishes_per_minute: float = 10.0
    publish_burst: int = 10
    # Storage: "sqlite" (embedded; SQLCipher when db_key is set) or "postgresql" (several relay
    # processes share one service; dsn names the database).
    store: str = "sqlite"
    dsn: str = ""
    db_key: str = ""  # 64 hex digits: the raw SQLCipher key of the embedded store
    pg_pool_size: int = 8
    pg_timeout_s: float = 5.0

    def endpoint_config(self) -> EndpointConfig:
        return EndpointConfig(
            max_frame=self.max_frame,
            # The call deadline sits above the longest long poll (relay.service.MAX_WAIT_MS).
            call_deadline=40.0,
            max_concurrent_calls=self.max_calls_per_connection,
            retry=self.address_validation,
            max_half_open=self.max_half_open,
            handshake_timeout=self.handshake_timeout_s,
            max_connections=self.max_connections,
            max_connections_per_host=self.max_connections_per_host,
            max_connections_per_identity=self.max_connections_per_identity,
            max_open_streams=self.max_open_streams,
            max_buffered_per_connection=self.max_buffered_per_connection,
            max_buffered=self.max_buffered,
            request_read_timeout=self.request_read_timeout_s,
        )

    def service_limits(self) -> ServiceLimits:
        return ServiceLimits(
            calls_per_second=self.calls_per_second,
            call_burst=self.call_burst,
            envelopes_per_mailbox_per_second=self.envelopes_per_mailbox_per_second,
            envelope_burst_per_mailbox=self.envelope_burst_per_mailbox,
            new_mailboxes_per_second=self.new_mailboxes_per_second,
            new_mailbox_burst=self.new_mailbox_burst,
            envelope_ttl_ms=int(self.envelope_ttl_s * 1000),
            max_envelope_bytes=self.max_envelope_bytes or None,
            allow_sealed_sender=self.allow_sealed_sender,
            failure_notices=self.failure_notices,
        )

    def account_limits(self) -> AccountLimits:
        return AccountLimits(
            mode=self.accounts,
            session_ttl_ms=int(self.session_ttl_s * 1000),
            max_sessions_per_account=self.max_sessions_per_account,
            login_attempts_per_minute=self.login_attempts_per_minute,
            login_attempt_burst=self.login_attempt_burst,
            registrations_per_minute=self.registrations_per_minute,
            registration_burst=self.registration_burst,
            max_pending_logins=self.max_pending_logins,
            login_timeout_ms=int(self.login_timeout_s * 1000),
            max_accounts=self.max_accounts,
        )

    def directory_limits(self) -> DirectoryLimits:
        return DirectoryLimits(
            max_key_package_bytes=self.max_key_package_bytes,
            key_package_low_water=self.key_package_low_water,
            key_package_max_age_ms=int(self.key_package_max_age_s * 1000),
            key_package_fetches_per_minute=self.key_package_fetches_per_minute,
            key_package_fetch_burst=self.key_package_fetch_burst,
            lookups_per_minute=self.lookups_per_minute,
            lookup_burst=self.lookup_burst,
            publishes_per_minute=self.publishes_per_minute,
            publish_burst=self.publish_burst,
        )

    def directory_quotas(self) -> DirectoryQuotas:
        return DirectoryQuotas(
            max_per_suite=self.max_key_packages_per_suite,
            max_bytes=self.max_directory_bytes,
            max_age_ms=int(self.key_package_max_age_s * 1000),
        )

    def raw_db_key(self) -> bytes | None:
        """The embedded store's SQLCipher key, or None for a plain store."""
        if not self.db_key:
            return None
        try:
            key = bytes.fromhex(self.db_key)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise StorageError("db_key must be 64 hex digits (a raw 32-byte key)")
        return key

    def store_quotas(self) -> StoreQuotas:
        return StoreQuotas(
            max_per_mailbox=self.max_per_mailbox,
            max_mailbox_bytes=self.max_mailbox_bytes,
            max_mailboxes=self.max_mailboxes,
            max_store_bytes=self.max_store_bytes,
        )


@dataclass(frozen=True)
class RunningRelay:
    identity: Identity
    address: Address
    created_identity: bool


class Relay:
    """A relay process's service. Its clock, randomness, socket and the thread its store is
    written from come from ``runtime``, which belongs to whoever built it."""

    def __init__(self, config: RelayConfig, runtime: Runtime) -> None:
        self.config = config
        self._runtime = runtime
        self._store: MailboxBackend | None = None
        self._accounts_store: AccountBackend | None = None
        self._pg: PgStore | None = None
        self._lock: IO[bytes] | None = None  # the embedded store's data directory, held
        self._accounts: AccountService | None = None
        self._directory_store: DirectoryBackend | None = None
        self._directory: DirectoryService | None = None
        self._endpoint: Endpoint | None = None
        self._service: RelayService | None = None
        self._purger: asyncio.Task[None] | None = None
        # Every refusal and event worth counting, by trigger name: the endpoint's and the
        # service's in one place (``metrics``).
        self.counters: Counter[str] = Counter()

    @property
    def service(self) -> RelayService:
        if self._service is None:
            raise RuntimeError("relay is not started")
        return self._service

    async def start(self) -> RunningRelay:
        """Open the stores and listen; if any step fails, whatever was opened (the
        PostgreSQL pool included) is closed again before the error goes up."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> RunningRelay:
        cfg = self.config
        run = self._runtime.run_blocking
        identity, created = await load_or_create_identity(
            cfg.data_dir / "relay.key", cfg.passphrase, self._runtime
        )
        quotas = cfg.store_quotas()
        limits = cfg.account_limits()
        setup = await load_or_create_setup(cfg.data_dir / SETUP_FILE, cfg.passphrase, self._runtime)
        store: MailboxBackend
        accounts_store: AccountBackend
        if cfg.store == "postgresql":
            self._pg = pg = await PgStore.open(
                cfg.dsn,
                self._runtime,
                quotas,
                cfg.max_accounts,
                pool_size=cfg.pg_pool_size,
                call_timeout=cfg.pg_timeout_s,
            )
            store, accounts_store = pg.mailboxes, pg.accounts
        else:
            # One process per embedded store, for as long as it runs (relay.data_lock).
            self._lock = data_lock.hold(cfg.data_dir)
            key = cfg.raw_db_key()
            mailboxes = await run(
                lambda: MailboxStore(cfg.data_dir / "mailboxes.sqlite3", quotas=quotas, key=key)
            )
            store = SqliteMailboxes(mailboxes, self._runtime)
            self._store = store
            sqlite_accounts = await run(
                lambda: AccountStore(cfg.data_dir / "accounts.sqlite3", cfg.max_accounts, key=key)
            )
            accounts_store = SqliteAccounts(sqlite_accounts, self._runtime)
        self._store = store
        self._accounts_store = accounts_store
        accounts = AccountService(accounts_store, setup, self._runtime, limits, self.counters)
        self._accounts = accounts
        directory_quotas = cfg.directory_quotas()
        directory_store: DirectoryBackend
        if self._pg is not None:
            pg_directory = PgDirectory(self._pg, directory_quotas)
            await pg_directory.refresh()
            directory_store = pg_directory
        else:
            key = cfg.raw_db_key()
            sqlite_directory = await run(
                lambda: DirectoryStore(
                    cfg.data_dir / "directory.sqlite3", directory_quotas, key=key
                )
            )
            directory_store = SqliteDirectory(sqlite_directory, self._runtime)
        self._directory_store = directory_store
        directory = DirectoryService(
            directory_store, self._runtime, cfg.directory_limits(), self.counters
        )
        self._directory = directory
        service = RelayService(
            store,
            self._runtime,
            cfg.max_frame,
            cfg.service_limits(),
            self.counters,
            accounts,
            directory,
        )
        self._service = service
        self._endpoint = Endpoint(
            identity, service.handle, self._runtime, cfg.endpoint_config(), counters=self.counters
        )
        address = await self._endpoint.start(cfg.host, cfg.port)
        self._purger = self._runtime.spawn(self._purge_loop(service))
        return RunningRelay(identity, address, created)

    async def _purge_loop(self, service: RelayService) -> None:
        while True:
            try:
                purged = await service.purge_expired()
            except StorageError as exc:
                log.warning("purging expired envelopes failed: %s", exc)
            else:
                if purged.expired or purged.notices or purged.untold:
                    log.info(
                        "purged %d expired envelopes; %d failure notices stored, %d left untold",
                        purged.expired,
                        purged.notices,
                        purged.untold,
                    )
            if self._accounts is not None:
                try:
                    await self._accounts.purge_expired()
                except StorageError as exc:
                    log.warning("purging expired sessions failed: %s", exc)
            if self._directory is not None:
                try:
                    await self._directory.purge_expired()
                except StorageError as exc:
                    log.warning("purging old KeyPackages failed: %s", exc)
            await asyncio.sleep(self.config.purge_interval_s)

    def metrics(self) -> dict[str, int]:
        """Counters (refusals by trigger, envelopes in, expired) and gauges (connections,
        streams and bytes held now, mailboxes and stored bytes)."""
        out = dict(self.counters)
        if self._endpoint is not None:
            out.update(self._endpoint.gauges())
        if self._store is not None:
            out["mailboxes"] = self._store.mailboxes
            out["store_bytes"] = self._store.total_bytes
            out["envelopes_expired"] = self._store.expired_purged
        if self._accounts_store is not None and self._accounts is not None:
            out["accounts"] = self._accounts_store.accounts
            out["sessions"] = self._accounts_store.sessions
            out["pending_logins"] = self._accounts.pending_logins
        if self._directory_store is not None:
            out["directory_identities"] = self._directory_store.identities
            out["directory_bytes"] = self._directory_store.total_bytes
        return out

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self._endpoint is not None:
            endpoint, self._endpoint = self._endpoint, None
            await endpoint.close()
        if self._pg is not None:
            pg, self._pg = self._pg, None
            self._store = self._accounts_store = self._accounts = None
            await pg.close()
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()
        if self._accounts_store is not None:
            accounts_store, self._accounts_store = self._accounts_store, None
            self._accounts = None
            await accounts_store.close()
        if self._directory_store is not None:
            directory_store, self._directory_store = self._directory_store, None
            self._directory = None
            await directory_store.close()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.close()
