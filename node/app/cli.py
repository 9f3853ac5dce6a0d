"""The ``quicnprotochat`` (alias ``qpc``) command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click

from node.app.chat_cli import chat_command
from node.app.data_cli import backup_command, doctor_command, restore_command
from node.app.demo import run_demo
from node.app.identity_cli import verify_command, whoami_command
from node.app.node_cli import node_group, peers_command
from node.core.display import terminal_safe
from node.core.errors import NodeError
from relay.cli import relay_group
from simulations.cli import sim_group


class SafeFormatter(logging.Formatter):
    """Log lines may quote what a peer sent (an error message, a name): shown, never obeyed."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record), multiline=True, continuation="    ")


@click.group()
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
    say = (lambda _line: None) if as_json else (lambda line: click.echo(line))
    try:
        result = asyncio.run(run_demo(list(messages), say))
    except NodeError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(
            f"summary: {result.members} members, {result.sent} messages sent, "
            f"{result.delivered_direct} delivered directly, {result.delivered_via_relay} via "
            f"the relay, {result.lost} lost; group epoch {result.epoch}"
        )
    sys.exit(0 if result.lost == 0 else 1)


main.add_command(relay_group)
main.add_command(node_group)
main.add_command(chat_command)
main.add_command(peers_command)
main.add_command(doctor_command)
main.add_command(backup_command)
main.add_command(restore_command)
main.add_command(sim_group)
main.add_command(whoami_command)
main.add_command(verify_command)
