"""node.core stays free of I/O, clocks and threads so the simulator can drive it.

pycapnp itself imports asyncio and socket, so a sys.modules check cannot tell; instead every
import statement in node/core is read and checked against the forbidden modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import node.core

FORBIDDEN = {"asyncio", "socket", "aioquic", "threading", "time", "sqlite3", "select", "random"}
CORE = Path(node.core.__file__).parent


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        item = todo.pop()
        found.append(item)
        if isinstance(item, ast.If) and ast.unparse(item.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            todo.extend(item.orelse)
            continue
        todo.extend(ast.iter_child_nodes(item))
    return found


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for item in _runtime_nodes(tree):
        if isinstance(item, ast.Import):
            names |= {alias.name.split(".")[0] for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            names.add(item.module.split(".")[0])
    return names


def test_core_modules_import_no_io_clock_or_threads() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 6
    offenders = {f.name: sorted(imported_modules(f) & FORBIDDEN) for f in files}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_an_import_for_annotations_only_is_allowed(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n")
    assert imported_modules(module) == {"typing"}
    module.write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    import socket\nelse:\n    import time\n"
    )
    assert imported_modules(module) == {"typing", "time"}


def test_core_never_imports_the_upper_layers() -> None:
    for path in CORE.glob("*.py"):
        text = path.read_text()
        assert "node.transport" not in text and "node.app" not in text, path.name
