"""A node's limits from a TOML file (``--limits FILE``): a ``[limits]`` table whose keys are the
fields of :class:`~node.app.limits.NodeLimits`.

Strict, as the relay's file is: an unknown key, a value of the wrong type or a limit that is not
positive is refused with one line naming it. A key not given keeps its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from node.app.limits import NodeLimits
from node.core.errors import NodeError

__all__ = ["LimitsFileError", "load_limits"]

MAX_FILE_BYTES = 64 * 1024


class LimitsFileError(NodeError):
    """The limits file cannot be used as it is."""


def load_limits(path: Path) -> NodeLimits:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LimitsFileError(f"{path} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise LimitsFileError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LimitsFileError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise LimitsFileError(f"{path} is not valid TOML: {exc}") from None
    unknown_tables = sorted(set(document) - {"limits"})
    if unknown_tables:
        raise LimitsFileError(f"{path}: unknown table or key {unknown_tables[0]!r} (only [limits])")
    table = document.get("limits", {})
    if not isinstance(table, dict):
        raise LimitsFileError(f"{path}: limits must be a table ([limits])")
    return _limits(path, table)


def _limits(path: Path, table: dict[str, Any]) -> NodeLimits:
    defaults = NodeLimits()
    kinds = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(NodeLimits)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            near = difflib.get_close_matches(key, kinds, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise LimitsFileError(f"{path}: unknown limit {key!r}{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LimitsFileError(f"{path}: limits.{key} must be a number")
        if kind is int and not isinstance(value, int):
            raise LimitsFileError(f"{path}: limits.{key} must be a whole number")
        if not value > 0:
            raise LimitsFileError(f"{path}: limits.{key} must be positive, not {value}")
        values[key] = kind(value)
    return dataclasses.replace(defaults, **values)
