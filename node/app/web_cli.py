"""``quicnprotochat web``: the node with its local web UI, and ``node run``'s options.

The page is served on 127.0.0.1 from the node's own event loop; the line ``open
http://127.0.0.1:PORT/?token=…`` is the way in (the token is new at every start).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from typing import Any

import click

from node.app.node_cli import node_options, run_options
from node.app.running import RunOptions, find_invitees, running, start_conversation
from node.app.web import WebUI, WhoAmI
from node.core.cli_errors import bind_error
from node.transport.runtime import RealRuntime

__all__ = ["web_command"]


@click.command("web")
@node_options
@click.option(
    "--port",
    "web_port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="TCP port of the web UI on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--web-listen",
    "web_host",
    default=None,
    metavar="HOST",
    help="Serve the web UI on HOST instead of 127.0.0.1: anyone who can reach it and "
    "holds the token can read and send your messages.",
)
def web_command(web_port: int, web_host: str | None, **options: Any) -> None:
    """Chat in a web browser: a page served by the node on this machine only."""
    if web_host is not None:
        _check_host(web_host)
    asyncio.run(_web(run_options(**options), web_port, web_host))


def _check_host(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise click.BadParameter(
            f"{host!r} is not an IP address", param_hint="--web-listen"
        ) from None
    if not address.is_loopback:
        click.echo(
            f"WARNING: the web UI listens on {host}, beyond this machine: anyone who can "
            "reach it and holds the token can read and send your messages, over plain HTTP.",
            err=True,
        )


async def _web(opts: RunOptions, port: int, web_host: str | None) -> None:
    runtime = RealRuntime(f"qpc-{opts.name}")
    try:
        async with running(opts, runtime) as run:
            node = run.node

            def whoami() -> WhoAmI:
                return WhoAmI(opts.name, node.public_key, run.own_link(opts.name))

            store = node.store
            ui = WebUI(
                run.messenger,
                whoami=whoami,
                peers=lambda: node.run(store.peers),
                host=web_host or "127.0.0.1",
                port=port,
                extra_host=web_host,
            )
            try:
                url = await ui.start()
            except OSError as exc:
                raise bind_error("--port", (web_host or "127.0.0.1", port), exc) from None
            try:
                click.echo(f"open {url}", color=False)
                if opts.invites:
                    await find_invitees(
                        run.presence, [s for s in opts.invites if s.address is None]
                    )
                    await start_conversation(run.messenger, opts.invites)
                await _wait_for_stop(node.wait_fatal())
            finally:
                await ui.stop()
    finally:
        runtime.close()


async def _wait_for_stop(fatal_waiter: Any) -> None:
    """Until SIGINT or SIGTERM, or until the node must stop (a relay with another key)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fatal = asyncio.ensure_future(fatal_waiter)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (fatal, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if fatal.done() and not fatal.cancelled():
        raise fatal.result()
