"""``relay.toml``: read strictly. A key the relay does not know, or a value of the wrong type or
range, is refused with one line naming the file and the key, before anything starts: a typo in
a limit must never leave the relay running with its default instead (``docs/operations.md``
lists every key)."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.core.errors import NodeError
from relay.accounts import MODES
from relay.server import RelayConfig

STORES = ("sqlite", "postgresql")
DSN_ENV = "QUICNPROTOCHAT_RELAY_DSN"
DB_KEY_ENV = "QUICNPROTOCHAT_RELAY_DB_KEY"

__all__ = [
    "CHOICES",
    "DB_KEY_ENV",
    "DSN_ENV",
    "LIMIT_KEYS",
    "STORES",
    "ConfigError",
    "FileSettings",
    "check_store",
    "limit_settings",
    "load_config",
    "store_settings",
]

MAX_CONFIG_BYTES = 1 << 20  # a relay.toml is a few dozen lines

_NOT_LIMITS = {"host", "port", "data_dir", "passphrase"}
LIMIT_KEYS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(RelayConfig) if f.name not in _NOT_LIMITS
}
# 0 has a meaning only for these ("the most one fetch answer carries"); for every other limit
# 0 would refuse everything, or spin.
_ZERO_MEANS_DEFAULT = {"max_envelope_bytes"}
_PLACES = ("listen", "data_dir")
# Keys whose value is one word of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {"accounts": MODES, "store": STORES}


class ConfigError(NodeError):
    """A relay configuration file that cannot be used as written; the message names the file
    and the key."""


@dataclass(frozen=True)
class FileSettings:
    """What a ``relay.toml`` sets; what it leaves out is None (the command line or the default
    decides)."""

    listen: str | None = None
    data_dir: Path | None = None
    limits: dict[str, Any] = field(default_factory=dict)


def load_config(path: Path) -> FileSettings:
    """Read and check ``path``."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        settings = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    for key in _PLACES:
        if key in settings and not isinstance(settings[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    data_dir = settings.get("data_dir")
    return FileSettings(
        listen=settings.get("listen"),
        data_dir=None if data_dir is None else Path(data_dir),
        limits=limit_settings(settings, path),
    )


def limit_settings(settings: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """The limit keys of a relay TOML file, type-checked; an unknown key or a wrong type is
    refused with one line naming it."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _PLACES:
            continue
        known = LIMIT_KEYS.get(key)
        if known is None:
            close = difflib.get_close_matches(key, [*LIMIT_KEYS, *_PLACES], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        out[key] = _checked(key, value, known.default, source)
    return out


def _checked(key: str, value: Any, default: Any, source: Path | None) -> Any:
    if key in CHOICES:
        if value not in CHOICES[key]:
            allowed = " or ".join(f'"{c}"' for c in CHOICES[key])
            raise ConfigError(f"{source}: {key} must be {allowed} (got {value!r})")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false")
        return value
    floating = isinstance(default, float)
    number = isinstance(value, int | float) if floating else isinstance(value, int)
    kind = "number" if floating else "int"
    least, word = (0, "non-negative") if key in _ZERO_MEANS_DEFAULT else (1e-9, "positive")
    if isinstance(value, bool) or not number or value < least:
        raise ConfigError(f"{source}: {key} must be a {word} {kind} (got {value!r})")
    return float(value) if floating else value


def store_settings(limits: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """``limits`` with ``dsn`` and ``db_key`` taken from the environment where it sets them
    (the environment wins, so a secret need not sit in the file), then checked together."""
    out = dict(limits)
    if environ.get(DSN_ENV):
        out["dsn"] = environ[DSN_ENV]
    if environ.get(DB_KEY_ENV):
        out["db_key"] = environ[DB_KEY_ENV]
    check_store(out)
    return out


def check_store(settings: dict[str, Any]) -> None:
    """Refuse a store choice that cannot work, naming the key."""
    store = settings.get("store", "sqlite")
    if store == "postgresql" and not settings.get("dsn"):
        raise ConfigError(f'store = "postgresql" needs dsn (or ${DSN_ENV})')
    if store == "postgresql" and settings.get("db_key"):
        raise ConfigError(
            'db_key keys the embedded store; with store = "postgresql" encrypt the database'
            " server's disk instead (docs/operations.md)"
        )
    if store == "sqlite" and settings.get("dsn"):
        raise ConfigError('dsn is set but store is "sqlite": set store = "postgresql"')
    key = settings.get("db_key", "")
    if key:
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"db_key (or ${DB_KEY_ENV}) must be 64 hex digits")
