"""The documentation builds cleanly and says what the code says.

1. ``mkdocs build --strict`` succeeds (``mkdocs.yml`` turns every link problem into a warning).
2. ``docs/protocol/wire-format.md`` describes the Cap'n Proto schemas exactly: every ``*.capnp``
   file in ``schemas/``, so a new schema file fails the check until it is documented (and listed
   in ``SCHEMA_MODULES`` below). The page must use this format, which the check parses:

   * one level-2 heading per schema file, holding the file name and its id in backticks::

         ## `envelope.capnp` (file id `@0xace5c86793aa8786`)

   * under it, one level-3 heading per struct and per enum declared in that file, with nested
     names joined by dots::

         ### struct `Envelope`
         ### enum `Envelope.Kind`

   * in a struct's section, a table with one row per field, in this column order::

         | Field | Ordinal | Type | Union | Meaning |
         | `id` | @0 | `Data` | no | ... |

     where Type is the Cap'n Proto type as written in a schema, with a struct or enum named by its
     dotted name inside its file (``List(Envelope)``, ``Envelope.Kind``, ``UInt64``), and Union is
     ``yes`` for a member of the struct's unnamed union and ``no`` otherwise;

   * in an enum's section, a table with one row per enumerant::

         | Enumerant | Value | Meaning |
         | `commit` | @0 | ... |

   Sections and rows must match the schemas both ways: nothing missing, nothing extra, and no
   ``### struct`` / ``### enum`` heading outside a schema file's section.
3. The README's first fenced code block holds exactly the two quick-start commands.
4. The demo's ``--json`` fields are the ones ``docs/getting-started.md`` documents.
5. Every option of ``node run``, ``relay run``, ``peers``, ``whoami`` and ``verify`` has a row in an options table of
   ``docs/getting-started.md`` (a row starting with the option in backticks: ``| `--listen ...``).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import capnp
import click
import pytest

import schemas

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
WIRE_FORMAT = DOCS / "protocol" / "wire-format.md"
SCHEMA_DIR = REPO / "schemas"

# Every schema file in schemas/ and the module schemas/__init__.py loads it as.
SCHEMA_MODULES: dict[str, Any] = {
    "envelope.capnp": schemas.envelope,
    "rpc.capnp": schemas.rpc,
    "peer_record.capnp": schemas.peer_record,
    "invite_link.capnp": schemas.invite_link,
    "chat.capnp": schemas.chat,
}
SCHEMA_FILES = sorted(path.name for path in SCHEMA_DIR.glob("*.capnp"))


def _schema_modules() -> dict[str, Any]:
    """Every ``*.capnp`` file in schemas/, loaded: from SCHEMA_MODULES, or straight from the
    file for one that is not listed there (so that its declarations are still checked)."""
    modules = {}
    for file in SCHEMA_FILES:
        module = SCHEMA_MODULES.get(file)
        if module is None:
            module = capnp.load(str(SCHEMA_DIR / file), imports=[str(SCHEMA_DIR)])
        modules[file] = module
    return modules


PRIMITIVES = {
    "void": "Void",
    "bool": "Bool",
    "int8": "Int8",
    "int16": "Int16",
    "int32": "Int32",
    "int64": "Int64",
    "uint8": "UInt8",
    "uint16": "UInt16",
    "uint32": "UInt32",
    "uint64": "UInt64",
    "float32": "Float32",
    "float64": "Float64",
    "text": "Text",
    "data": "Data",
}
NO_DISCRIMINANT = 0xFFFF

FILE_HEADING = re.compile(r"^##\s+`([\w.-]+\.capnp)`(.*)$")
DECL_HEADING = re.compile(r"^###\s+(struct|enum)\s+`([\w.]+)`\s*$")
OTHER_HEADING = re.compile(r"^#{1,3}\s")
FIELD_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*@(\d+)\s*\|\s*`([^`]+)`\s*\|\s*(yes|no)\s*\|")
ENUMERANT_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*@(\d+)\s*\|")


# --- what the schemas declare ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decl:
    file: str
    kind: str  # "struct" | "enum"
    name: str  # dotted name inside its file, e.g. "Envelope.Kind"
    rows: frozenset[tuple[Any, ...]]


def _walk(parent: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted name, pycapnp module) for every declaration nested in ``parent``, recursively."""
    found = []
    for nested in parent.schema.node.nestedNodes:
        child = getattr(parent, nested.name)
        name = f"{prefix}{nested.name}"
        found.append((name, child))
        found += _walk(child, f"{name}.")
    return found


def _type_names() -> dict[int, str]:
    """Schema node id -> dotted name, for every struct and enum in every schema file."""
    names = {}
    for module in _schema_modules().values():
        for name, child in _walk(module, ""):
            names[child.schema.node.id] = name
    return names


def _render_type(capnp_type: Any, names: dict[int, str]) -> str:
    which = str(capnp_type.which())
    if which in PRIMITIVES:
        return PRIMITIVES[which]
    if which == "list":
        return f"List({_render_type(capnp_type.list.elementType, names)})"
    if which == "struct":
        return names[capnp_type.struct.typeId]
    if which == "enum":
        return names[capnp_type.enum.typeId]
    raise AssertionError(f"type {which!r} is not handled by this test: extend _render_type")


