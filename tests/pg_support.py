"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl as the ``postgres`` user (both
refuse root), on 127.0.0.1 and a socket directory under the test's temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

APT_HINT = "apt-get install -y postgresql"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresUnavailable(f"PostgreSQL is not installed (run: {APT_HINT})")
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    root: Path
    bin_dir: Path
    port: int
    user: str | None  # run the server as this user (None: as ourselves)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["su", self.user, "-s", "/bin/sh", "-c", " ".join(map(_quote, command))]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def init(self) -> None:
        # The server's user must reach its directories: none may sit under a root-only one.
        self.root.chmod(0o755)
        for place in (self.root, self.sockets):
            place.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                entry = pwd.getpwnam(self.user)
                os.chown(place, entry.pw_uid, entry.pw_gid)
        done = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-300:]}")

    def start(self) -> None:
        options = f"-k {self.sockets} -h 127.0.0.1 -p {self.port} -c max_connections=200"
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def tool(self, *argv: str) -> str:
        """Run one of the server's programs (``pg_dump``, ``pg_restore``…) as the server's user
        and return its output; a failure raises with its message. Files it writes belong under
        :attr:`root`, which that user owns."""
        done = self._run(*argv)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-300:]}")
        return done.stdout

    def create_database(self, name: str) -> str:
        done = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            f"CREATE DATABASE {name}",
        )
        if done.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {done.stderr.strip()}")
        return self.dsn(name)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def start_server(root: Path) -> PostgresServer:
    """Start a fresh server under ``root``, or raise :class:`PostgresUnavailable`."""
    bin_dir = _bin_dir()
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                f"no postgres user to run initdb as (run: {APT_HINT})"
            ) from None
        user = "postgres"
    server = PostgresServer(root, bin_dir, _free_port(), user)
    server.init()
    server.start()
    return server


class SeveringProxy:
    """A TCP proxy to a PostgreSQL server on 127.0.0.1 whose :meth:`sever` kills every
    connection open at that moment the way a database machine that restarted does: nothing
    more arrives on it and no FIN is sent, so a client that only listens (LISTEN) never
    notices, and the first bytes a client sends are answered by a reset. Connections made after
    :meth:`sever` pass. Runs its own event loop in a thread, so blocking test code (starting a
    relay process) does not stall it."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._generation = 0
        self._upstreams: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sever(self) -> None:
        asyncio.run_coroutine_threadsafe(self._sever(), self._loop).result(timeout=10)

    async def _sever(self) -> None:
        self._generation += 1
        for upstream in self._upstreams:
            upstream.close()
        self._upstreams.clear()

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            await self._sever()
            for handler in self._handlers:
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        generation = self._generation
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._pass(generation, client_r, client_w)
        finally:
            self._handlers.discard(handler)
            client_w.transport.abort()

    async def _pass(
        self, generation: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            return
        self._upstreams.append(up_w)

        async def to_server() -> None:
            while data := await client_r.read(1 << 16):
                if self._generation != generation:
                    # What a restarted machine answers to a segment of a connection it forgot.
                    sock = client_w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client_w.transport.abort()
                    return
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def to_client() -> None:
            while data := await up_r.read(1 << 16):
                client_w.write(data)
                await client_w.drain()
            if self._generation == generation:
                client_w.close()  # the server ended it: pass that on; a severed one goes silent

        try:
            with contextlib.suppress(OSError):
                await asyncio.gather(to_server(), to_client())
        finally:
            up_w.transport.abort()
