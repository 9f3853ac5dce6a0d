"""``quicnprotochat chat``: the interactive client, with ``node run``'s options.

On a terminal it is a prompt_toolkit prompt: incoming lines print above it without mangling
what is being typed, Tab completes commands, conversations and contacts, and typed lines are
remembered in memory only. With stdin not a terminal (a script, a pipe) it reads plain lines
and prints plain lines, the same commands and the same safety applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections.abc import Iterable
from typing import Any

import click

from node.app.chat_session import ChatSession, Screen
from node.app.identity_view import whoami_lines
from node.app.node_cli import node_options, run_options
from node.app.qr import qr_text
from node.app.running import (
    RunningNode,
    RunOptions,
    find_invitees,
    running,
    start_conversation,
)
from node.core.addresses import format_address
from node.core.display import terminal_safe
from node.transport.runtime import RealRuntime

__all__ = ["chat_command"]

STYLES = {
    "status": "ansicyan",
    "warn": "ansiyellow bold",
    "error": "ansired bold",
    "me": "ansigreen",
}


@click.command("chat")
@node_options
def chat_command(**options: Any) -> None:
    """Chat: conversations, groups and slash commands (/help lists them)."""
    asyncio.run(_chat(run_options(**options)))


async def _chat(opts: RunOptions) -> None:
    runtime = RealRuntime(f"qpc-{opts.name}")
    try:
        async with running(opts, runtime) as run:
            if opts.invites:
                await find_invitees(run.presence, [s for s in opts.invites if s.address is None])
                await start_conversation(run.messenger, opts.invites)
            front = _interactive if sys.stdin.isatty() and sys.stdout.isatty() else _plain
            session = runtime.spawn(front(run, opts))
            fatal = runtime.spawn(run.node.wait_fatal())
            try:
                # A relay with another key ends the chat at once: a security event.
                await asyncio.wait({session, fatal}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (session, fatal):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if fatal.done() and not fatal.cancelled():
                raise fatal.result()
            if session.done() and not session.cancelled():
                session.result()  # raises what ended the session, if anything did
    finally:
        runtime.close()


def _whoami(run: RunningNode, opts: RunOptions) -> list[str]:
    text = run.own_link(opts.name)
    lines = whoami_lines(opts.name, run.node.public_key, text, qr=False)  # the link comes last
    drawing = qr_text(text).splitlines()
    width = len(drawing[0]) if drawing else 0
    # A link with an envelope key needs a QR code ~173 columns wide: wrapped, it scans as
    # nothing and buries the screen, so it is drawn only where it fits.
    if width <= shutil.get_terminal_size().columns:
        lines[-1:-1] = drawing
    else:
        lines.insert(
            -1,
            f"(its QR code needs a terminal {width} columns wide: widen this one and /whoami "
            "again, or run quicnprotochat whoami)",
        )
    if run.presence.dht_address is not None:
        lines.append(f"dht: {format_address(run.presence.dht_address)}")
    return lines


def _session(run: RunningNode, opts: RunOptions, screen: Screen) -> ChatSession:
    store = run.node.store
    return ChatSession(
        run.messenger,
        screen,
        whoami=lambda: _whoami(run, opts),
        peers=lambda: run.node.run(store.peers),
    )


async def _follow(session: ChatSession) -> None:
    sub = session.app.subscribe()
    try:
        async for event in sub:
            session.show_event(event)
    finally:
        sub.close()


# --- plain lines (not a terminal) -------------------------------------------------------------


class _PlainScreen:
    def show(self, text: str, style: str = "") -> None:
        click.echo(text, err=style == "error")


async def _plain(run: RunningNode, opts: RunOptions) -> None:
    session = _session(run, opts, _PlainScreen())
    click.echo("type /help for commands")
    follower = run.node.runtime.spawn(_follow(session))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when="FIRST_COMPLETED")
            stop_task.cancel()
            if line_task not in done:
                line_task.cancel()
                break
            raw = line_task.result()
            if not raw:
                break  # end of input: leave as /quit does
            if not await session.handle(raw.decode("utf-8", errors="replace")):
                break
            await session.app.settled()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


# --- a terminal ---------------------------------------------------------------------------------


class _PromptScreen:
    def __init__(self) -> None:
        from prompt_toolkit.styles import Style

        self._style = Style.from_dict({name: value for name, value in STYLES.items()})

    def show(self, text: str, style: str = "") -> None:
        from prompt_toolkit import print_formatted_text
        from prompt_toolkit.formatted_text import FormattedText

        css = f"class:{style}" if style else ""
        print_formatted_text(FormattedText([(css, text)]), style=self._style)


class _Completer:
    """Completes the word under the cursor from the session's commands and names."""

    def __init__(self, session: ChatSession) -> None:
        self._session = session

    def make(self) -> Any:
        from prompt_toolkit.completion import Completer, Completion

        session = self._session

        class Words(Completer):
            def get_completions(self, document: Any, complete_event: Any) -> Iterable[Completion]:
                before = document.text_before_cursor
                first_word = " " not in before
                word = before if first_word else before.split(" ", 1)[1].lstrip()
                for candidate in session.completions():
                    if first_word != candidate.startswith("/"):
                        continue
                    if candidate.casefold().startswith(word.casefold()):
                        yield Completion(terminal_safe(candidate), start_position=-len(word))

        return Words()


async def _interactive(run: RunningNode, opts: RunOptions) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    screen = _PromptScreen()
    session = _session(run, opts, screen)
    # Typed lines stay in memory: nothing typed is ever written to disk in the clear.
    # Completion on Tab only: a menu popping up while a message is typed gets in the way.
    prompt: PromptSession[str] = PromptSession(
        history=InMemoryHistory(),
        completer=_Completer(session).make(),
        complete_while_typing=False,
    )
    with patch_stdout(raw=True):
        screen.show("type /help for commands, Tab to complete, Ctrl-D to leave", "status")
        follower = run.node.runtime.spawn(_follow(session))
        try:
            while True:
                try:
                    line = await prompt.prompt_async(session.prompt)
                except KeyboardInterrupt:
                    continue  # Ctrl-C clears the line, as in a shell
                except EOFError:
                    break
                if not await session.handle(line):
                    break
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
