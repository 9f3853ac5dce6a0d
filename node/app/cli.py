"""The ``quicnprotochat`` (alias ``qpc``) command line.

Each subcommand's module is imported only when that subcommand runs (click's "lazily loading
subcommands" pattern): ``quicnprotochat --help`` must not pay for importing the whole
application (asyncio, aioquic, MLS, SQLCipher, the simulator). The one-line summaries that
``--help`` lists are therefore kept here, beside the import path; a unit test checks that each
equals the command's own docstring summary.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import click

from node.core.cli_errors import ReportingGroup
from node.core.display import terminal_safe


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand not imported yet: ``target`` is ``module:attribute``."""

    target: str
    summary: str


LAZY_COMMANDS: dict[str, LazyCommand] = {
    "chat": LazyCommand(
        "node.app.chat_cli:chat_command",
        "Chat: conversations, groups and slash commands (/help lists them).",
    ),
    "send": LazyCommand(
        "node.app.oneshot_cli:send_command",
        "Send TEXT to CONVERSATION (its name or id).",
    ),
    "recv": LazyCommand(
        "node.app.oneshot_cli:recv_command",
        "Print unread messages (then they are read); --follow keeps printing new ones.",
    ),
    "conversations": LazyCommand(
        "node.app.oneshot_cli:conversations_command",
        "List conversations with their unread counts.",
    ),
    "history": LazyCommand(
        "node.app.oneshot_cli:history_command",
        "Show the last messages of CONVERSATION, your own included.",
    ),
    "create-group": LazyCommand(
        "node.app.oneshot_cli:create_group_command",
        "Create a group called NAME (add people with 'invite').",
    ),
    "invite": LazyCommand(
        "node.app.oneshot_cli:invite_command",
        "Add PEER (a qpc:// link, a key or a contact's name) to CONVERSATION.",
    ),
    "remove": LazyCommand(
        "node.app.oneshot_cli:remove_command",
        "Remove the member PEER from CONVERSATION.",
    ),
    "leave": LazyCommand(
        "node.app.oneshot_cli:leave_command",
        "Leave CONVERSATION.",
    ),
    "contacts": LazyCommand(
        "node.app.oneshot_cli:contacts_command",
        "List contacts: the name shown, the fingerprint, whether verified.",
    ),
    "backup": LazyCommand(
        "node.app.data_cli:backup_command",
        "Write an encrypted, consistent backup of a data directory (the node may be running).",
    ),
    "doctor": LazyCommand(
        "node.app.data_cli:doctor_command",
        "Check a data directory without changing it; exit 1 if anything is wrong.",
    ),
    "node": LazyCommand("node.app.node_cli:node_group", "Run a peer node."),
    "peers": LazyCommand(
        "node.app.node_cli:peers_command",
        "List the nodes that node has seen by discovery (LAN or DHT).",
    ),
    "relay": LazyCommand("relay.cli:relay_group", "Run a store-and-forward relay."),
    "restore": LazyCommand(
        "node.app.data_cli:restore_command",
        "Restore a backup into an empty (or new) data directory.",
    ),
    "sim": LazyCommand(
        "simulations.cli:sim_group",
        "Network simulation runs: the real node, relay and DHT code on a virtual clock.",
    ),
    "verify": LazyCommand(
        "node.app.identity_cli:verify_command",
        "Show the safety number of you and PEER (a qpc:// link, KEYHEX or NAME=KEYHEX).",
    ),
    "web": LazyCommand(
        "node.app.web_cli:web_command",
        "Chat in a web browser: a page served by the node on this machine only.",
    ),
    "whoami": LazyCommand(
        "node.app.identity_cli:whoami_command",
        "Show your name, fingerprint and invite link (with its QR code).",
    ),
}


class LazyGroup(ReportingGroup):
    """A group whose subcommands in ``lazy`` are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module_name, _, attribute = self.lazy[cmd_name].target.partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name].target} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a command not imported yet is listed by its summary."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                if not loaded.hidden:
                    rows.append((name, loaded.get_short_help_str(limit)))
            else:
                # Shortened exactly as click shortens a loaded command's help.
                summary = click.Command(name, help=self.lazy[name].summary)
                rows.append((name, summary.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class SafeFormatter(logging.Formatter):
    """Log lines may quote what a peer sent (an error message, a name): shown, never obeyed."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record), multiline=True, continuation="    ")


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.option("-v", "--verbose", count=True, help="Log more (repeat for debug).")
def main(verbose: int) -> None:
    """quicnprotochat: end-to-end-encrypted group chat, peer to peer over QUIC."""
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:
        # aioquic reports every refused handshake as a warning; ours say it better.
        logging.getLogger("quic").setLevel(logging.ERROR)


@main.command()
@click.option(
    "--message",
    "messages",
    multiple=True,
    metavar="TEXT",
    help="A message to send (repeatable); replaces the scripted conversation.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary.")
def demo(messages: tuple[str, ...], as_json: bool) -> None:
    """A relay and three nodes on loopback: one group, direct and relayed delivery.

    Exits 0 only if every message reached every other member.
    """
    import asyncio
    import json

    from node.app.demo import run_demo

    say = (lambda _line: None) if as_json else (lambda line: click.echo(line))
    result = asyncio.run(run_demo(list(messages), say))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(
            f"summary: {result.members} members, {result.sent} messages sent, "
            f"{result.delivered_direct} delivered directly, {result.delivered_via_relay} via "
            f"the relay, {result.lost} lost; group epoch {result.epoch}"
        )
    sys.exit(0 if result.lost == 0 else 1)
