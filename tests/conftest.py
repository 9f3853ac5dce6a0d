from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.core.addresses import Address
from node.core.identity import Identity
from node.transport.connection import RequestHandler
from node.transport.endpoint import Endpoint, EndpointConfig
from node.transport.runtime import RealRuntime
from tests.pg_support import APT_HINT, PostgresServer, PostgresUnavailable, start_server
from tests.runtime_support import Runtimes

LOOPBACK = "127.0.0.1"


@contextlib.asynccontextmanager
async def running_endpoint(
    identity: Identity,
    handler: RequestHandler | None,
    config: EndpointConfig | None = None,
    port: int = 0,
) -> AsyncIterator[Endpoint]:
    runtime = RealRuntime("qpc-endpoint")
    endpoint = Endpoint(identity, handler, runtime, config)
    await endpoint.start(LOOPBACK, port)
    try:
        yield endpoint
    finally:
        await endpoint.close()
        runtime.close()


@pytest.fixture
def runtimes() -> Iterator[Runtimes]:
    """Real runtimes made on demand (one per node or service), closed after the test."""
    made = Runtimes()
    try:
        yield made
    finally:
        made.close()


@dataclass
class RelayProcess:
    """A real relay child process (``python -m relay run``) on a loopback port."""

    data_dir: Path
    passphrase: str
    proc: subprocess.Popen[str] | None = None
    address: Address | None = None
    identity: bytes | None = None
    extra_args: tuple[str, ...] = ()
    output: list[str] = field(default_factory=list)  # its stdout and stderr lines after start
    _drains: list[threading.Thread] = field(default_factory=list)

    def start(self, port: int = 0) -> None:
        env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=self.passphrase)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay",
                "run",
                "--listen",
                f"{LOOPBACK}:{port}",
                "--data-dir",
                str(self.data_dir),
                "--json",
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the relay prints one line when it is listening
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"relay did not start: {err}")
        ready = json.loads(line)
        host, _, port_text = ready["address"].rpartition(":")
        self.address = (host, int(port_text))
        self.identity = bytes.fromhex(ready["identity"])
        # Read on: a relay that logs more than a pipe holds (64 KiB) would block on its next
        # line, in the middle of whatever the test waits for.
        self.output = []
        self._drains = [
            threading.Thread(target=self.output.extend, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for drain in self._drains:
            drain.start()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for drain in self._drains:
                drain.join(timeout=10)  # the pipes end with the process
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def stop_and_read_output(self) -> str:
        """Stop the relay (SIGTERM) and return everything it printed after its ready line."""
        self.stop()
        return "".join(self.output)


@contextlib.contextmanager
def configured_relay(
    tmp_path: Path, settings: str = "", passphrase: str = "test relay passphrase"
) -> Iterator[RelayProcess]:
    """A relay process in ``tmp_path/relay`` with ``settings`` as its TOML config file."""
    config = tmp_path / "relay.toml"
    config.write_text(settings)
    relay = RelayProcess(tmp_path / "relay", passphrase, extra_args=("--config", str(config)))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "relay", passphrase="test relay passphrase")
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole run; the tests that need it skip, saying
    why, only when it cannot be started here."""
    root = Path(tempfile.mkdtemp(prefix="qpc-pg-"))
    try:
        server = start_server(root)
    except PostgresUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        print(f"\nPostgreSQL tests skipped: {exc} (install it with: {APT_HINT})")
        pytest.skip(f"PostgreSQL cannot be started: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


_databases = iter(range(1, 1 << 30))


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database(f"qpc_test_{os.getpid()}_{next(_databases)}")
