"""``relay.toml`` and its environment variables: read strictly. A key the relay does not know, or
a value of the wrong type or range, is refused with one line naming the file (or the variable)
and the key, before anything starts: a typo in a limit must never leave the relay running with
its default instead (``docs/operations.md`` lists every key).

Every key is also an environment variable, ``QUICNPROTOCHAT_RELAY_`` followed by the key in
capitals (``max_frame`` → ``QUICNPROTOCHAT_RELAY_MAX_FRAME``). A variable overrides the file; a
command-line option overrides both. ``QUICNPROTOCHAT_PRODUCTION=1`` turns on production mode
(:func:`production_problems`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import stat
import tomllib
from collections.abc import Mapping
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
    "ENV_PREFIX",
    "LIMIT_KEYS",
    "OPS_DEFAULTS",
    "PRODUCTION_ENV",
    "STORES",
    "ConfigError",
    "FileSettings",
    "check_store",
    "env_name",
    "limit_settings",
    "load_config",
    "load_settings",
    "production_problems",
    "store_settings",
]

MAX_CONFIG_BYTES = 1 << 20  # a relay.toml is a few dozen lines
ENV_PREFIX = "QUICNPROTOCHAT_RELAY_"
PRODUCTION_ENV = "QUICNPROTOCHAT_PRODUCTION"
# Variables under the prefix that are not relay.toml keys: the relay key's passphrase, and the
# node's relay password (a node and a relay may share one environment).
OTHER_VARIABLES = frozenset({"QUICNPROTOCHAT_RELAY_PASSPHRASE", "QUICNPROTOCHAT_RELAY_PASSWORD"})

_NOT_LIMITS = {"host", "port", "data_dir", "passphrase"}
LIMIT_KEYS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(RelayConfig) if f.name not in _NOT_LIMITS
}
# 0 has a meaning only for these ("the most one fetch answer carries"); for every other limit
# 0 would refuse everything, or spin.
_ZERO_MEANS_DEFAULT = {"max_envelope_bytes"}
_PLACES = ("listen", "data_dir")
# What the command line does around the relay (not the relay's own configuration): the metrics
# port ("" is off), the log format, the SIGTERM grace period, and production mode's opt-in to
# open accounts.
OPS_DEFAULTS: dict[str, Any] = {
    "metrics_listen": "",
    "log_format": "text",
    "shutdown_grace_s": 10.0,
    "allow_open_accounts": False,
}
# Keys whose value is one word of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "accounts": MODES,
    "log_format": ("text", "json"),
    "store": STORES,
}


class ConfigError(NodeError):
    """A relay configuration file that cannot be used as written; the message names the file
    and the key."""


@dataclass(frozen=True)
class FileSettings:
    """What a ``relay.toml`` and the environment set; what they leave out is None (the command
    line or the default decides)."""

    listen: str | None = None
    data_dir: Path | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, Any] = field(default_factory=lambda: dict(OPS_DEFAULTS))
    production: bool = False

    def op(self, key: str) -> Any:
        return self.ops.get(key, OPS_DEFAULTS[key])


def env_name(key: str) -> str:
    """The environment variable that sets the ``relay.toml`` key ``key``."""
    return ENV_PREFIX + key.upper()


def load_config(path: Path) -> FileSettings:
    """Read and check ``path`` (the environment is not consulted)."""
    return load_settings(path, {})


def load_settings(path: Path | None, environ: Mapping[str, str]) -> FileSettings:
    """``path`` (if given), then the ``QUICNPROTOCHAT_RELAY_*`` variables of ``environ`` over
    it, checked as one."""
    settings: dict[str, Any] = {} if path is None else _read_toml(path)
    for key in _PLACES:
        if key in settings and not isinstance(settings[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    checked = _split(settings, path)
    from_env = _env_settings(environ)
    for key, value in from_env.items():
        checked[key] = value
    data_dir = checked.get("data_dir")
    production = _production(environ)
    return FileSettings(
        listen=checked.get("listen"),
        data_dir=None if data_dir is None else Path(data_dir),
        limits={k: v for k, v in checked.items() if k in LIMIT_KEYS},
        ops={**OPS_DEFAULTS, **{k: v for k, v in checked.items() if k in OPS_DEFAULTS}},
        production=production,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None


def _split(settings: dict[str, Any], source: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {k: settings[k] for k in _PLACES if k in settings}
    out |= limit_settings(settings, source)
    for key, value in settings.items():
        if key in OPS_DEFAULTS:
            out[key] = _checked(key, value, OPS_DEFAULTS[key], str(source))
    return out


def limit_settings(settings: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """The limit keys of a relay TOML file, type-checked; an unknown key or a wrong type is
    refused with one line naming it."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _PLACES or key in OPS_DEFAULTS:
            continue
        known = LIMIT_KEYS.get(key)
        if known is None:
            close = difflib.get_close_matches(key, _all_keys(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        out[key] = _checked(key, value, known.default, str(source))
    return out


def _all_keys() -> list[str]:
    return [*LIMIT_KEYS, *_PLACES, *OPS_DEFAULTS]


def _env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The keys set by ``QUICNPROTOCHAT_RELAY_*`` variables, parsed from their text by the
    key's type; an unknown variable under the prefix is refused like an unknown key."""
    names = {env_name(k): k for k in _all_keys()}
    out: dict[str, Any] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in OTHER_VARIABLES:
            continue
        key = names.get(variable)
        if key is None:
            close = difflib.get_close_matches(variable, list(names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"${variable}: not a relay setting{hint}")
        text = environ[variable]
        if key in _PLACES:
            out[key] = text
            continue
        default = LIMIT_KEYS[key].default if key in LIMIT_KEYS else OPS_DEFAULTS[key]
        out[key] = _checked(key, _from_text(text, default), default, f"${variable}")
    return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_text(text: str, default: Any) -> Any:
    """A variable's text as the key's type, or the text itself when it is not one (so that
    :func:`_checked` names the key and what it must be)."""
    word = text.strip()
    if isinstance(default, bool):
        lowered = word.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else text
    if isinstance(default, int | float):
        try:
            return int(word)
        except ValueError:
            pass
        if isinstance(default, float):
            try:
                return float(word)
            except ValueError:
                pass
    return text


def _checked(key: str, value: Any, default: Any, source: str) -> Any:
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
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string")
        return value
    floating = isinstance(default, float)
    number = isinstance(value, int | float) if floating else isinstance(value, int)
    kind = "number" if floating else "int"
    least, word = (0, "non-negative") if key in _ZERO_MEANS_DEFAULT else (1e-9, "positive")
    if isinstance(value, bool) or not number or not math.isfinite(value) or value < least:
        raise ConfigError(f"{source}: {key} must be a {word} {kind} (got {value!r})")
    return float(value) if floating else value


def _production(environ: Mapping[str, str]) -> bool:
    text = environ.get(PRODUCTION_ENV, "").strip().lower()
    if text in ("", *_FALSE):
        return False
    if text in _TRUE:
        return True
    raise ConfigError(f"${PRODUCTION_ENV} must be 1 or 0 (got {environ[PRODUCTION_ENV]!r})")


def production_problems(
    settings: Mapping[str, Any], data_dir: Path, *, allow_open_accounts: bool
) -> list[str]:
    """What production mode refuses in these settings: a plain store (no ``db_key``), a data
    directory other users may read, open accounts not explicitly allowed. Empty: may start.

    :param settings: the relay.toml keys in force (file and environment).
    """
    problems = []
    # PostgreSQL's data is the database server's to encrypt (its disk); db_key keys the
    # embedded store only.
    if settings.get("store", "sqlite") == "sqlite" and not settings.get("db_key"):
        problems.append(
            f"the mailbox store would not be encrypted: set db_key (or ${env_name('db_key')})"
        )
    try:
        mode = data_dir.stat().st_mode
    except FileNotFoundError:
        mode = None  # the relay creates it with mode 0700
    except OSError as exc:
        problems.append(f"cannot read the data directory {data_dir}: {exc.strerror}")
        mode = None
    if mode is not None and mode & (stat.S_IRWXO):
        problems.append(
            f"the data directory {data_dir} is open to other users (mode "
            f"{stat.S_IMODE(mode):04o}): chmod 700 it"
        )
    if settings.get("accounts", "open") == "open" and not allow_open_accounts:
        problems.append(
            'accounts = "open" serves any key: set accounts = "required", or '
            "allow_open_accounts = true"
        )
    return problems


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