def schema_declarations() -> dict[tuple[str, str], Decl]:
    names = _type_names()
    decls = {}
    for file, module in _schema_modules().items():
        for name, child in _walk(module, ""):
            node = child.schema.node
            kind = str(node.which())
            rows: set[tuple[Any, ...]]
            if kind == "struct":
                rows = set()
                for field_name, field in child.schema.fields.items():
                    proto = field.proto
                    assert str(proto.which()) == "slot", (
                        f"{name}.{field_name} is a group: extend this test and the page format"
                    )
                    ordinal = int(proto.ordinal.explicit)
                    type_name = _render_type(proto.slot.type, names)
                    union = "yes" if proto.discriminantValue != NO_DISCRIMINANT else "no"
                    rows.add((field_name, ordinal, type_name, union))
            elif kind == "enum":
                rows = {(e, int(v)) for e, v in child.schema.enumerants.items()}
            else:
                raise AssertionError(f"{file}: {name} is a {kind}: extend this test")
            decls[(file, name)] = Decl(file, kind, name, frozenset(rows))
    return decls


# --- what the page says ---------------------------------------------------------------------


def page_declarations(text: str) -> tuple[dict[str, str], dict[tuple[str, str], Decl]]:
    """(file name -> rest of its heading line, (file, name) -> declaration) from the page."""
    files: dict[str, str] = {}
    decls: dict[tuple[str, str], Decl] = {}
    current_file: str | None = None
    current: tuple[str, str, str] | None = None  # (file, kind, name)
    rows: set[tuple[Any, ...]] = set()

    def close() -> None:
        if current is not None:
            file, kind, name = current
            assert (file, name) not in decls, f"{name} is described twice"
            decls[(file, name)] = Decl(file, kind, name, frozenset(rows))

    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if (m := DECL_HEADING.match(line)) is not None:
            close()
            assert current_file is not None, f"{line!r} is not under a schema file heading"
            current, rows = (current_file, m.group(1), m.group(2)), set()
            continue
        if OTHER_HEADING.match(line):
            close()
            current, rows = None, set()
            if line.startswith("## "):
                file_match = FILE_HEADING.match(line)
                current_file = file_match.group(1) if file_match else None
                if file_match:
                    files[file_match.group(1)] = file_match.group(2)
            continue
        if current is None:
            continue
        if current[1] == "struct" and (m := FIELD_ROW.match(line)) is not None:
            rows.add((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
        elif current[1] == "enum" and (m := ENUMERANT_ROW.match(line)) is not None:
            rows.add((m.group(1), int(m.group(2))))
    close()
    return files, decls


# --- the tests ------------------------------------------------------------------------------


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "protocol" / "wire-format" / "index.html").exists()


def test_every_markdown_page_is_in_the_nav() -> None:
    config = (REPO / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages, "no pages under docs/"
    missing = [p for p in pages if p not in config]
    assert missing == []


def test_every_schema_file_is_listed() -> None:
    assert SCHEMA_FILES, "no *.capnp files under schemas/"
    unlisted = [file for file in SCHEMA_FILES if file not in SCHEMA_MODULES]
    gone = [file for file in SCHEMA_MODULES if file not in SCHEMA_FILES]
    assert unlisted == [], "add these schema files to SCHEMA_MODULES and to wire-format.md"
    assert gone == [], "these schema files no longer exist: remove them from SCHEMA_MODULES"


def test_wire_format_names_every_schema_file_with_its_id() -> None:
    files, _ = page_declarations(WIRE_FORMAT.read_text())
    assert sorted(files) == SCHEMA_FILES
    for file, module in _schema_modules().items():
        file_id = f"@0x{module.schema.node.id:016x}"
        assert file_id in files[file], f"the heading of {file} must name its id {file_id}"


def test_wire_format_declares_exactly_the_schema_structs_and_enums() -> None:
    expected = schema_declarations()
    _, documented = page_declarations(WIRE_FORMAT.read_text())
    want = {key: decl.kind for key, decl in expected.items()}
    got = {key: decl.kind for key, decl in documented.items()}
    assert got == want


@pytest.mark.parametrize("key", sorted(schema_declarations()), ids=lambda key: f"{key[0]}:{key[1]}")
def test_wire_format_lists_every_field_and_enumerant(key: tuple[str, str]) -> None:
    expected = schema_declarations()[key]
    _, documented = page_declarations(WIRE_FORMAT.read_text())
    assert key in documented, f"no section for {expected.kind} {key[1]} under {key[0]}"
    got = documented[key].rows
    assert sorted(expected.rows - got) == [], "missing or wrong rows"
    assert sorted(got - expected.rows) == [], "rows that the schema does not have"


def test_the_readme_quick_start_is_exactly_make_demo_and_make_test() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^```[^\n]*\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert block is not None, "the README has no fenced code block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_getting_started_documents_every_demo_json_field() -> None:
    from node.app.demo import DemoResult

    page = (DOCS / "getting-started.md").read_text()
    rows = set(re.findall(r"^\|\s*`(\w+)`\s*\|", page, re.MULTILINE))
    fields = {f.name for f in dataclasses.fields(DemoResult)}
    assert fields <= rows, f"undocumented --json fields: {sorted(fields - rows)}"


def _long_options(command: click.Command) -> list[str]:
    """The long form of every option of ``command`` (``--listen``, ``--no-mdns``, ...)."""
    found = []
    for param in command.params:
        if isinstance(param, click.Option):
            found += [opt for opt in param.opts if opt.startswith("--")][:1]
    return found


def test_getting_started_documents_every_command_line_option() -> None:
    from node.app.identity_cli import verify_command, whoami_command
    from node.app.node_cli import peers_command
    from node.app.node_cli import run_command as node_run
    from relay.cli import run_command as relay_run

    page = (DOCS / "getting-started.md").read_text()
    rows = set(re.findall(r"^\|\s*`(--[\w-]+)", page, re.MULTILINE))
    for command in (node_run, relay_run, peers_command, whoami_command, verify_command):
        options = _long_options(command)
        assert options, f"{command.name} has no options?"
        missing = [opt for opt in options if opt not in rows]
        assert missing == [], f"options of {command.name} with no row in getting-started.md"
