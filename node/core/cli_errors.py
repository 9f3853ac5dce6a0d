"""How every command reports a failure: one line ``ERROR: ...``, exit status 1.

A person who mistyped an option should read what is wrong and where (the option, the file, the
address), not a traceback. :class:`ReportingGroup` is the one place that turns what a command
raises into that line; usage errors keep click's own form and status 2.

It lives in the core because both the ``quicnprotochat`` group and ``python -m relay`` use
it, and the relay may not import the node's application layer. It does no I/O of its own
beyond writing the line to stderr.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, NoReturn

import click

from node.core.display import terminal_safe
from node.core.errors import NodeError

__all__ = ["ReportingGroup", "add_version_option", "bind_error", "describe", "fail"]

DISTRIBUTION = "quicnprotochat"
HELP_OPTIONS = ["-h", "--help"]
MAX_UNEXPECTED = 200  # characters of an unexpected exception's text shown to the person


def describe(exc: BaseException) -> str:
    """The text of the one line for ``exc``, naming what it is about where it can."""
    if isinstance(exc, NodeError):
        return str(exc) or type(exc).__doc__ or type(exc).__name__
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and exc.filename2 is not None:
            return f"{exc.filename} -> {exc.filename2}: {what}"
        if exc.filename is not None:
            return f"{exc.filename}: {what}"
        return what
    text = str(exc)
    if len(text) > MAX_UNEXPECTED:
        text = text[:MAX_UNEXPECTED] + "..."
    return f"unexpected {type(exc).__name__}: {text} (run with -vv for the details)"


def bind_error(option: str, address: tuple[str, int] | str, exc: OSError) -> NodeError:
    """Why a socket could not be bound to ``address`` (HOST:PORT, or a bare host), given by
    ``option``, in one line."""
    from node.core.addresses import format_address

    where = f"{option} {address if isinstance(address, str) else format_address(address)}"
    if exc.errno == errno.EADDRINUSE:
        return NodeError(f"{where}: that port is in use (by another program, or another node)")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
        return NodeError(f"{where}: that is not an address of this machine")
    if exc.errno == errno.EACCES:
        return NodeError(f"{where}: permission denied (a port below 1024 needs privileges)")
    return NodeError(f"{where}: {exc.strerror or exc}")


def fail(message: str) -> NoReturn:
    """Print the one line and leave with status 1. The message may quote what a peer or a
    file chose: shown, never obeyed."""
    click.echo(f"ERROR: {terminal_safe(message)}", err=True)
    raise click.exceptions.Exit(1)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    # Imported here: metadata lookups cost start-up time that --help should not pay.
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    click.echo(f"{DISTRIBUTION} {version}")
    ctx.exit(0)


def add_version_option(command: click.Command) -> click.Command:
    """Give ``command`` (and, for a group, every command in it) a ``--version`` option."""
    if not any("--version" in p.opts for p in command.params):
        command.params.append(
            click.Option(
                ["--version"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_show_version,
                help="Show the version and exit.",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_version_option(sub)
    return command


class ReportingGroup(click.Group):
    """A click group whose commands fail with one ``ERROR:`` line, and that all take ``-h``
    (for ``--help``) and ``--version``.

    What is caught: click's own non-usage errors, every :class:`NodeError`, ``OSError`` (named
    by its file where it has one) and, as a last resort, anything else (its traceback is logged
    at debug level, shown with ``-vv``). Usage errors, ``--help`` and exits pass through.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = dict(kwargs.pop("context_settings", None) or {})
        settings.setdefault("help_option_names", HELP_OPTIONS)
        super().__init__(*args, context_settings=settings, **kwargs)
        add_version_option(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(add_version_option(cmd), name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.UsageError, BrokenPipeError, EOFError):
            raise
        except click.ClickException as exc:
            fail(exc.format_message())
        except (NodeError, OSError) as exc:
            fail(describe(exc))
        except Exception as exc:
            logging.getLogger(__name__).debug("unexpected failure", exc_info=True)
            fail(describe(exc))
