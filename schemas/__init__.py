"""Cap'n Proto schemas of the quicnprotochat wire protocol, each loaded once at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import capnp

SCHEMA_DIR = Path(__file__).resolve().parent

capnp.remove_import_hook()

envelope: Any = capnp.load(str(SCHEMA_DIR / "envelope.capnp"), imports=[str(SCHEMA_DIR)])
rpc: Any = capnp.load(str(SCHEMA_DIR / "rpc.capnp"), imports=[str(SCHEMA_DIR)])
peer_record: Any = capnp.load(str(SCHEMA_DIR / "peer_record.capnp"), imports=[str(SCHEMA_DIR)])
invite_link: Any = capnp.load(str(SCHEMA_DIR / "invite_link.capnp"), imports=[str(SCHEMA_DIR)])
chat: Any = capnp.load(str(SCHEMA_DIR / "chat.capnp"), imports=[str(SCHEMA_DIR)])

__all__ = ["SCHEMA_DIR", "chat", "envelope", "invite_link", "peer_record", "rpc"]
