"""``quicnprotochat --help`` answers without importing the application (issue 9: <= 100 ms;
measured by benchmarks/cli_startup_bench.py), and what it lists is what each command says."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from node.app.cli import LAZY_COMMANDS, main

HEAVY = ["asyncio", "aioquic", "capnp", "sqlcipher3", "openmls_bindings", "node.app.node"]


def test_top_level_help_imports_none_of_the_application() -> None:
    probe = (
        "import json, sys\n"
        "from node.app.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "Commands:" in out
    assert json.loads(out.splitlines()[-1]) == []


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_each_listed_summary_is_the_commands_own(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    assert command.get_short_help_str(limit=1000) == LAZY_COMMANDS[name].summary
