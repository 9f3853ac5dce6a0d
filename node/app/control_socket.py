"""The local control socket: one-shot commands reach a node already running on their data
directory.

A Unix socket, ``control.sock`` in the data directory (itself 0700), made 0600, and every
connection's peer credentials are checked: a process of another user is refused even if the
file's mode were loosened. One request per connection, a JSON object on one line (at most
64 KiB); the answer is one JSON line, or, for ``recv --follow``, one line per message until
the client hangs up. This is a front end of the node, as the command line is: it binds its
own socket, on this machine only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from node.app.commands import execute, follow
from node.app.messenger import Messenger
from node.core.errors import NodeError

__all__ = ["SOCKET_NAME", "ControlServer", "ControlUnavailable", "request", "stream"]

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 16 * 1024 * 1024
_PEERCRED = struct.Struct("3i")
# sun_path holds 108 bytes on Linux; a longer path is reached through the directory's fd.
_SUN_PATH_MAX = 100


class ControlUnavailable(NodeError):
    """No node answers on this data directory's control socket."""


@contextlib.contextmanager
def _socket_path(path: Path) -> Iterator[str]:
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    def __init__(self, app: Messenger, data_dir: Path) -> None:
        self._app = app
        self.path = data_dir / SOCKET_NAME
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                raise NodeError(f"{self.path.parent} is already used by a running node")
            self.path.unlink()  # left behind by a node that was killed
        with _socket_path(self.path) as where:
            self._server = await asyncio.start_unix_server(
                self._serve, path=where, limit=MAX_REQUEST
            )
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if not _same_user(writer):
                await _answer(writer, {"ok": False, "error": "refused: another user's process"})
                return
            try:
                request = json.loads(await reader.readline())
            except (ValueError, asyncio.LimitOverrunError):
                await _answer(writer, {"ok": False, "error": "a malformed request"})
                return
            if not isinstance(request, dict):
                await _answer(writer, {"ok": False, "error": "a request is a JSON object"})
                return
            if request.get("command") == "recv" and request.get("follow") is True:
                async for item in follow(self._app):
                    await _answer(writer, item)
                return
            await _answer(writer, await execute(self._app, request))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return bool(uid == os.getuid())


async def _answer(writer: asyncio.StreamWriter, item: dict[str, Any]) -> None:
    writer.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    await writer.drain()


async def _answers(path: Path) -> bool:
    try:
        with _socket_path(path) as where:
            _reader, writer = await asyncio.open_unix_connection(where)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def _connect(
    data_dir: Path,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    path = data_dir / SOCKET_NAME
    try:
        with _socket_path(path) as where:
            reader, writer = await asyncio.open_unix_connection(where, limit=MAX_ANSWER)
    except OSError as exc:
        raise ControlUnavailable(f"no node runs on {data_dir}") from exc
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _object(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
    except ValueError:
        raise NodeError("the running node answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise NodeError("the running node answered something else than an object")
    return answer


async def request(data_dir: Path, item: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the node running on ``data_dir``; its answer."""
    async with _connect(data_dir) as (reader, writer):
        writer.write(json.dumps(item).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    if not line:
        raise NodeError("the running node closed the control connection without answering")
    return _object(line)


async def stream(data_dir: Path, item: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Send a following request; yield each line of the answer until the node hangs up."""
    async with _connect(data_dir) as (reader, writer):
        writer.write(json.dumps(item).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            yield _object(line)
