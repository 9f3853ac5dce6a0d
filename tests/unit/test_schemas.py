"""The schemas are valid Cap'n Proto for the reference compiler too, not only for pycapnp."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import schemas


def test_schema_ids_are_fixed_and_distinct() -> None:
    files = sorted(schemas.SCHEMA_DIR.glob("*.capnp"))
    ids = [f.read_text().splitlines()[0] for f in files]
    assert all(line.startswith("@0x") and line.endswith(";") for line in ids)
    assert len(set(ids)) == len(ids)


def test_reference_compiler_accepts_every_schema() -> None:
    capnp = shutil.which("capnp")
    if capnp is None:
        pytest.skip("the capnp compiler is not installed (apt-get install capnproto)")
    files = sorted(str(p) for p in schemas.SCHEMA_DIR.glob("*.capnp"))
    out = subprocess.run(
        [
            capnp,
            "compile",
            "-o-",
            f"--src-prefix={schemas.SCHEMA_DIR}",
            f"-I{schemas.SCHEMA_DIR}",
            *files,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert len(out.stdout) > 0  # a CodeGeneratorRequest was produced
