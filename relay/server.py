"""Running a relay: its sealed identity key, its mailbox store, and a QUIC endpoint serving both."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from node.core.addresses import Address
from node.core.identity import Identity
from node.core.runtime import Runtime
from node.transport.endpoint import Endpoint, EndpointConfig
from node.transport.keystore import load_or_create_identity
from relay.service import RelayService
from relay.store import MailboxStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayConfig:
    host: str
    port: int
    data_dir: Path
    passphrase: bytes
    max_per_mailbox: int = 10_000
    max_frame: int = 1 << 20


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
        self._store: MailboxStore | None = None
        self._endpoint: Endpoint | None = None

    async def start(self) -> RunningRelay:
        cfg = self.config
        run = self._runtime.run_blocking
        identity, created = await load_or_create_identity(
            cfg.data_dir / "relay.key", cfg.passphrase, self._runtime
        )
        store = await run(
            lambda: MailboxStore(cfg.data_dir / "mailboxes.sqlite3", cfg.max_per_mailbox)
        )
        self._store = store
        service = RelayService(store, self._runtime, cfg.max_frame)
        # The call deadline sits above the longest long poll (relay.service.MAX_WAIT_MS).
        config = EndpointConfig(max_frame=cfg.max_frame, call_deadline=40.0)
        self._endpoint = Endpoint(identity, service.handle, self._runtime, config)
        address = await self._endpoint.start(cfg.host, cfg.port)
        return RunningRelay(identity, address, created)

    async def stop(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
        if self._store is not None:
            store, self._store = self._store, None
            await self._runtime.run_blocking(store.close)
