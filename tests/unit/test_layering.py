"""The import rules of docs/architecture.md, checked on every source file."""

from __future__ import annotations

import ast
import inspect
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


def test_discovery_sits_beside_transport_not_above_it() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imports_of(p) if m.startswith("node.transport"))
        for p in sources("discovery")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# --- one Runtime, passed everywhere (DESIGN §1) -----------------------------------------------

# Only these build the real runtime or may touch the world directly: the real runtime itself
# and the command line (which builds it). Everything else takes the Runtime it is given.
REAL_WORLD_ALLOWED = {
    "node/transport/runtime.py",
    "node/app/cli.py",
    "node/app/node_cli.py",
    "node/app/data_cli.py",
    "node/app/identity_cli.py",
    "node/app/chat_cli.py",
    "node/app/web_cli.py",
    "node/app/oneshot_cli.py",
    # The local control socket is a front end, as the command line is (DESIGN.md §11).
    "node/app/control_socket.py",
    "node/app/demo.py",
    "relay/cli.py",
    "relay/__main__.py",
}
# Calls and references that reach the real clock, randomness, sockets, threads or tasks.
FORBIDDEN_ATTRIBUTES = {
    ("os", "urandom"),
    ("os", "getrandom"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "perf_counter"),
    ("asyncio", "create_task"),
    ("asyncio", "ensure_future"),
    ("asyncio", "to_thread"),
}
FORBIDDEN_METHODS = {"create_task", "run_in_executor", "create_datagram_endpoint", "getaddrinfo"}
FORBIDDEN_MODULES = {"random", "secrets", "threading", "concurrent.futures", "socket", "time"}
# Key constructors that draw from the operating system (convenient in tests, never in code
# that a simulation must repeat); their own definitions live in node/core.
FORBIDDEN_GENERATORS = {"Identity", "HybridPrivateKey"}
KEY_DEFINITIONS = {"node/core/identity.py", "node/core/hybrid_kem.py"}


def real_world_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for item in ast.walk(tree):
        if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
            pair = (item.value.id, item.attr)
            if pair in FORBIDDEN_ATTRIBUTES:
                found.append(f"{pair[0]}.{pair[1]} (line {item.lineno})")
            if item.attr == "generate" and item.value.id in FORBIDDEN_GENERATORS:
                found.append(f"{item.value.id}.generate (line {item.lineno})")
        if isinstance(item, ast.Attribute) and item.attr in FORBIDDEN_METHODS:
            found.append(f".{item.attr} (line {item.lineno})")
        if isinstance(item, ast.ImportFrom) and item.module == "node.transport.runtime":
            found.append(f"imports the real runtime (line {item.lineno})")
    found += [f"imports {m}" for m in sorted(imports_of(path)) if m in FORBIDDEN_MODULES]
    return found


def library_sources() -> list[Path]:
    return [
        p
        for p in sources("node", "relay", "discovery")
        if str(p.relative_to(ROOT)) not in REAL_WORLD_ALLOWED
    ]


def test_library_code_takes_clock_randomness_sockets_threads_and_tasks_from_its_runtime() -> None:
    offenders = {
        str(p.relative_to(ROOT)): real_world_uses(p)
        for p in library_sources()
        if str(p.relative_to(ROOT)) not in KEY_DEFINITIONS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_finds_a_real_default(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os, asyncio\n"
        "from node.transport.runtime import RealRuntime\n"
        "def f(random_bytes=os.urandom):\n"
        "    asyncio.get_running_loop().create_task(g())\n"
        "    return Identity.generate()\n"
    )
    assert sorted(real_world_uses(module)) == [
        ".create_task (line 4)",
        "Identity.generate (line 5)",
        "imports the real runtime (line 2)",
        "os.urandom (line 3)",
    ]


def test_every_component_requires_a_runtime() -> None:
    from discovery.dht import DhtNode
    from discovery.mdns import MdnsService
    from discovery.resolver import Resolver
    from node.app.node import Node
    from node.app.profile import open_node
    from node.app.router import Router
    from node.mls import MlsClient
    from node.transport.endpoint import Endpoint
    from node.transport.keystore import load_or_create_identity
    from relay.server import Relay
    from relay.service import RelayService

    components = [
        Node,
        open_node,
        Router,
        Endpoint,
        DhtNode,
        Resolver,
        MdnsService,
        MlsClient,
        Relay,
        RelayService,
        load_or_create_identity,
    ]
    for component in components:
        parameter = inspect.signature(component).parameters.get("runtime")
        assert parameter is not None, component
        assert parameter.default is inspect.Parameter.empty, component
        assert parameter.kind is not inspect.Parameter.KEYWORD_ONLY, component


def test_presence_runs_on_its_nodes_runtime() -> None:
    from node.app.presence import Presence

    parameters = inspect.signature(Presence).parameters
    # A second runtime for discovery would let a node and its presence live on two clocks.
    assert list(parameters) == ["node", "config"]
    source = (ROOT / "node/app/presence.py").read_text()
    assert "node.runtime" in source
