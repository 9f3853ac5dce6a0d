"""One-shot commands for scripts: ``send``, ``recv``, ``conversations``, ``history``,
``create-group``, ``invite``, ``remove``, ``leave``, ``contacts``.

When a node runs on the data directory (``chat`` or ``node run``) they ask it through its
control socket; otherwise they open the data directory, run the node for the length of the
command and stop it. Exit status: 0 done, 1 failed (one ``ERROR:`` line on stderr), 2 usage.
With ``--json`` they print one JSON object (``recv --follow``: one per line), documented in
``docs/scripting.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import click

from node.app.commands import execute, follow
from node.app.control_socket import ControlUnavailable, request, stream
from node.app.messenger import Messenger
from node.app.passphrase import get_passphrase, passphrase_file_option
from node.app.profile import open_node
from node.app.router import RelayInfo
from node.core.display import terminal_safe
from node.core.errors import NodeError
from node.transport.runtime import RealRuntime

__all__ = ["RELAY_SETTING", "relay_setting"]

# Where a running node records its relay, for one-shot commands run without it.
RELAY_SETTING = "relay"

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The node's data directory (no passphrase is needed while a node runs on it).",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def relay_setting(relay: RelayInfo) -> bytes:
    host, port = relay.address
    return json.dumps({"host": host, "port": port, "identity": relay.identity.hex()}).encode()


def _relay_from(raw: bytes) -> RelayInfo:
    saved = json.loads(raw)
    return RelayInfo((str(saved["host"]), int(saved["port"])), bytes.fromhex(saved["identity"]))


@contextlib.asynccontextmanager
async def _own_node(data_dir: Path, passphrase_file: Path | None) -> AsyncIterator[Messenger]:
    """The node of ``data_dir``, run for as long as the command needs it."""
    passphrase = get_passphrase(passphrase_file, creating=False, what=str(data_dir))
    runtime = RealRuntime("qpc-oneshot")
    try:
        node, _created = await open_node(data_dir, passphrase, runtime, name="", relay=None)
        store = node.store
        relay = await runtime.run_blocking(lambda: store.get_secret(RELAY_SETTING))
        if relay is not None:
            node.router.relay = _relay_from(relay)
        app = Messenger(node)
        try:
            await app.open()
            await node.start("127.0.0.1", 0)
            if node.router.relay is not None:
                with contextlib.suppress(TimeoutError):
                    # What waits at the relay is part of what recv should show.
                    async with asyncio.timeout(10):
                        await node.relay_synced.wait()
                await app.settled()
            yield app
        finally:
            await app.close()
            await node.stop()
    finally:
        runtime.close()


def _run(data_dir: Path, passphrase_file: Path | None, item: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return await request(data_dir, item)
        except ControlUnavailable:
            async with _own_node(data_dir, passphrase_file) as app:
                return await execute(app, item)

    answer = asyncio.run(go())
    if not answer.get("ok"):
        raise NodeError(str(answer.get("error", "the command failed")))
    return answer


def _print(answer: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False))
    else:
        text(answer)


def _message_line(m: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(m["time_ms"] / 1000).strftime("%Y-%m-%d %H:%M")
    prefix = f"{when} [{terminal_safe(m['conversation_name'])}] {terminal_safe(m['sender_name'])}: "
    return prefix + terminal_safe(m["text"], multiline=True, continuation=" " * len(prefix))


def _print_messages(answer: dict[str, Any]) -> None:
    for m in answer["messages"]:
        click.echo(_message_line(m))


@click.command("send")
@DATA_DIR
@passphrase_file_option
@click.argument("conversation")
@click.argument("text")
@JSON
def send_command(
    data_dir: Path, passphrase_file: Path | None, conversation: str, text: str, as_json: bool
) -> None:
    """Send TEXT to CONVERSATION (its name or id)."""
    item = {"command": "send", "conversation": conversation, "text": text}
    answer = _run(data_dir, passphrase_file, item)

    def show(a: dict[str, Any]) -> None:
        for d in a["message"]["deliveries"]:
            why = f" ({terminal_safe(d['reason'])})" if d["reason"] else ""
            click.echo(f"{terminal_safe(d['recipient_name'])}: {d['state']}{why}")

    _print(answer, as_json, show)


@click.command("recv")
@DATA_DIR
@passphrase_file_option
@click.option("--follow", "keep_following", is_flag=True, help="Keep printing new messages.")
@JSON
def recv_command(
    data_dir: Path, passphrase_file: Path | None, keep_following: bool, as_json: bool
) -> None:
    """Print unread messages (then they are read); --follow keeps printing new ones."""
    if not keep_following:
        _print(_run(data_dir, passphrase_file, {"command": "recv"}), as_json, _print_messages)
        return

    def show(item: dict[str, Any]) -> None:
        if not item.get("ok"):
            raise NodeError(str(item.get("error")))
        if as_json:
            click.echo(json.dumps(item, ensure_ascii=False))
        else:
            click.echo(_message_line(item["message"]))

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            following = asyncio.ensure_future(_follow_running(data_dir, show))
            await asyncio.wait(
                {following, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
            if following.done():
                following.result()
                return
            following.cancel()
            return
        except ControlUnavailable:
            pass
        async with _own_node(data_dir, passphrase_file) as app:
            task = app.node.runtime.spawn(_show_all(app, show))
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


async def _follow_running(data_dir: Path, show: Callable[[dict[str, Any]], None]) -> None:
    async for item in stream(data_dir, {"command": "recv", "follow": True}):
        show(item)


async def _show_all(app: Messenger, show: Callable[[dict[str, Any]], None]) -> None:
    async for item in follow(app):
        show(item)


@click.command("conversations")
@DATA_DIR
@passphrase_file_option
@JSON
def conversations_command(data_dir: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """List conversations with their unread counts."""
    answer = _run(data_dir, passphrase_file, {"command": "conversations"})

    def show(a: dict[str, Any]) -> None:
        for c in a["conversations"]:
            unread = f"  ({c['unread']} unread)" if c["unread"] else ""
            click.echo(f"{c['id']}  {c['kind']:<7} {terminal_safe(c['name'])}{unread}")

    _print(answer, as_json, show)


@click.command("history")
@DATA_DIR
@passphrase_file_option
@click.argument("conversation")
@click.option("-n", "count", type=click.IntRange(1, 500), default=20, show_default=True)
@JSON
def history_command(
    data_dir: Path, passphrase_file: Path | None, conversation: str, count: int, as_json: bool
) -> None:
    """Show the last messages of CONVERSATION, your own included."""
    item = {"command": "history", "conversation": conversation, "count": count}
    _print(_run(data_dir, passphrase_file, item), as_json, _print_messages)


@click.command("create-group")
@DATA_DIR
@passphrase_file_option
@click.argument("name")
@JSON
def create_group_command(
    data_dir: Path, passphrase_file: Path | None, name: str, as_json: bool
) -> None:
    """Create a group called NAME (add people with 'invite')."""
    answer = _run(data_dir, passphrase_file, {"command": "create-group", "name": name})
    conv = answer["conversation"]
    _print(answer, as_json, lambda _a: click.echo(f"{conv['id']}  {terminal_safe(conv['name'])}"))


@click.command("invite")
@DATA_DIR
@passphrase_file_option
@click.argument("conversation")
@click.argument("peer")
@JSON
def invite_command(
    data_dir: Path, passphrase_file: Path | None, conversation: str, peer: str, as_json: bool
) -> None:
    """Add PEER (a qpc:// link, a key or a contact's name) to CONVERSATION."""
    item = {"command": "invite", "conversation": conversation, "peer": peer}
    answer = _run(data_dir, passphrase_file, item)

    def show(a: dict[str, Any]) -> None:
        click.echo(f"invited {a['invited']}")
        for key, why in a["not_reached"].items():
            click.echo(f"{key} not reached yet: {terminal_safe(why)}")

    _print(answer, as_json, show)


@click.command("remove")
@DATA_DIR
@passphrase_file_option
@click.argument("conversation")
@click.argument("peer")
@JSON
def remove_command(
    data_dir: Path, passphrase_file: Path | None, conversation: str, peer: str, as_json: bool
) -> None:
    """Remove the member PEER from CONVERSATION."""
    item = {"command": "remove", "conversation": conversation, "peer": peer}
    answer = _run(data_dir, passphrase_file, item)
    _print(answer, as_json, lambda a: click.echo(f"removed {a['removed']}"))


@click.command("leave")
@DATA_DIR
@passphrase_file_option
@click.argument("conversation")
@JSON
def leave_command(
    data_dir: Path, passphrase_file: Path | None, conversation: str, as_json: bool
) -> None:
    """Leave CONVERSATION."""
    answer = _run(data_dir, passphrase_file, {"command": "leave", "conversation": conversation})
    _print(answer, as_json, lambda a: click.echo(f"left {a['left']}"))


@click.command("contacts")
@DATA_DIR
@passphrase_file_option
@JSON
def contacts_command(data_dir: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """List contacts: the name shown, the fingerprint, whether verified."""
    answer = _run(data_dir, passphrase_file, {"command": "contacts"})

    def show(a: dict[str, Any]) -> None:
        for c in a["contacts"]:
            mark = "  [verified]" if c["verified"] else ""
            click.echo(f"{terminal_safe(c['name'])}  {c['fingerprint']}{mark}")

    _print(answer, as_json, show)
