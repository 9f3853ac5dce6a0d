"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl as the ``postgres`` user (both
refuse root), on 127.0.0.1 and a socket directory under the test's temporary directory."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
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
