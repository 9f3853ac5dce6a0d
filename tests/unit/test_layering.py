"""The import rules of docs/architecture.md, checked on every source file."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            found.add(item.module)
    return found


def sources(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def test_relay_never_imports_the_node_application() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imports_of(p) if m.startswith("node.app"))
        for p in sources("relay")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_node_mls_imports_the_binding() -> None:
    users = {
        str(p.relative_to(ROOT))
        for p in sources("node", "relay", "discovery", "simulations")
        if any(m.split(".")[0] == "openmls_bindings" for m in imports_of(p))
    }
    assert users == {"node/mls.py"}


def test_transport_and_discovery_never_import_the_application() -> None:
    for p in sources("node/transport", "discovery"):
        assert not any(m.startswith("node.app") for m in imports_of(p)), p
